/**
 * Watches: the first event, events at and below the watched path, depth,
 * relative paths, removals, transactions, special watches and who may see
 * what (XSA-115).
 */
import t from 'tap';
import type { Watcher } from '../xenstore/client/watcher.js';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';

/** Collects the events a watcher has received once things have settled. */
async function drain(watcher: Watcher, settleMs = 50): Promise<string[]> {
  await new Promise((resolve) => setTimeout(resolve, settleMs));
  const paths: string[] = [];
  while (watcher.pendingEvents > 0) paths.push((await watcher.next()).value!.path);
  return paths;
}

t.test('events at and below the watched path', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const writer = await env.client();
  const watching = await env.client();
  await writer.write('/a/b', '1');
  const watcher = await watching.watch('/a/b');
  t.same(await drain(watcher), ['/a/b'], 'fires once at once');
  await writer.write('/a/b', '2');
  await writer.write('/a/b/c/d', '3');
  await writer.write('/a', 'parent');
  await writer.write('/a/bb', 'sibling with a common prefix');
  await writer.setPermissions('/a/b', [{ domid: 0, access: 'read' }]);
  await writer.mkdir('/a/b/c');
  await writer.mkdir('/a/b/e');
  t.same(await drain(watcher), ['/a/b', '/a/b/c/d', '/a/b', '/a/b/e'], 'writes, permission changes and new nodes, not parents or siblings');
  await watcher.close();
  await writer.write('/a/b', 'after');
  t.same(await drain(watcher), [], 'nothing after UNWATCH');
});

t.test('removal', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const writer = await env.client();
  const watching = await env.client();
  await writer.write('/r/x/y', '1');
  await writer.write('/r/x/z', '2');
  const onRoot = await watching.watch('/r');
  const onLeaf = await watching.watch('/r/x/y');
  const onMissing = await watching.watch('/r/x/never');
  await drain(onRoot);
  await drain(onLeaf);
  await drain(onMissing);
  await writer.rm('/r/x');
  t.same(await drain(onRoot), ['/r/x'], 'the removed subtree is reported once at its root');
  t.same(await drain(onLeaf), ['/r/x/y'], 'a watch on a removed node hears of it');
  t.same(await drain(onMissing), [], 'a watch below the removed nodes that never existed hears nothing');
});

t.test('a removal in a transaction reaches a domain watching a node below it', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const guest = await env.domain(5);
  await dom0.write('/dev/vbd/0/state', '4');
  for (const path of ['/dev/vbd/0', '/dev/vbd/0/state']) {
    await dom0.setPermissions(path, [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  }
  const watcher = await guest.watch('/dev/vbd/0/state');
  await drain(watcher);
  await dom0.transaction(async (tx) => {
    await dom0.rm('/dev/vbd/0', { tx });
    await dom0.rm('/dev/vbd', { tx });
  });
  t.same(await drain(watcher), ['/dev/vbd/0/state'], 'fired at commit with the permissions the node had, as xenstored does');
});

t.test('depth and relative paths', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const writer = await env.client();
  const watching = await env.client();
  const depth0 = await watching.watch('/d', { depth: 0 });
  const depth1 = await watching.watch('/d', { depth: 1 });
  const relative = await watching.watch('rel');
  const root1 = await watching.watch('/', { depth: 1 });
  for (const w of [depth0, depth1, relative, root1]) await drain(w);
  await writer.write('/d', 'x');
  await writer.write('/d/one', 'x');
  await writer.write('/d/one/two', 'x');
  await writer.write('/local/domain/0/rel/child', 'x');
  t.same(await drain(depth0), ['/d'], 'depth 0: the path itself');
  t.same(await drain(depth1), ['/d', '/d/one'], 'depth 1: and its children');
  t.same(await drain(relative), ['rel/child'], 'a relative watch reports relative paths');
  t.same(await drain(root1), ['/d'], 'depth 1 on / reaches top-level nodes only');
});

t.test('transactions fire at commit, not at abort', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const writer = await env.client();
  const watching = await env.client();
  const watcher = await watching.watch('/tx');
  await drain(watcher);
  const tx = await writer.startTransaction();
  await writer.write('/tx/a', '1', { tx });
  await writer.write('/tx/a', '2', { tx });
  await writer.write('/tx/b', '3', { tx });
  t.same(await drain(watcher), [], 'nothing while the transaction is open');
  await writer.endTransaction(tx, true);
  t.same(await drain(watcher), ['/tx/a', '/tx/b'], 'one event per changed node at commit');
  const aborted = await writer.startTransaction();
  await writer.write('/tx/c', '1', { tx: aborted });
  await writer.endTransaction(aborted, false);
  t.same(await drain(watcher), [], 'an aborted transaction fires nothing');
});

t.test('special watches', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const toolstack = await env.client();
  const introduced = await toolstack.watch('@introduceDomain');
  const released = await toolstack.watch('@releaseDomain');
  const releasedWithDomid = await toolstack.watch('@releaseDomain', { depth: 1 });
  const releaseOf7 = await toolstack.watch('@releaseDomain/7');
  for (const w of [introduced, released, releasedWithDomid, releaseOf7]) await drain(w);
  await env.domain(7);
  await env.domain(8);
  t.same(await drain(introduced), ['@introduceDomain', '@introduceDomain'], 'INTRODUCE fires @introduceDomain');
  await toolstack.release(8);
  await toolstack.release(7);
  t.same(await drain(released), ['@releaseDomain', '@releaseDomain'], 'RELEASE fires @releaseDomain');
  t.same(await drain(releasedWithDomid), ['@releaseDomain/8', '@releaseDomain/7'], 'with depth 1 the domid is reported');
  t.same(await drain(releaseOf7), ['@releaseDomain/7'], 'a watch on one domain hears only of it');
  t.same(await drain(introduced), [], 'RELEASE is not an introduction');

  await env.domain(9);
  const start = env.startInfo(9);
  await toolstack.introduce(9, start.storePfn, start.storePort);
  t.same(await drain(introduced), ['@introduceDomain'], 'introducing a domain again (resume) fires nothing new');
  env.platform.shutdownDomain(9, 'suspend');
  t.same(await drain(released), ['@releaseDomain'], 'a domain shutting down fires @releaseDomain');
  env.daemon.checkDomains();
  t.same(await drain(released), [], 'once');
  env.platform.resumeDomain(9);
  await toolstack.resume(9);
  env.platform.shutdownDomain(9, 'poweroff');
  t.same(await drain(released), ['@releaseDomain'], 'after RESUME it fires again');
  env.platform.destroyDomain(9);
  t.same(await drain(released), ['@releaseDomain'], 'and when it is destroyed');
  t.notOk(await toolstack.isDomainIntroduced(9), 'which releases it');
});

t.test('XSA-115: watches reveal only what the watcher may read', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const guest = await env.domain(5);
  await dom0.write('/open/node', 'x');
  await dom0.setPermissions('/open', [{ domid: 0, access: 'read' }]);
  await dom0.setPermissions('/open/node', [{ domid: 0, access: 'read' }]);
  await dom0.write('/closed/node', 'x');
  const everything = await guest.watch('/');
  t.same(await drain(everything), ['/'], 'the first event comes regardless');
  await dom0.write('/closed/node', 'secret change');
  await dom0.write('/closed/new', 'secret node');
  t.same(await drain(everything), [], 'no events for nodes it cannot read');
  await dom0.write('/open/node', 'public change');
  await dom0.write('/open/new', 'readable through its parent');
  t.same(await drain(everything), ['/open/node', '/open/new']);
  await dom0.setPermissions('/open/node', [{ domid: 0, access: 'none' }]);
  t.same(await drain(everything), ['/open/node'], 'losing read access is itself reported');
  await dom0.rm('/open');
  t.same(await drain(everything), ['/open'], 'a removed subtree is reported at its root');

  const intro = await guest.watch('@introduceDomain');
  t.same(await drain(intro), ['@introduceDomain'], 'a domain may set a special watch');
  await env.domain(6);
  t.same(await drain(intro), [], 'but hears nothing without permission on the special node');
  await dom0.setPermissions('@introduceDomain', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  await drain(intro);
  await env.domain(7);
  t.same(await drain(intro), ['@introduceDomain'], 'once SET_PERMS grants it, it does');
  t.same(await dom0.getPermissions('@introduceDomain'), [
    { domid: 0, access: 'none' },
    { domid: 5, access: 'read' },
  ]);
});

/**
 * A guest watching its data directory while it stops reading its ring, and
 * dom0 writing 40 nodes there: the ring fills and later events wait in the
 * daemon's queue.
 */
async function slowReader(env: RunningDaemon) {
  await env.makeDataDirectory(5);
  const dom0 = await env.client();
  const guest = await env.domain(5);
  const watcher = await guest.watch('/local/domain/5/data');
  await drain(watcher);
  const ring = env.ringOf(5);
  ring.stopReading();
  for (let i = 0; i < 40; i++) await dom0.write(`/local/domain/5/data/n${i}`, 'x'.repeat(40));
  return { dom0, guest, watcher, resumeReading: () => ring.startReading() };
}

t.test('duplicate events waiting for a slow reader are merged', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, watcher, resumeReading } = await slowReader(env);
  for (let i = 0; i < 5; i++) await dom0.write('/local/domain/5/data/same', String(i));
  resumeReading();
  const events = await drain(watcher, 200);
  t.equal(events.filter((p) => p === '/local/domain/5/data/same').length, 1, 'identical waiting events are sent once');
  t.equal(events.length, 41, 'every distinct event arrives');
});

t.test('watch events an unprivileged domain does not read time out', async (t) => {
  const env = await startDaemon({ watchEventTimeoutMs: 300 });
  t.teardown(() => env.close());
  const { guest, watcher, resumeReading } = await slowReader(env);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  resumeReading();
  const events = await drain(watcher, 200);
  t.ok(events.length < 40, `events that waited too long were dropped (${events.length} of 40 arrived)`);
  t.equal(await guest.readString('/local/domain/5/data/n39'), 'x'.repeat(40), 'the domain still works');
});
