/**
 * `xenmesh xenstored` as a user runs it: its socket, pid file, trace file,
 * quota flags, a clean exit on SIGTERM and SIGINT, and refusal of bad flags.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
const XENSTORE_CONTROL = '/usr/lib/xen-4.17/bin/xenstore-control';

interface Started {
  child: ChildProcess;
  dir: string;
  socket: string;
  stderr(): string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function startCli(t: Test, args: (dir: string) => string[]): Promise<Started> {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-cli-'));
  const socket = join(dir, 'run', 'socket');
  const child = spawn(process.execPath, [XENMESH, 'xenstored', '--socket', socket, ...args(dir)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 10_000;
  while (!existsSync(socket) && Date.now() < deadline && child.exitCode === null) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return { child, dir, socket, stderr: () => stderr, exit };
}

t.test('serves a socket, writes its pid and a trace, stops on SIGTERM', async (t) => {
  const daemon = await startCli(t, (dir) => ['--pid-file', join(dir, 'pid'), '--trace', join(dir, 'trace')]);
  t.ok(existsSync(daemon.socket), 'the socket exists (its directory was created)');
  t.equal(readFileSync(join(daemon.dir, 'pid'), 'utf8'), `${daemon.child.pid}\n`, 'the pid file holds its pid');
  const env = { XENSTORED_PATH: daemon.socket };
  t.equal((await run('xenstore-write', ['/cli/key', 'value'], env)).code, 0);
  t.equal((await run('xenstore-read', ['/cli/key'], env)).stdout, 'value\n');

  const second = spawn(process.execPath, [XENMESH, 'xenstored', '--socket', join(daemon.dir, 'other'), '--pid-file', join(daemon.dir, 'pid')]);
  const secondExit = await new Promise<number | null>((resolve) => second.on('exit', resolve));
  t.equal(secondExit, 0, 'a second daemon with the same pid file leaves quietly');
  t.equal((await run('xenstore-read', ['/cli/key'], env)).stdout, 'value\n', 'and the first keeps serving');

  daemon.child.kill('SIGTERM');
  const exit = await daemon.exit;
  t.same(exit, { code: 0, signal: null }, 'exit status 0 on SIGTERM');
  t.notOk(existsSync(daemon.socket), 'the socket is removed');
  t.notOk(existsSync(join(daemon.dir, 'pid')), 'the pid file is removed');
  const trace = readFileSync(join(daemon.dir, 'trace'), 'utf8');
  t.match(trace, /^io: IN conn \d+ \(d0\) \S+ WRITE req \d+ tx 0 \(\/cli\/key value\)$/m, 'each request is traced on one line');
  t.match(trace, /^io: OUT conn \d+ \(d0\) \S+ WRITE req \d+ tx 0 \(OK \)$/m, 'and each reply');
});

t.test('SIGINT stops it too', async (t) => {
  const daemon = await startCli(t, () => []);
  daemon.child.kill('SIGINT');
  t.same(await daemon.exit, { code: 0, signal: null });
  t.notOk(existsSync(daemon.socket));
});

t.test('quota flags set what xenstore-control reports', async (t) => {
  const daemon = await startCli(t, () => [
    '-E', '500', '-S', '1024', '-W', '64', '-t', '5', '-A', '3', '-M', '4000',
    '-Q', 'outstanding=7', '--quota=transaction-nodes=99', '-Q', 'memory=1000000', '-q', 'memory=900000',
  ]);
  const env = { XENSTORED_PATH: daemon.socket };
  const quota = await run(XENSTORE_CONTROL, ['quota'], env);
  t.equal(
    quota.stdout,
    'Quota settings:\n' +
      'nodes            :      500 Nodes per domain\n' +
      'watches          :       64 Watches per domain\n' +
      'transactions     :        5 Transactions per domain\n' +
      'outstanding      :        7 Outstanding requests per domain\n' +
      'transaction-nodes:       99 Max. number of accessed nodes per transaction\n' +
      'memory           :  1000000 Total Xenstore memory per domain (error level)\n' +
      'node-size        :     1024 Max. size of a node\n' +
      'path-max         :     2048 Max. length of a node path\n' +
      'permissions      :        3 Max. number of permissions per node\n\n',
    '-M is capped at 2048, as in xenstored',
  );
  const soft = await run(XENSTORE_CONTROL, ['quota-soft'], env);
  t.equal(soft.stdout, 'Quota settings:\nmemory           :   900000 Total Xenstore memory per domain (warning level)\n\n');
});

t.test('bad flags are refused with a message', async (t) => {
  for (const args of [['-E', 'lots'], ['-Q', 'bogus=1'], ['-Q', 'nodes'], ['--frobnicate'], ['-w', 'other=3'], ['-E'], ['--queued-output-max', '1M'], ['--hypervisor', 'kvm'], ['--hypervisor']]) {
    const result = await run(process.execPath, [XENMESH, 'xenstored', ...args]);
    t.equal(result.code, 1, `${args.join(' ')} exits 1`);
    t.match(result.stderr, /xenmesh xenstored: .+\nUsage:/, 'with the problem and the usage');
  }
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lockout = await run(process.execPath, [XENMESH, 'xenstored', '--socket', join(dir, 'socket'), '-M', '5'], {}, 10_000);
  t.equal(lockout.code, 1, 'a path-max that would lock domains out exits 1');
  t.match(lockout.stderr, /^xenmesh xenstored: path-max 5 is below 19, the length of the longest path xenstore gives a domain/, 'and says why');
  const help = await run(process.execPath, [XENMESH, 'xenstored', '--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /--socket <path>/);
  const top = await run(process.execPath, [XENMESH, 'nonsense']);
  t.equal(top.code, 1);
  t.match(top.stderr, /unknown command 'nonsense'/);
});

t.test('--hypervisor xen where there is no Xen dom0 stops before serving, in one line', { skip: existsSync('/proc/xen/xsd_port') && 'this machine is a Xen dom0' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  const result = await run(process.execPath, [XENMESH, 'xenstored', '--socket', socket, '--hypervisor', 'xen', '-F', join(dir, 'pid')], {}, 10_000);
  t.equal(result.code, 1);
  t.equal(result.stderr, 'xenmesh xenstored: --hypervisor xen: /proc/xen/xsd_port is not there: this is not a Xen dom0 with xenfs mounted on /proc/xen, or its kernel runs no local xenstore\n');
  t.notOk(existsSync(socket), 'nothing was served');
  t.notOk(existsSync(join(dir, 'pid')), 'and no pid file is left');
});

t.test('a socket path it cannot use is reported', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'file'), '');
  const result = await run(process.execPath, [XENMESH, 'xenstored', '--socket', join(dir, 'file', 'socket')]);
  t.equal(result.code, 1);
  t.match(result.stderr, `xenmesh xenstored: cannot create ${join(dir, 'file')}, the directory of the socket ${join(dir, 'file', 'socket')}`);
  t.match(result.stderr, /pick another socket with --socket\n$/, 'and names the option');
});

t.test('a socket directory others could write to is refused, on one line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o777);
  const result = await run(process.execPath, [XENMESH, 'xenstored', '--socket', join(dir, 'socket')], {}, 10_000);
  t.equal(result.code, 1, 'exits 1');
  const lines = result.stderr.trimEnd().split('\n');
  t.equal(lines.length, 1, 'with one line');
  t.equal(lines[0], `xenmesh xenstored: refusing to serve a socket in ${dir}: ${dir} is writable by group or others (mode 0777) and not sticky, so they could replace the socket; pick another socket with --socket`);
  t.notOk(existsSync(join(dir, 'socket')), 'and no socket');
});
