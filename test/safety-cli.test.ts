/**
 * The host and the daemon against what an operator may do to them: start a
 * second one on the socket a running one serves (refused in one line, and
 * the first serves on), leave a stale socket behind (replaced), remove a
 * running daemon's socket and start another (the first, stopping, leaves
 * its successor's socket alone), run `xenmesh up` without root (it boots
 * with a socket and an image of its own), and name paths it cannot use
 * (each refused in one line naming the path and the option, exit 1, no
 * stack trace).
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './helpers/daemon.js';
import { leaveStaleSocket } from './helpers/stale-socket.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
/** What each command prints once it serves. */
const UP_RUNNING = 'Ctrl-C or SIGTERM stops the host';
const XENSTORED_SERVING = 'serving xenstore on';
/** As root, the tests that need an ordinary user run as nobody. */
const NOBODY = 65534;
const AS_ROOT = process.getuid?.() === 0;
/** A line of a Node stack trace. */
const STACK_LINE = /\n\s+at /;

function scratch(t: Test, owner?: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-safety-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  if (owner !== undefined) chownSync(dir, owner, owner);
  return dir;
}

function image(path: string, bytes = 16 * 2 ** 20): string {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return path;
}

interface Started {
  output: () => string;
  /** Whether it got to serving (else it exited first). */
  serving: boolean;
  exit: Promise<number | null>;
  kill(signal: NodeJS.Signals): void;
}

/**
 * Runs `xenmesh <args>` until it prints `ready` or exits; killed when the
 * test ends. Run as another user, it goes without tap's NODE_OPTIONS hook,
 * which writes where that user may not.
 */
async function start(t: Test, args: string[], ready: string, options: SpawnOptions = {}): Promise<Started> {
  const command = ['env', '-u', 'NODE_OPTIONS', process.execPath, XENMESH, ...args];
  const child = spawn(command[0]!, command.slice(1), { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
  });
  const started: Started = { output: () => output, serving: false, exit, kill: (signal) => child.kill(signal) };
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not serving in time:\n${output}`)), 30_000);
    const take = (chunk: Buffer) => {
      output += chunk.toString();
      if (!started.serving && output.includes(ready)) {
        started.serving = true;
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', take);
    child.stderr!.on('data', take);
    void exit.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
  return started;
}

/** How long a command that should refuse at once may run before it counts as not refusing (it is killed). */
const REFUSAL_LIMIT_MS = 30_000;

/**
 * Runs `xenmesh <args>`, which should refuse, to its end: its exit status
 * (null if it had to be killed, still running) and what it wrote to stderr.
 */
async function refusal(args: string[], options: SpawnOptions = {}): Promise<{ code: number | null; stderr: string }> {
  const child = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, XENMESH, ...args], { ...options, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const limit = setTimeout(() => child.kill('SIGKILL'), REFUSAL_LIMIT_MS);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(limit);
  return { code, stderr };
}

/** The socket file's identity, to tell it from another at the same path. */
function inode(path: string): number {
  return statSync(path).ino;
}

async function xenstoreLs(socket: string, path = '/local/domain/0'): Promise<string> {
  return (await run('xenstore-ls', [path], { XENSTORED_PATH: socket })).stdout;
}

t.test('a second xenmesh up on a served socket is refused, and the first serves on', async (t) => {
  const dir = scratch(t);
  const socket = join(dir, 'socket');
  const first = await start(t, ['up', '--socket', socket, '--image', image(join(dir, 'first.img'))], UP_RUNNING);
  t.ok(first.serving, 'the first host runs', { output: first.output() });
  const ino = inode(socket);

  const second = await refusal(['up', '--socket', socket, '--image', image(join(dir, 'second.img'))]);
  t.equal(second.code, 1, 'the second exits 1');
  t.equal(second.stderr, `xenmesh up: ${socket} is already served by a running host or daemon; stop it first, or pick another socket with --socket PATH\n`, 'in one line naming the socket and --socket');
  const daemon = await refusal(['xenstored', '--socket', socket]);
  t.equal(daemon.code, 1, 'xenmesh xenstored on the host\'s socket exits 1');
  t.equal(daemon.stderr, `xenmesh xenstored: ${socket} is already served by a running host or daemon; stop it first, or pick another socket with --socket\n`, 'in one line too');

  t.equal(inode(socket), ino, 'the first host\'s socket is still the one it made');
  t.ok(existsSync(`${socket}.journal`), 'its journal is still there');
  t.match(await xenstoreLs(socket), 'name = "Domain-0"', 'xenstore-ls still reaches the first host');

  const other = await refusal(['up', '--socket', join(dir, 'other'), '--image', join(dir, 'first.img')]);
  t.equal(other.code, 1, 'a second host on another socket but the same image exits 1');
  t.equal(other.stderr, `xenmesh up: cannot serve the guest's disk: ${join(dir, 'first.img')} is in use: another backend holds it, so it cannot be served read-write (--image FILE)\n`, 'saying the image is in use');
  t.notOk(existsSync(join(dir, 'other')), 'and serves nothing');

  first.kill('SIGTERM');
  t.equal(await first.exit, 0, 'the first host stops on SIGTERM');
  t.notOk(existsSync(socket), 'and removes its own socket');
});

t.test('xenmesh xenstored: a served socket is refused, a stale one replaced, a successor\'s left alone', async (t) => {
  const dir = scratch(t);
  const socket = join(dir, 'socket');
  const first = await start(t, ['xenstored', '--socket', socket], XENSTORED_SERVING);
  t.ok(first.serving, 'the first daemon serves', { output: first.output() });
  const ino = inode(socket);
  const second = await refusal(['xenstored', '--socket', socket, '--no-journal']);
  t.equal(second.code, 1, 'a second daemon on its socket exits 1');
  t.equal(second.stderr, `xenmesh xenstored: ${socket} is already served by a running host or daemon; stop it first, or pick another socket with --socket\n`, 'in one line');
  t.equal(inode(socket), ino, 'the first daemon\'s socket is untouched');
  await run('xenstore-write', ['/data/first', 'here'], { XENSTORED_PATH: socket });
  t.match(await xenstoreLs(socket, '/data'), 'first = "here"', 'and the first daemon still serves it');

  // An operator removes the running daemon's socket and starts another on the path.
  rmSync(socket);
  const successor = await start(t, ['xenstored', '--socket', socket, '--no-journal'], XENSTORED_SERVING);
  t.ok(successor.serving, 'a daemon serves the path again', { output: successor.output() });
  first.kill('SIGTERM');
  t.equal(await first.exit, 0, 'the first daemon stops');
  t.ok(existsSync(socket), 'leaving the successor\'s socket where it was');
  await run('xenstore-write', ['/data/successor', 'here'], { XENSTORED_PATH: socket });
  t.match(await xenstoreLs(socket, '/data'), 'successor = "here"', 'which still serves');
  successor.kill('SIGTERM');
  t.equal(await successor.exit, 0, 'the successor stops');

  const stale = join(dir, 'stale');
  leaveStaleSocket(stale);
  const replacing = await start(t, ['xenstored', '--socket', stale, '--no-journal'], XENSTORED_SERVING);
  t.ok(replacing.serving, 'a stale socket is replaced', { output: replacing.output() });
  await run('xenstore-write', ['/data/stale', 'replaced'], { XENSTORED_PATH: stale });
  t.match(await xenstoreLs(stale, '/data'), 'stale = "replaced"', 'and served');
  replacing.kill('SIGTERM');
  t.equal(await replacing.exit, 0, 'the daemon on it stops');

  const file = join(dir, 'not-a-socket');
  closeSync(openSync(file, 'w'));
  const notSocket = await refusal(['xenstored', '--socket', file]);
  t.equal(notSocket.stderr, `xenmesh xenstored: ${file} exists and is not a socket, so it is not replaced; remove it, or pick another socket with --socket\n`, 'a file that is not a socket is not replaced');
  t.equal(notSocket.code, 1, 'exit 1');
});

/** Whether an ordinary user can run xenmesh from here; as root that is nobody. */
const ordinaryUserSkip = (() => {
  if (!AS_ROOT) return false;
  const probe = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', `await import(${JSON.stringify(new URL('../host/machine/host.js', import.meta.url).href)})`], { uid: NOBODY, gid: NOBODY });
  return probe.status === 0 ? false : `nobody (${NOBODY}) cannot load xenmesh from here: ${probe.stderr.toString().split('\n')[0]}`;
})();

/** An ordinary user's spawn options: nobody's with only PATH and HOME, as root; our own otherwise. */
function ordinaryUser(home: string): SpawnOptions {
  const env = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: home };
  return AS_ROOT ? { uid: NOBODY, gid: NOBODY, env } : { env };
}

t.test('xenmesh up without root boots with a socket and an image of its own', { skip: ordinaryUserSkip }, async (t) => {
  const home = scratch(t, AS_ROOT ? NOBODY : undefined);
  const up = await start(t, ['up'], UP_RUNNING, ordinaryUser(home));
  t.ok(up.serving, 'it boots', { output: up.output() });
  const socket = join(home, '.local', 'state', 'xenmesh', 'xenstored.socket');
  t.match(up.output(), `xenstored is listening on ${socket};`, 'and says where its socket is: in the user\'s state directory');
  t.ok(existsSync(join(home, '.local', 'share', 'xenmesh', 'guest.img')), 'with the default image in the user\'s data directory');
  t.notMatch(up.output(), STACK_LINE, 'no stack trace');
  up.kill('SIGTERM');
  t.equal(await up.exit, 0, 'it stops on SIGTERM');
  t.notOk(existsSync(socket), 'and removes its socket');
});

t.test('paths that cannot be used: one line naming the path and its option, exit 1', { skip: ordinaryUserSkip }, async (t) => {
  const own = scratch(t, AS_ROOT ? NOBODY : undefined);
  // A directory the user may not write in: root's, as root (the user is nobody); else our own, made read-only.
  const locked = scratch(t);
  if (!AS_ROOT) {
    chmodSync(locked, 0o555);
    t.teardown(() => chmodSync(locked, 0o755));
  }
  mkdirSync(join(own, 'home'));
  if (AS_ROOT) chownSync(join(own, 'home'), NOBODY, NOBODY);
  const as = ordinaryUser(join(own, 'home'));
  const img = image(join(own, 'disk.img'));
  if (AS_ROOT) chownSync(img, NOBODY, NOBODY);
  const socket = join(own, 'socket');

  const cases: Array<[string, string[], string]> = [
    ['up, --socket in a directory that cannot be created', ['up', '--socket', join(locked, 'sub', 'socket'), '--image', img],
      `xenmesh up: cannot create ${join(locked, 'sub')}, the directory of the socket ${join(locked, 'sub', 'socket')} (EACCES: permission denied); pick another socket with --socket PATH`],
    ['up, --socket in a directory that cannot be written', ['up', '--socket', join(locked, 'socket'), '--image', img],
      `xenmesh up: cannot create the socket ${join(locked, 'socket')}: its directory ${locked} is not writable (EACCES: permission denied); pick another socket with --socket PATH`],
    ['up, --trace to a file that cannot be opened', ['up', '--socket', socket, '--image', img, '--trace', join(locked, 'trace')],
      `xenmesh up: cannot open the trace file ${join(locked, 'trace')} (EACCES: permission denied); set by --trace FILE`],
    ['up, --image that does not exist', ['up', '--socket', socket, '--image', join(own, 'missing.img')],
      `xenmesh up: cannot serve the guest's disk: ${join(own, 'missing.img')} does not exist (--image FILE)`],
    ['xenstored, -F to a pid file that cannot be written', ['xenstored', '--socket', socket, '-F', join(locked, 'pid')],
      `xenmesh xenstored: cannot write the pid file ${join(locked, 'pid')} (EACCES: permission denied); set by -F/--pid-file`],
    ['xenstored, --trace to a file that cannot be opened', ['xenstored', '--socket', socket, '--trace', join(locked, 'trace')],
      `xenmesh xenstored: cannot open the trace file ${join(locked, 'trace')} (EACCES: permission denied); set by -T/--trace`],
    ['xenstored, --socket in a directory that cannot be written', ['xenstored', '--socket', join(locked, 'socket')],
      `xenmesh xenstored: cannot create the socket ${join(locked, 'socket')}: its directory ${locked} is not writable (EACCES: permission denied); pick another socket with --socket`],
  ];
  for (const [what, args, line] of cases) {
    const result = await refusal(args, as);
    t.equal(result.stderr, `${line}\n`, `${what}: one line`);
    t.equal(result.code, 1, `${what}: exit 1`);
    t.notMatch(result.stderr, STACK_LINE, `${what}: no stack trace`);
  }
  t.notOk(existsSync(socket), 'nothing was served');
  t.notOk(existsSync(`${socket}.journal`), 'and no journal made');
});
