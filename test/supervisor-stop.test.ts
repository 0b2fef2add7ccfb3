/**
 * Stopping a worker while something else stops or starts it: a destroy
 * overlapping a reboot stops the same kernel twice, and a destroy may stop
 * a kernel that is still starting. Every caller is answered.
 */
import t from 'tap';
import { Supervisor, type RestartPolicy } from '../shared/mesh/supervisor.js';
import { setLogSink } from '../shared/log.js';
import { settleWithin } from './helpers/settle.js';

const TEST_ROLE = new URL('./helpers/test-role-worker.js', import.meta.url);
const NO_RESTART: RestartPolicy = { kind: 'never' };
/** Far longer than a test role takes to stop (it answers within a millisecond), far shorter than tap's timeout. */
const SETTLE_MS = 10_000;

setLogSink(() => {});

t.test('two overlapping stops of one worker both settle', async (t) => {
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  await supervisor.start({ name: 'probe', domid: 3, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: NO_RESTART });
  const exits: string[] = [];
  supervisor.on('exit', (name) => exits.push(name));
  const first = supervisor.stop('probe', 'reboot');
  const second = supervisor.stop('probe', 'destroy');
  t.equal((await settleWithin(first, SETTLE_MS)).state, 'resolved', 'the first stop settles');
  t.equal((await settleWithin(second, SETTLE_MS)).state, 'resolved', 'and so does the second');
  t.same(exits, ['probe'], 'the worker exited once');
  t.same(supervisor.status(), [], 'and is gone');
  t.equal((await settleWithin(supervisor.stop('probe'), SETTLE_MS)).state, 'resolved', 'a stop after it is gone settles at once');
});

t.test('a stop that comes while the worker exits joins it', async (t) => {
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  await supervisor.start({ name: 'probe', domid: 3, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: NO_RESTART });
  // The moment a toolstack destroy hits when it overlaps a reboot's own stop.
  let late: Promise<void> | undefined;
  supervisor.once('exit', () => (late = supervisor.stop('probe', 'destroy')));
  const first = supervisor.stop('probe', 'reboot');
  t.equal((await settleWithin(first, SETTLE_MS)).state, 'resolved', 'the first stop settles');
  t.ok(late, 'the second stop was asked while the worker exited');
  t.equal((await settleWithin(late!, SETTLE_MS)).state, 'resolved', 'and settles too');
});

t.test('a worker stopped while it starts: its start is refused, not left waiting', async (t) => {
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  const starting = supervisor.start({ name: 'probe', domid: 3, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: NO_RESTART });
  const stopping = supervisor.stop('probe', 'domain destroyed');
  const started = await settleWithin(starting, SETTLE_MS);
  t.equal(started.state, 'rejected', 'the start is refused');
  t.match(started.state === 'rejected' ? started.error.message : '', /probe was stopped before it was ready \(domain destroyed\)/, 'saying why');
  t.equal((await settleWithin(stopping, SETTLE_MS)).state, 'resolved', 'the stop settles');
  t.same(supervisor.status(), [], 'and the worker is gone');
  await supervisor.start({ name: 'probe', domid: 3, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: NO_RESTART });
  t.pass('the name can be started again');
});
