/**
 * Memory accounting bounds memory: what the daemon charges a client for is
 * what it really holds on the client's behalf, and all the output it queues
 * for clients together has a bound that costs the greediest client its
 * connection, not the daemon or the others their service.
 */
import t from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseXenstoredOptions } from '../xenstore/daemon/options.js';
import { DEFAULT_QUEUED_OUTPUT_LIMIT } from '../xenstore/daemon/output-limit.js';
import { XenStoreDaemon } from '../xenstore/daemon/xenstored.js';
import { parseAbsolute } from '../xenstore/store/path.js';
import { XsType, encodeMessage, nulStrings } from '../shared/xs-wire.js';
import { startDaemon, waitFor, type RunningDaemon } from './helpers/daemon.js';
import { RawConnection } from './helpers/raw.js';

/** A full garbage collection, for measuring what is really held. */
const collectGarbage = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

/** Bytes of JavaScript heap and of buffers in use, after a full collection. */
function heldBytes(): number {
  collectGarbage();
  collectGarbage();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

// First in this file: no earlier test's daemon is being freed while it measures.
t.test("a non-reading guest's queue is charged what it really costs", async (t) => {
  const env = await startDaemon({ watchEventTimeoutMs: 0 });
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const dom0 = await env.client();
  await dom0.setQuota('memory', 0, 5);
  const paths = 400;
  for (let i = 0; i < paths; i++) await dom0.write(`/local/domain/5/data/n${i}`, 'a');
  const guest = await env.domain(5);
  const watches = 100;
  for (let i = 0; i < watches; i++) await guest.watch('data', { token: `w${i}` });
  await new Promise((resolve) => setTimeout(resolve, 50));
  env.ringOf(5).stopReading();
  const conn = env.connectionOf(5);
  const domain = env.daemon.domains.find(5)!;

  const chargedBefore = domain.connectionMemory;
  const heldBefore = heldBytes();
  // Same-sized values: the store holds as much after as before.
  for (let i = 0; i < paths; i++) await dom0.write(`/local/domain/5/data/n${i}`, 'b');
  const held = heldBytes() - heldBefore;
  const charged = domain.connectionMemory - chargedBefore;
  t.ok(conn.queuedBytes >= charged, `the events wait in its queue (${conn.queuedBytes} bytes charged for it)`);
  t.ok(charged >= held, `it is charged at least what the daemon's heap and buffers grew by (${charged} for ${held})`);
  t.ok(charged <= 4 * held, 'and not several times more');
});

/** The buffer behind a node's value: its own, or a slab it shares. */
function valueAllocation(env: RunningDaemon, path: string): { length: number; allocation: number } {
  const value = env.daemon.store.tree.get(parseAbsolute(path))!.value;
  return { length: value.length, allocation: value.buffer.byteLength };
}

t.test('a stored value holds an allocation of its own size, not a slab of the buffer pool', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const dom0 = await env.client();
  const guest = await env.domain(5);
  await dom0.write('/small', 'abc');
  await guest.write('data/small', 'xyz');
  await dom0.write('/medium', 'm'.repeat(4000));
  await guest.transaction(async (tx) => guest.write('data/in-tx', 'tx', { tx }));
  t.same(valueAllocation(env, '/small'), { length: 3, allocation: 3 }, 'a value written over the socket');
  t.same(valueAllocation(env, '/local/domain/5/data/small'), { length: 3, allocation: 3 }, 'one written over a ring');
  t.same(valueAllocation(env, '/medium'), { length: 4000, allocation: 4000 }, 'one just under the pool threshold');
  t.same(valueAllocation(env, '/local/domain/5/data/in-tx'), { length: 2, allocation: 2 }, 'one written in a transaction');
  await env.restart();
  t.same(valueAllocation(env, '/small'), { length: 3, allocation: 3 }, 'a value taken over by a restarted daemon');
});

t.test('watchers that never read are cut at the global bound; clients that read are served throughout', async (t) => {
  const limit = 2 * 1024 * 1024;
  const env = await startDaemon({ queuedOutputLimit: limit });
  t.teardown(() => env.close());
  const newConnection = async () => {
    const before = new Set(env.daemon.connections);
    const raw = await RawConnection.connect(env.socketPath);
    await waitFor(() => env.daemon.connections.size > before.size, 'the daemon to accept it');
    return { raw, conn: [...env.daemon.connections].find((c) => !before.has(c))! };
  };
  // Long tokens, so that each event is about 1 KiB: each watcher alone stays
  // far below its own limit (OUTPUT_HARD_LIMIT), all of them together do not.
  const stalled = [];
  for (let i = 0; i < 20; i++) {
    const watcher = await newConnection();
    await watcher.raw.call(XsType.WATCH, nulStrings('/flood', `${'t'.repeat(1000)}${i}`));
    await watcher.raw.next();
    watcher.raw.socket.pause();
    stalled.push(watcher);
  }
  const reader = await env.client();
  const readerWatch = await reader.watch('/flood');
  const writer = await newConnection();

  const batches = 10;
  const perBatch = 200;
  let overLimit = 0;
  for (let batch = 0; batch < batches; batch++) {
    const frames: Buffer[] = [];
    for (let i = 0; i < perBatch; i++) frames.push(encodeMessage(XsType.WRITE, i + 1, 0, Buffer.from(`/flood/n${batch * perBatch + i}\0x`)));
    writer.raw.sendBytes(Buffer.concat(frames));
    let replies = 0;
    while (replies < perBatch) if ((await writer.raw.next(20_000)).type === XsType.WRITE) replies++;
    let queued = 0;
    for (const conn of env.daemon.connections) queued += conn.queuedBytes;
    if (queued > limit) overLimit++;
    t.equal(await reader.readString(`/flood/n${batch * perBatch}`), 'x', `batch ${batch}: a client that reads gets its answers`);
  }
  t.equal(overLimit, 0, 'the output queued for all clients never stayed over the bound');
  t.same(
    stalled.filter((w) => !w.conn.closed).map((w) => w.conn.id),
    [],
    'every watcher that does not read was cut off',
  );
  t.notOk(writer.conn.closed, 'the writer was served throughout');
  const last = `/flood/n${batches * perBatch - 1}`;
  for (let event = await readerWatch.next(); event.value!.path !== last; event = await readerWatch.next());
  t.pass('the watcher that reads heard of every write, up to the last');
});

t.test('xenstored --queued-output-max sets the bound', async (t) => {
  t.equal(parseXenstoredOptions([]).queuedOutputLimit, DEFAULT_QUEUED_OUTPUT_LIMIT, `${DEFAULT_QUEUED_OUTPUT_LIMIT} bytes by default`);
  t.equal(parseXenstoredOptions(['--queued-output-max', '1048576']).queuedOutputLimit, 1048576, 'in bytes');
  t.equal(parseXenstoredOptions(['--queued-output-max=0']).queuedOutputLimit, 0, '0 for none');
  t.throws(() => parseXenstoredOptions(['--queued-output-max', '1M']), { message: 'invalid parameter value "1M"' }, 'bytes, as a whole number');
  const daemon = new XenStoreDaemon({ queuedOutputLimit: 4096 });
  t.teardown(() => daemon.shutdown());
  t.equal(daemon.outputLimit.limit, 4096, 'the daemon takes it');
});
