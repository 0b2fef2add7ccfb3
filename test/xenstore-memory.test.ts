/**
 * Memory accounting bounds memory: what the daemon charges a client for is
 * what it really holds on the client's behalf, and all the output it queues
 * for clients together has a bound that costs the greediest client its
 * connection, not the daemon or the others their service.
 */
import t from 'tap';
import { parseAbsolute } from '../xenstore/store/path.js';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';

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
