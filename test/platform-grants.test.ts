/**
 * Grant tables of the embedded hypervisor, with Xen's v1 semantics: what a
 * grantee may map or copy, and every refusal.
 *
 * Refusals tried here: a reference never granted, granted to another
 * domain, out of range, of a domain that does not exist; a writable mapping
 * of a read-only grant; a copy into a read-only grant, or across a page
 * boundary; ending access while mapped; granting a page outside the
 * granter's memory; a reference ended, then mapped; a dying granter.
 */
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { GrantStatus, PAGE_SIZE, PlatformError } from '../shared/platform.js';

function machine() {
  const platform = EmbeddedPlatform.create(1024);
  for (const [domid, name] of [[0, 'Domain-0'], [1, 'backend'], [2, 'frontend'], [3, 'other']] as const) {
    platform.createDomain({ domid, name, pages: 32 });
    platform.unpauseDomain(domid);
  }
  return { platform, back: platform.domain(1), front: platform.domain(2), other: platform.domain(3) };
}

function refusal(fn: () => unknown): { errno: string; status: number | undefined } | 'OK' {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (!(err instanceof PlatformError)) throw err;
    return { errno: err.errno, status: err.grantStatus };
  }
}

t.test('a grantee maps and copies what was granted to it', async (t) => {
  const { front, back } = machine();
  const [pfn] = front.memory.allocPages(1) as [number];
  front.memory.page(pfn).fill(7, 0, 16);
  const gref = front.grants.grantAccess(1, pfn, false);
  const mapping = back.grants.map(2, [gref], true);
  t.equal(mapping.pages[0]!.length, PAGE_SIZE, 'a view of exactly one page');
  t.equal(mapping.pages[0]![0], 7, 'that is the granted page');
  mapping.pages[0]![100] = 42;
  t.equal(front.memory.page(pfn)[100], 42, 'writes through a writable grant reach the granter');
  mapping.unmap();
  mapping.unmap();
  t.pass('unmapping twice is harmless');

  const [mine] = back.memory.allocPages(1) as [number];
  back.memory.page(mine).fill(9, 0, 8);
  back.grants.copy([{ source: { pfn: mine, offset: 0 }, dest: { domid: 2, gref, offset: 200 }, length: 8 }]);
  t.same([...front.memory.page(pfn).subarray(200, 208)], [9, 9, 9, 9, 9, 9, 9, 9], 'a grant copy into the granted page');
  back.grants.copy([{ source: { domid: 2, gref, offset: 0 }, dest: { pfn: mine, offset: 1000 }, length: 16 }]);
  t.equal(back.memory.page(mine)[1000], 7, 'and out of it');
  t.ok(front.grants.endAccess(gref), 'access ends once nothing is mapped');
});

t.test('refusals', async (t) => {
  const { platform, front, back, other } = machine();
  const [pfn, spare] = front.memory.allocPages(2) as [number, number];
  const readonly = front.grants.grantAccess(1, pfn, true);
  const forOther = front.grants.grantAccess(3, spare, false);
  const general = { errno: 'EINVAL', status: GrantStatus.general_error };

  t.same(refusal(() => back.grants.map(2, [500], false)), general, 'a reference never granted');
  t.same(refusal(() => back.grants.map(2, [forOther], false)), general, 'a reference granted to another domain');
  t.same(refusal(() => back.grants.map(2, [1 << 20], false)), { errno: 'EINVAL', status: GrantStatus.bad_gntref }, 'a reference out of range');
  t.same(refusal(() => back.grants.map(99, [readonly], false)), { errno: 'ESRCH', status: GrantStatus.bad_domain }, 'a domain that does not exist');
  t.same(refusal(() => back.grants.map(2, [readonly], true)), general, 'a writable mapping of a read-only grant');
  t.equal(refusal(() => back.grants.map(2, [readonly], false).unmap()), 'OK', 'a read-only mapping of it is fine');
  t.same(refusal(() => back.grants.map(2, [readonly, forOther], false)), general, 'a batch with one bad reference');
  t.ok(front.grants.endAccess(readonly), 'and maps none of it: the good reference is not left pinned');

  const [mine] = back.memory.allocPages(1) as [number];
  const ro = front.grants.grantAccess(1, pfn, true);
  t.same(
    refusal(() => back.grants.copy([{ source: { pfn: mine, offset: 0 }, dest: { domid: 2, gref: ro, offset: 0 }, length: 4 }])),
    general,
    'a copy into a read-only grant',
  );
  t.same(
    refusal(() => back.grants.copy([{ source: { domid: 2, gref: ro, offset: 4090 }, dest: { pfn: mine, offset: 0 }, length: 10 }])),
    { errno: 'EINVAL', status: GrantStatus.bad_copy_arg },
    'a copy across a page boundary',
  );
  t.same(
    refusal(() => back.grants.copy([{ source: { pfn: 32, offset: 0 }, dest: { domid: 2, gref: ro, offset: 0 }, length: 1 }])),
    { errno: 'EINVAL', status: GrantStatus.bad_page },
    'a copy from a page outside its own memory',
  );

  const mapping = back.grants.map(2, [ro], false);
  t.notOk(front.grants.endAccess(ro), 'ending access while the page is mapped is refused');
  mapping.unmap();
  t.ok(front.grants.endAccess(ro), 'and works once it is unmapped');
  t.same(refusal(() => back.grants.map(2, [ro], false)), general, 'an ended reference cannot be mapped');
  t.same(refusal(() => front.grants.grantAccess(1, 32, false)), { errno: 'EINVAL', status: GrantStatus.bad_page }, 'granting a page outside its memory');
  t.same(refusal(() => front.grants.grantAccess(99999, pfn, false)), { errno: 'ESRCH', status: GrantStatus.bad_domain }, 'granting to a bad domid');
  t.same(refusal(() => other.grants.map(2, [forOther], true).unmap()), 'OK', 'the domain it was granted to may map it');

  const kept = back.grants.map(2, [front.grants.grantAccess(1, spare, false)], true);
  platform.destroyDomain(2);
  t.equal(platform.domainInfo(2)?.state, 'dying', 'a destroyed domain with pages mapped by others lingers');
  kept.pages[0]![0] = 1;
  t.pass('the existing mapping still works');
  t.same(refusal(() => back.grants.map(2, [forOther], false)), general, 'but its grants are revoked for new mappings');
  kept.unmap();
  t.equal(platform.domainInfo(2), undefined, 'it is gone once the last mapping goes');
});

t.test('the reserved entries are the toolstack\'s', async (t) => {
  const { front, back } = machine();
  const [pfn] = front.memory.allocPages(1) as [number];
  front.grants.grantReserved(1, 1, pfn, false);
  t.same(refusal(() => front.grants.grantReserved(1, 1, pfn, false)), { errno: 'EBUSY', status: undefined }, 'a reserved entry in use');
  t.same(refusal(() => front.grants.grantReserved(9, 1, pfn, false)), { errno: 'EINVAL', status: GrantStatus.bad_gntref }, 'only the first eight are reserved');
  back.grants.map(2, [1], true).unmap();
  const ordinary = Array.from({ length: 20 }, () => front.grants.grantAccess(1, pfn, false));
  t.ok(ordinary.every((gref) => gref >= 8), 'ordinary grants never take a reserved entry');
});

t.test('what a worker that died had mapped is unmapped for it', async (t) => {
  const { platform, front } = machine();
  const [pfn] = front.memory.allocPages(1) as [number];
  const gref = front.grants.grantAccess(1, pfn, false);
  const worker = new Worker(new URL('./helpers/grant-worker.js', import.meta.url), {
    workerData: { descriptor: platform.descriptor, domid: 1, granterDomid: 2, gref },
  });
  const threadId = worker.threadId;
  await new Promise((resolve) => worker.once('message', resolve));
  t.equal(front.memory.page(pfn)[0], 0x5a, 'the worker wrote through its mapping');
  t.notOk(front.grants.endAccess(gref), 'access cannot end while the page is mapped');
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  worker.postMessage('die');
  await exited;
  t.notOk(front.grants.endAccess(gref), 'nor once the worker is dead, until the machine takes its mappings back');
  t.equal(platform.reclaimWorker(threadId), 1, 'one mapping reclaimed');
  t.ok(front.grants.endAccess(gref), 'then the granter ends access');
});

t.test('a dying granter whose pages a dead worker mapped goes once the mappings are reclaimed', async (t) => {
  const { platform, front } = machine();
  const [pfn] = front.memory.allocPages(1) as [number];
  const gref = front.grants.grantAccess(1, pfn, false);
  const worker = new Worker(new URL('./helpers/grant-worker.js', import.meta.url), {
    workerData: { descriptor: platform.descriptor, domid: 1, granterDomid: 2, gref },
  });
  const threadId = worker.threadId;
  await new Promise((resolve) => worker.once('message', resolve));
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  worker.postMessage('die');
  await exited;
  platform.destroyDomain(2);
  t.equal(platform.domainInfo(2)?.state, 'dying', 'the destroyed domain lingers while its page is mapped');
  platform.reclaimWorker(threadId);
  t.equal(platform.domainInfo(2), undefined, 'and is gone once the dead worker’s mapping is reclaimed');
});
