/**
 * Event channels of the embedded hypervisor: delivery between workers
 * through shared memory, coalescing, masking, closing, and what Xen does
 * with a notify that nobody can receive.
 */
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { PlatformError, VIRQ_DOM_EXC, type EventChannels } from '../shared/platform.js';

const WORKER = fileURLToPath(new URL('./helpers/evtchn-worker.js', import.meta.url));

function machine() {
  const platform = EmbeddedPlatform.create(1024);
  for (const domid of [0, 1, 2]) {
    platform.createDomain({ domid, name: `d${domid}`, pages: 16 });
    platform.unpauseDomain(domid);
  }
  return platform;
}

/** Resolves with the next `count` events on a handle (or what arrived by the deadline). */
function collect(channels: EventChannels, settleMs = 30): { ports: number[]; settled: () => Promise<number[]> } {
  const ports: number[] = [];
  channels.onEvent((port) => ports.push(port));
  return { ports, settled: () => new Promise((resolve) => setTimeout(() => resolve([...ports]), settleMs)) };
}

function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (err instanceof PlatformError) return err.errno;
    throw err;
  }
}

t.test('round trips between two workers', async (t) => {
  const platform = machine();
  const mine = platform.domain(1).openEventChannels();
  t.teardown(() => mine.close());
  const port = mine.allocUnbound(2);
  const worker = new Worker(WORKER, { workerData: { descriptor: platform.descriptor, domid: 2, remoteDomid: 1, remotePort: port, mode: 'echo' } });
  t.teardown(() => worker.terminate());
  await new Promise((resolve) => worker.once('message', resolve));
  const ROUND_TRIPS = 2000;
  let done = 0;
  const finished = new Promise<void>((resolve) => {
    mine.onEvent((p) => {
      if (p !== port) return;
      // The first event is the one Xen raises when the far end binds.
      if (++done > ROUND_TRIPS) resolve();
      else mine.notify(port);
    });
  });
  await finished;
  t.equal(done, ROUND_TRIPS + 1, `${ROUND_TRIPS} round trips, each woken through shared memory`);
});

t.test('notifies coalesce, and a masked port holds its event', async (t) => {
  const platform = machine();
  const sender = platform.domain(1).openEventChannels();
  t.teardown(() => sender.close());
  const port = sender.allocUnbound(2);
  const worker = new Worker(WORKER, { workerData: { descriptor: platform.descriptor, domid: 2, remoteDomid: 1, remotePort: port, mode: 'count' } });
  t.teardown(() => worker.terminate());
  await new Promise((resolve) => worker.once('message', resolve));
  for (let i = 0; i < 1000; i++) sender.notify(port);
  await new Promise((resolve) => setTimeout(resolve, 100));
  worker.postMessage('count');
  const { events } = (await new Promise((resolve) => worker.once('message', resolve))) as { events: number };
  t.ok(events >= 1 && events < 1000, `1000 notifies woke the receiver ${events} times`);

  const a = platform.domain(1).openEventChannels();
  const b = platform.domain(2).openEventChannels();
  t.teardown(() => {
    a.close();
    b.close();
  });
  const unbound = a.allocUnbound(2);
  const bound = b.bindInterdomain(1, unbound);
  const seen = collect(a);
  await seen.settled();
  seen.ports.length = 0;
  a.mask(unbound);
  b.notify(bound);
  t.same(await seen.settled(), [], 'nothing while masked');
  a.unmask(unbound);
  t.same(await seen.settled(), [unbound], 'the pending event arrives on unmask');
});

t.test('closed and unbound ports', async (t) => {
  const platform = machine();
  const a = platform.domain(1).openEventChannels();
  const b = platform.domain(2).openEventChannels();
  t.teardown(() => {
    a.close();
    b.close();
  });
  const waiting = a.allocUnbound(2);
  a.notify(waiting);
  t.pass('a notify on an unbound port is dropped silently, as on Xen');
  t.equal(errnoOf(() => a.notify(999)), 'EINVAL', 'a port never allocated');
  t.equal(errnoOf(() => b.notify(waiting)), 'EINVAL', "another handle's port");
  const third = platform.domain(0).openEventChannels();
  t.teardown(() => third.close());
  t.equal(errnoOf(() => third.bindInterdomain(1, waiting)), 'EINVAL', 'binding a port meant for another domain');
  const bound = b.bindInterdomain(1, waiting);
  t.equal(errnoOf(() => b.bindInterdomain(1, waiting)), 'EINVAL', 'binding it twice');
  const seen = collect(a);
  b.unbind(bound);
  t.equal(errnoOf(() => b.notify(bound)), 'EINVAL', 'a closed port');
  const rebound = b.bindInterdomain(1, waiting);
  t.pass('the far end is unbound again and can be bound anew');
  b.notify(rebound);
  t.ok((await seen.settled()).includes(waiting), 'and works');
  t.equal(errnoOf(() => a.allocUnbound(77)), 'ESRCH', 'a port for a domain that does not exist');
});

t.test('domain death, pause and VIRQ_DOM_EXC', async (t) => {
  const platform = machine();
  const dom0 = platform.domain(0).openEventChannels();
  const a = platform.domain(1).openEventChannels();
  const b = platform.domain(2).openEventChannels();
  t.teardown(() => {
    dom0.close();
    a.close();
    b.close();
  });
  const virq = dom0.bindVirq(VIRQ_DOM_EXC);
  const toolstack = collect(dom0);
  const aPort = a.allocUnbound(2);
  const bPort = b.bindInterdomain(1, aPort);
  const seenByB = collect(b);
  await seenByB.settled();
  seenByB.ports.length = 0;

  platform.pauseDomain(2);
  a.notify(aPort);
  t.same(await seenByB.settled(), [], 'a paused domain is not woken');
  platform.unpauseDomain(2);
  t.same(await seenByB.settled(), [bPort], 'it gets the event when it runs again');

  platform.shutdownDomain(2, 'poweroff');
  t.same(await toolstack.settled(), [virq], 'a shutdown raises VIRQ_DOM_EXC in dom0');
  t.equal(platform.domainInfo(2)?.shutdownReason, 'poweroff');
  toolstack.ports.length = 0;
  platform.destroyDomain(2);
  t.same(await toolstack.settled(), [virq], 'so does its destruction');
  t.equal(platform.domainInfo(2), undefined, 'which frees it');
  a.notify(aPort);
  t.pass("the survivor's end became unbound: its notify is dropped");
  t.equal(errnoOf(() => b.notify(bPort)), 'EINVAL', 'the dead domain has no ports left');
});
