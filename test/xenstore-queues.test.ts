/**
 * Output queues: what the daemon holds for a client that does not read costs
 * O(1) per item to add, to send and to expire, so that a guest that stops
 * reading stalls nobody else, however long its queue grows.
 *
 * No absolute times are asserted: the daemon's own time spent queuing the
 * events is the baseline for the time it spends sending or expiring the same
 * number of them, measured in the same run.
 */
import t from 'tap';
import { performance } from 'node:perf_hooks';
import { Fifo } from '../xenstore/daemon/fifo.js';
import { OutputQueue, type Outgoing } from '../xenstore/daemon/output-queue.js';
import { startDaemon, waitFor } from './helpers/daemon.js';

/** The guest's watches on its data directory: each write there fires one event per watch. */
const WATCHES = 100;
/**
 * Writes per batch: 80,000 events, the size of queue that stalled the daemon
 * for seconds, and as many as fit in one connection's OUTPUT_HARD_LIMIT.
 */
const WRITES = 800;
/**
 * Sending or expiring an event may cost a few times what queuing it did
 * (both are linear); a quadratic queue costs 20 to 40 times as much at this
 * size, and more the longer it grows.
 */
const MAX_RATIO = 5;

/** Wraps one object's method so that the time spent in it is added up. */
function timed(target: object, name: string): { ms: number; calls: number } {
  const total = { ms: 0, calls: 0 };
  const holder = target as Record<string, (...args: unknown[]) => unknown>;
  const original = holder[name]!.bind(target);
  holder[name] = (...args: unknown[]) => {
    const start = performance.now();
    try {
      return original(...args);
    } finally {
      total.ms += performance.now() - start;
      total.calls++;
    }
  };
  return total;
}

t.test('a guest that stops reading: its queue costs O(1) per event to fill, expire and send', async (t) => {
  // Expiry is driven by the test, not by the daemon's timer.
  const env = await startDaemon({ watchEventTimeoutMs: 0 });
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const dom0 = await env.client();
  await dom0.setQuota('memory', 0, 5);
  const guest = await env.domain(5);
  for (let i = 0; i < WATCHES; i++) await guest.watch('data', { token: `w${i}` });
  await new Promise((resolve) => setTimeout(resolve, 50));
  const conn = env.connectionOf(5);
  const ring = env.ringOf(5);
  ring.stopReading();

  const filling = timed(conn, 'event');
  for (let i = 0; i < WRITES; i++) await dom0.write(`/local/domain/5/data/a${i}`, 'x');
  t.equal(filling.calls, WATCHES * WRITES, 'every write fired an event for each watch');
  const expiring = timed(conn, 'expireEvents');
  const dropped = conn.expireEvents(Number.POSITIVE_INFINITY, 1);
  t.ok(dropped > WATCHES * WRITES * 0.99, `the waiting events expire (${dropped})`);
  t.ok(
    expiring.ms < MAX_RATIO * filling.ms,
    `expiring them costs about what queuing them did (${expiring.ms.toFixed(1)} ms against ${filling.ms.toFixed(1)} ms)`,
  );

  const refilling = timed(conn, 'event');
  for (let i = 0; i < WRITES; i++) await dom0.write(`/local/domain/5/data/b${i}`, 'x');
  const sending = timed(conn.transport, 'kick');
  ring.startReading();
  await waitFor(() => conn.queuedBytes === 0, 'the queue to drain', 120_000);
  t.ok(
    sending.ms < MAX_RATIO * refilling.ms,
    `sending them costs about what queuing them did (${sending.ms.toFixed(1)} ms against ${refilling.ms.toFixed(1)} ms)`,
  );
  t.equal(await guest.readString('data/a0'), 'x', 'the guest is served once it reads again');
});

t.test('Fifo: order, and the consumed prefix is dropped as it goes', async (t) => {
  const fifo = new Fifo<number>();
  t.equal(fifo.shift(), undefined, 'empty');
  let next = 0;
  let expected = 0;
  let inOrder = true;
  // Interleaved, so that compaction happens with items on both sides of the head.
  for (let round = 0; round < 1000; round++) {
    for (let i = 0; i < 7; i++) fifo.push(next++);
    for (let i = 0; i < 5; i++) if (fifo.shift() !== expected++) inOrder = false;
  }
  t.ok(inOrder, 'items come out in the order they went in');
  t.equal(fifo.length, 2000);
  t.equal(fifo.peek(), expected, 'peek shows the oldest');
  const capacity = (fifo as unknown as { items: unknown[] }).items.length;
  t.ok(capacity <= 2 * fifo.length + 64, `the array holds at most twice what is queued (${capacity} for ${fifo.length})`);
  const rest = fifo.takeAll();
  t.equal(rest.length, 2000);
  t.equal(rest[0], expected);
  t.equal(fifo.length, 0, 'takeAll empties it');
});

t.test('OutputQueue: replies and events leave in queue order; only old events expire', async (t) => {
  const queue = new OutputQueue();
  const frame = (text: string) => Buffer.from(text, 'latin1');
  queue.addReply(frame('r1'), undefined);
  queue.addEvent(frame('e1'), undefined, false, 10);
  queue.addReply(frame('r2'), undefined);
  t.equal(queue.addEvent(frame('e1'), undefined, false, 11), undefined, 'an identical waiting event is not queued twice');
  queue.addEvent(frame('e1'), undefined, true, 12);
  queue.addEvent(frame('e2'), undefined, false, 20);
  queue.addReply(frame('r3'), undefined);
  t.equal(queue.length, 6);
  const expired: string[] = [];
  const text = (item: Outgoing) => item.text;
  t.equal(queue.expire(12, (item) => expired.push(text(item))), 2, 'events queued up to the cutoff expire');
  t.same(expired, ['e1', 'e1']);
  const sent: string[] = [];
  for (let item = queue.shift(); item; item = queue.shift()) sent.push(text(item));
  t.same(sent, ['r1', 'r2', 'e2', 'r3'], 'the rest leave in the order they were queued');
  t.equal(queue.queuedBytes, 0);
  t.ok(queue.addEvent(frame('e1'), undefined, false, 30), 'once sent, the same event may be queued again');
});
