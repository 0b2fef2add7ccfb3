/**
 * Xen's own xenstore test program (Debian's xen-utils-4.17) against our
 * daemon: every test it has, then its random mode.
 */
import t from 'tap';
import { run, startDaemon } from './helpers/daemon.js';

const TEST_XENSTORE = '/usr/lib/xen-4.17/bin/test-xenstore';
const RANDOM_SECONDS = 15;

t.test('test-xenstore: every test passes', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const list = await run(TEST_XENSTORE, ['-l']);
  const names = list.stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => line.slice(0, line.indexOf(':')).trim());
  t.ok(names.length >= 12, `test-xenstore lists its tests (${names.join(', ')})`);

  const result = await run(TEST_XENSTORE, [], { XENSTORED_PATH: env.socketPath });
  t.equal(result.code, 0, `exit status 0\n${result.stdout}${result.stderr}`);
  for (const name of names) {
    const line = result.stdout.split('\n').find((l) => l.slice(0, l.indexOf(':')).trim() === name);
    t.match(line, /: \d+ ns$/, `${name} ran and passed`);
  }
  t.notMatch(result.stdout, /failed/);

  // It cleans up after itself; nothing of it may remain.
  const client = await env.client();
  t.same(await client.directory('/local/domain/0').catch(() => []), [], 'nothing left under /local/domain/0');
});

t.test('test-xenstore: each test repeated', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const result = await run(TEST_XENSTORE, ['-i', '50'], { XENSTORED_PATH: env.socketPath });
  t.equal(result.code, 0, `exit status 0\n${result.stdout}${result.stderr}`);
  t.notMatch(result.stdout, /failed|Exhaustive/);
});

t.test(`test-xenstore: random mode for ${RANDOM_SECONDS} s`, async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const result = await run(TEST_XENSTORE, ['-r', String(RANDOM_SECONDS)], { XENSTORED_PATH: env.socketPath }, (RANDOM_SECONDS + 60) * 1000);
  t.equal(result.code, 0, `exit status 0\n${result.stdout}${result.stderr}`);
  t.notMatch(result.stdout, /failed|Exhaustive/);
});
