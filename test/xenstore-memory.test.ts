/**
 * Memory accounting bounds memory: what the daemon charges a client for is
 * what it really holds on the client's behalf, and all the output it queues
 * for clients together has a bound that costs the greediest client its
 * connection, not the daemon or the others their service.
 */
import t from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseAbsolute } from '../xenstore/store/path.js';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';

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
