/**
 * python3-pyxs, a pure-Python xenstore client, run by Debian's python3
 * against our daemon: transactions with a conflict and its retry, watches.
 */
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { run, startDaemon } from './helpers/daemon.js';

const SCRIPT = fileURLToPath(new URL('../../test/python/pyxs_client.py', import.meta.url));

t.test('python3-pyxs: transactions and watches', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const result = await run('/usr/bin/python3', [SCRIPT, env.socketPath]);
  t.equal(result.code, 0, result.stderr);
  const report = JSON.parse(result.stdout) as Record<string, unknown>;
  t.equal(report['attempts'], 2, 'the conflicting commit failed once and the retry succeeded');
  t.equal(report['counter'], '101', 'the retry built on the other client\'s write');
  t.equal(report['aborted_exists'], false, 'a rolled back transaction leaves nothing');
  t.equal(report['missing_errno'], 2, 'ENOENT reaches pyxs as errno 2');
  t.same(report['events'], [
    ['/pyxs/watched', 'token-1'],
    ['/pyxs/watched/a', 'token-1'],
    ['/pyxs/watched/b', 'token-1'],
    ['/pyxs/watched', 'token-1'],
  ]);
  t.same(report['perms'], ['b0', 'r5']);
  t.same(report['list'], ['counter'], 'the watched subtree was removed, the aborted node never existed');
  t.equal(report['domain_path'], '/local/domain/3');
});
