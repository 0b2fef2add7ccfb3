/**
 * Grants a backend still has mapped when the frontend lets go: kept, ended
 * once the backend unmaps, and their pages freed, so that nothing leaks.
 * On the embedded hypervisor, whose grant tables refuse to end access to a
 * mapped page as Xen's do.
 */
import t from 'tap';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import type { Logger } from '../shared/log.js';
import type { GuestMemory } from '../shared/platform.js';
import { DeferredRelease } from '../xenbus/deferred-release.js';
import { XenbusState } from '../xenbus/state.js';
import { echoDrivers, echoSpec, startBusTestbed } from './helpers/xenbus.js';

const FRONT = 2;
const BACK = 1;

function machine() {
  const platform = EmbeddedPlatform.create(1024);
  for (const [domid, name] of [[0, 'Domain-0'], [BACK, 'backend'], [FRONT, 'frontend']] as const) {
    platform.createDomain({ domid, name, pages: 32 });
    platform.unpauseDomain(domid);
  }
  return { front: platform.domain(FRONT), back: platform.domain(BACK) };
}

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const record = (message: string) => void lines.push(message);
  return { lines, debug: record, info: record, warn: record, error: record };
}

/** Pages the domain could still allocate: what a leak would lower. */
function freePages(memory: GuestMemory): number {
  const taken: number[] = [];
  for (;;) {
    try {
      taken.push(...memory.allocPages(1));
    } catch {
      memory.freePages(taken);
      return taken.length;
    }
  }
}

async function until(condition: () => boolean, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return true;
}

t.test('a ring the backend keeps mapped after the frontend closes is ended once it unmaps', async (t) => {
  const { front, back } = machine();
  const deferred = new DeferredRelease(front.grants, front.memory, recordingLogger(), { firstRetryMs: 5, maxRetryMs: 20 });
  t.teardown(() => deferred.stop());
  const before = freePages(front.memory);
  const ring = front.grants.share(BACK, 4, false);
  const mapping = back.grants.map(FRONT, ring.grefs.slice(0, 2), true);
  deferred.releaseShared(ring);
  t.equal(deferred.pending, 2, 'the two pages the backend maps stay granted');
  t.equal(freePages(front.memory), before - 2, 'and allocated; the other two are freed at once');
  await new Promise((resolve) => setTimeout(resolve, 60));
  t.equal(deferred.pending, 2, 'retrying does not take them from the backend');
  mapping.unmap();
  t.ok(await until(() => deferred.pending === 0), 'the timer ends them once the backend unmaps');
  t.equal(freePages(front.memory), before, 'and every page is the domain’s again');
});

t.test('a data page still mapped is taken over and freed later; one not mapped stays the caller’s', async (t) => {
  const { front, back } = machine();
  const deferred = new DeferredRelease(front.grants, front.memory, recordingLogger(), { firstRetryMs: 60_000 });
  t.teardown(() => deferred.stop());
  const before = freePages(front.memory);
  const [kept, mapped] = front.memory.allocPages(2) as [number, number];
  const keptRef = front.grants.grantAccess(BACK, kept, true);
  const mappedRef = front.grants.grantAccess(BACK, mapped, false);
  const mapping = back.grants.map(FRONT, [mappedRef], true);
  t.equal(deferred.endPage(keptRef, kept), true, 'an unmapped grant ends at once');
  t.equal(deferred.endPage(mappedRef, mapped), false, 'a mapped one does not');
  t.equal(deferred.pending, 1);
  deferred.retry();
  t.equal(deferred.pending, 1, 'asked again while still mapped: still held');
  mapping.unmap();
  deferred.retry();
  t.equal(deferred.pending, 0, 'asked again after the unmap (a state change): ended without waiting for the timer');
  front.memory.freePages([kept]);
  t.equal(freePages(front.memory), before, 'the taken-over page was freed');
});

t.test('a grant held long is warned of once; stopping reports what is left and retries no more', async (t) => {
  const { front, back } = machine();
  const log = recordingLogger();
  const deferred = new DeferredRelease(front.grants, front.memory, log, { firstRetryMs: 5, maxRetryMs: 10, warnAfterMs: 0 });
  const ring = front.grants.share(BACK, 1, false);
  const mapping = back.grants.map(FRONT, ring.grefs, true);
  deferred.releaseShared(ring);
  t.ok(await until(() => log.lines.length > 0), 'a warning once the grant is held past warnAfterMs');
  await new Promise((resolve) => setTimeout(resolve, 40));
  t.equal(log.lines.filter((line) => /still mapped by the other end/.test(line)).length, 1, 'only once');
  t.match(log.lines[0], new RegExp(`grants ${ring.grefs[0]} are still mapped`));
  deferred.stop();
  t.match(log.lines.at(-1), /1 grant\(s\) still mapped by other domains as this kernel goes away/);
  mapping.unmap();
  await new Promise((resolve) => setTimeout(resolve, 40));
  t.equal(deferred.pending, 1, 'no timer after stop');
});

t.test('stopping with nothing held says nothing', async (t) => {
  const { front } = machine();
  const log = recordingLogger();
  const deferred = new DeferredRelease(front.grants, front.memory, log);
  deferred.releaseShared(front.grants.share(BACK, 2, false));
  t.equal(deferred.pending, 0, 'unmapped pages are released at once');
  deferred.stop();
  t.same(log.lines, []);
});

t.test('echo: a backend domain that keeps the ring mapped past an unplug holds its grants until it unmaps', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const { front, back } = echoDrivers();
  await driver.backBus(back);
  await guest.frontBus(front);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  const { frontend } = await bed.plug(spec);
  await bed.waitStates(spec, XenbusState.Connected, XenbusState.Connected);
  const order = Number((await bed.dom0.tryRead(`${frontend}/ring-page-order`)) ?? 0);
  const refs: number[] = [];
  if (order === 0) refs.push(Number(await bed.dom0.tryRead(`${frontend}/ring-ref`)));
  else for (let i = 0; i < 1 << order; i++) refs.push(Number(await bed.dom0.tryRead(`${frontend}/ring-ref${i}`)));
  // Mapped a second time, outside the echo backend, which lets go of its own mapping at Closing.
  const held = driver.kernel.domain.grants.map(guest.domid, refs, false);
  const before = guest.ctx.deferred.pending;

  await bed.unplug(spec);
  t.equal(guest.ctx.deferred.pending - before, refs.length, `the frontend is closed and ${refs.length} ring grant(s) are still held`);
  held.unmap();
  t.ok(await until(() => guest.ctx.deferred.pending === 0), 'ended once the backend domain unmaps');
});
