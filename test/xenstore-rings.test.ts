/**
 * xenstored over domains' xenstore rings (docs/misc/xenstore-ring.txt):
 * large messages through the 1 KiB queues, wrap-around of the free-running
 * indexes, ring reconnection, and hostile rings.
 *
 * Hostile rings tried here: a producer index more than a ring ahead of the
 * consumer, a header announcing more than 4096 bytes, a message that is
 * never finished, a running domain that never reads its replies and
 * events (a slow reader, a paused domain and dom0 keep theirs); each gets
 * the ring's error indicator while other domains keep working.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { XsRingError, XsServerFeature, XsType, XS_HEADER_SIZE, encodeMessage, nulStrings } from '../shared/xs-wire.js';
import { ConnectionResetError } from '../xenstore/client/client.js';
import { XENSTORE_RING_SIZE, XenStoreRing } from '../xenstore/ring.js';
import type { RingClientTransport } from '../xenstore/client/ring-transport.js';
import { errno, startDaemon, waitFor, type RunningDaemon } from './helpers/daemon.js';

async function bystanderWorks(t: Test, env: RunningDaemon, domid: number, what: string): Promise<void> {
  const other = await env.domain(domid);
  t.equal(await other.getDomainPath(domid), `/local/domain/${domid}`, `another domain is still served after ${what}`);
  const dom0 = await env.client();
  await dom0.write('/after', what);
  t.equal(await dom0.readString('/after'), what, 'and so is dom0');
}

t.test('the ring as the daemon offers it', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const guest = await env.domain(5);
  const ring = env.ringOf(5).ring;
  await guest.getDomainPath(5);
  t.equal(
    ring.serverFeatures,
    XsServerFeature.RECONNECTION | XsServerFeature.ERROR | XsServerFeature.WATCHDEPTH | XsServerFeature.DOMID_ANY,
    'features advertised in the page',
  );
  t.equal(ring.connection, 0, 'connected');
  t.equal(ring.error, 0, 'no error');
  t.equal(await guest.getFeature(), ring.serverFeatures, 'GET_FEATURE agrees with the page');
});

t.test('messages larger than the ring cross it in pieces', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  const dom0 = await env.client();
  const big = Buffer.alloc(4000, 0x5a);
  await dom0.write('/local/domain/5/data/big', big);
  t.same(await guest.read('data/big'), big, 'a 4000-byte reply comes out in pieces');
  const value = Buffer.alloc(1900, 0x61);
  await guest.write('data/request', value);
  t.same(await dom0.read('/local/domain/5/data/request'), value, 'a 1900-byte request goes in in pieces');
  const privileged = await env.dom0Ring();
  await privileged.write('/ring/big', big);
  t.same(await privileged.read('/ring/big'), big, "dom0's own ring carries a full payload both ways");
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => guest.write(`data/n${i}`, 'x'.repeat(300))));
  t.equal(many.length, 50, '50 requests in flight through a 1 KiB ring');
  t.equal((await guest.directory('data')).length, 52);
});

t.test('free-running indexes wrap around', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const start = env.build(5);
  // Before the domain is introduced, start every index just below 2^32.
  const ring = new XenStoreRing(env.platform.domain(5).memory.page(start.storePfn));
  const nearWrap = new Int32Array(ring.page.buffer, ring.page.byteOffset + 2048, 4);
  nearWrap.fill(-200);
  const guest = await env.domain(5);
  await env.makeDataDirectory(5);
  for (let i = 0; i < 40; i++) await guest.write(`data/w${i}`, 'y'.repeat(100));
  t.ok(ring.requests.prod < 1 << 20 && ring.responses.prod < 1 << 20, 'both indexes wrapped past 2^32');
  t.equal(await guest.readString('data/w39'), 'y'.repeat(100), 'and everything still works');
});

t.test('ring reconnection starts the connection over', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  const dom0 = await env.client();
  const watcher = await guest.watch('data');
  await watcher.next();
  const tx = await guest.startTransaction();
  await guest.write('data/in-tx', 'x', { tx });
  await guest.reconnect();
  t.equal(env.daemon.domains.find(5)!.counts.transactions, 0, 'the transaction was discarded');
  t.equal(await errno(guest.endTransaction(tx, true)), 'ENOENT', 'and its id means nothing now');
  t.same((await watcher.next()).value?.path, 'data', 'the client set its watch again (which fires once)');
  await dom0.write('/local/domain/5/data/after', 'x');
  t.same((await watcher.next()).value?.path, 'data/after', 'and it works');
  t.equal(env.daemon.domains.find(5)!.counts.watches, 1, 'one watch, not two');
});

t.test('a producer index more than a ring ahead', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const guest = await env.domain(5);
  await guest.getDomainPath(5);
  const transport = env.ringOf(5);
  // The domain writes garbage and looks away; then looks again.
  transport.stopReading();
  const words = new Int32Array(transport.ring.page.buffer, transport.ring.page.byteOffset + 2048, 2);
  Atomics.store(words, 1, Atomics.load(words, 0) + XENSTORE_RING_SIZE + 1);
  transport.signal();
  await waitFor(() => transport.ring.error !== 0, 'the error indicator');
  t.equal(transport.ring.error, XsRingError.RINGIDX, 'the daemon reports inconsistent indexes through the error indicator');
  t.ok(env.connectionOf(5).ignored, 'and ignores the connection');
  await bystanderWorks(t, env, 6, 'a bad index');
  const repaired = new Promise<void>((resolve) => guest.onReconnected(resolve));
  transport.startReading();
  await repaired;
  t.equal(transport.ring.error, 0, 'the guest reconnected, which cleared the error');
  t.equal(await guest.getDomainPath(5), '/local/domain/5', 'and the domain is served again');
});

t.test('a header announcing more than 4096 bytes', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const guest = await env.domain(5);
  await guest.getDomainPath(5);
  const transport = env.ringOf(5);
  // A domain writing garbage behind its own client's back: stop the client from repairing it.
  transport.stopReading();
  const header = encodeMessage(XsType.WRITE, 1, 0, Buffer.alloc(0));
  header.writeUInt32LE(5000, 12);
  transport.ring.requests.produce(header);
  transport.signal();
  await waitFor(() => transport.ring.error !== 0, 'the error indicator');
  t.equal(transport.ring.error, XsRingError.PROTO, 'a protocol violation');
  t.ok(env.connectionOf(5).ignored, 'its connection is ignored until it reconnects');
  await bystanderWorks(t, env, 6, 'an oversized header');
});

for (const [cut, what] of [
  [40, 'in its payload'],
  [XS_HEADER_SIZE, 'right after its header'],
  [7, 'inside its header'],
] as const) {
  t.test(`a message that never completes, cut ${what}`, async (t) => {
    const env = await startDaemon({ incompleteMessageTimeoutMs: 300 });
    t.teardown(() => env.close());
    const guest = await env.domain(5);
    await guest.getDomainPath(5);
    const transport = env.ringOf(5);
    transport.stopReading();
    const message = encodeMessage(XsType.WRITE, 1, 0, nulStrings('/local/domain/5/x', 'y'.repeat(100)));
    transport.ring.requests.produce(message.subarray(0, cut));
    transport.signal();
    await waitFor(() => transport.ring.error !== 0, 'the error indicator', 5000);
    t.equal(transport.ring.error, XsRingError.PROTO, 'is dropped after the timeout');
    await bystanderWorks(t, env, 6, 'a stalled message');
  });
}

/**
 * Domain 5 watches its data directory and stops reading its ring; dom0 then
 * writes there until the events fill the ring and more wait behind them.
 */
async function fillUnreadRing(env: RunningDaemon): Promise<RingClientTransport> {
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  await (await guest.watch('data')).next();
  const transport = env.ringOf(5);
  transport.stopReading();
  const dom0 = await env.client();
  for (let i = 0; i < 120; i++) await dom0.write(`/local/domain/5/data/n${i}`, 'x'.repeat(20));
  dom0.close();
  await waitFor(() => env.connectionOf(5).transport.unreadOutputSince?.() !== undefined, 'output waiting for room');
  return transport;
}

t.test('a ring its running domain never drains', async (t) => {
  const env = await startDaemon({ unreadOutputTimeoutMs: 300 });
  t.teardown(() => env.close());
  const transport = await fillUnreadRing(env);
  t.equal(transport.ring.responses.filled(), XENSTORE_RING_SIZE, 'its ring is full of events it does not read');
  await waitFor(() => transport.ring.error !== 0, 'the error indicator', 5000);
  t.equal(transport.ring.error, XsRingError.COMM, 'it is cut off once output has waited unread for the timeout');
  t.ok(env.connectionOf(5).ignored, 'its connection is ignored until it reconnects');
  await bystanderWorks(t, env, 6, 'an undrained ring');
});

t.test('a domain that reads slowly keeps its connection', async (t) => {
  const env = await startDaemon({ unreadOutputTimeoutMs: 300 });
  t.teardown(() => env.close());
  const transport = await fillUnreadRing(env);
  // A few bytes at a time, more often than the timeout: slow, but reading.
  for (let i = 0; i < 12; i++) {
    transport.ring.responses.consume(8);
    transport.signal();
    await sleep(150);
  }
  t.equal(transport.ring.error, 0, 'a slow reader is not cut off');
});

t.test('time a domain spends paused does not count against it', async (t) => {
  // Pauses are seen by the daemon's once-a-second sweep: the timeout must be
  // longer than a sweep for the margin after the unpause to mean anything.
  const timeoutMs = 2000;
  const env = await startDaemon({ unreadOutputTimeoutMs: timeoutMs });
  t.teardown(() => env.close());
  const transport = await fillUnreadRing(env);
  env.platform.pauseDomain(5);
  await sleep(timeoutMs + 1500);
  t.equal(transport.ring.error, 0, 'a paused domain is not cut off, however long its output waits');
  env.platform.unpauseDomain(5);
  await sleep(500);
  t.equal(transport.ring.error, 0, 'nor just after it is unpaused');
  await waitFor(() => transport.ring.error !== 0, 'the error indicator', timeoutMs + 3000);
  t.equal(transport.ring.error, XsRingError.COMM, 'running and still not reading, it loses its connection');
});

t.test('the privileged domain\'s ring is never cut off for not reading', async (t) => {
  const env = await startDaemon({ unreadOutputTimeoutMs: 300 });
  t.teardown(() => env.close());
  const dom0Ring = await env.dom0Ring();
  await (await dom0Ring.watch('/busy')).next();
  const transport = env.ringOf(0);
  transport.stopReading();
  const dom0 = await env.client();
  for (let i = 0; i < 40; i++) await dom0.write(`/busy/n${i}`, 'x'.repeat(20));
  await sleep(2500);
  t.equal(transport.ring.error, 0, 'dom0 is trusted to come back to its ring');
});

t.test('a ring error: requests in flight fail, the client repairs the connection', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  const watcher = await guest.watch('data');
  await watcher.next();
  const transport = env.ringOf(5);
  transport.stopReading();
  const inFlight = guest.read('data').catch((err: unknown) => err);
  const repaired = new Promise<void>((resolve) => guest.onReconnected(resolve));
  env.connectionOf(5).close('comm');
  transport.startReading();
  t.ok((await inFlight) instanceof ConnectionResetError, 'the request in flight fails with ConnectionResetError');
  await repaired;
  t.equal(await guest.getDomainPath(5), '/local/domain/5', 'then the connection works again');
  t.same((await watcher.next()).value?.path, 'data', 'with its watch set again');
  t.notOk(guest.isClosed);
});

t.test('a restarted daemon takes over the store and the rings; clients set their watches again', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const dom0 = await env.client();
  await dom0.write('/kept', 'value');
  await dom0.setPermissions('/kept', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  await dom0.setQuota('nodes', 77, 5);
  const guest = await env.domain(5);
  await guest.write('/local/domain/5/data/mine', 'guest node');
  const watcher = await guest.watch('/local/domain/5/data');
  await watcher.next();
  let reconnected = 0;
  guest.onReconnected(() => reconnected++);

  await env.restart();
  t.equal(env.ringOf(5).ring.error, XsRingError.COMM, 'the new daemon tells the domain its connection was lost');
  await waitFor(() => reconnected === 1, 'the domain to reconnect');
  t.equal(env.ringOf(5).ring.error, XsRingError.NONE, 'ring reconnection clears the error');
  t.equal((await watcher.next()).value?.path, '/local/domain/5/data', 'its watch was set again, and fired as a new watch does');

  const dom0Again = await env.client();
  t.equal(await dom0Again.readString('/kept'), 'value', 'the store survived');
  t.same(await dom0Again.getPermissions('/kept'), [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }], 'with its permissions');
  t.equal(await guest.readString('/kept'), 'value', 'the domain reads what it may');
  t.equal(await dom0Again.getQuota('nodes', 5), '77', "and the domain's quota");
  t.ok(await dom0Again.isDomainIntroduced(5), 'the domain is still introduced');
  t.same(env.daemon.checkStore(), [], 'and the accounting matches the tree');
  await dom0Again.write('/local/domain/5/data/new', 'x');
  t.equal((await watcher.next()).value?.path, '/local/domain/5/data/new', 'changes reach the watch');
  t.equal(await errno(dom0.read('/kept')), 'ConnectionClosedError: connection to xenstored closed', 'a socket client of the old daemon was cut off');
});
