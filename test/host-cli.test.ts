/**
 * `xenmesh up` as a user runs it: it boots the embedded host, creates the
 * default disk image if there is none and serves it from the driver domain,
 * prints the domains with their workers, xenstore connections and devices,
 * serves Xen's own tools on its socket, and stops cleanly on SIGTERM
 * and SIGINT. An image it cannot serve (missing, a dangling symlink, not a
 * file or block device, shorter than a sector, not writable with --access
 * rw) is refused in one line before any domain is created, and nothing is
 * created for it; one it cannot write is served read-only, and it says so.
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
/** The line `xenmesh up` prints once the host runs. */
const RUNNING = 'Ctrl-C or SIGTERM stops the host';
/** The last row of the status that ends the start-up output: the echo device's. */
const STATUS_END = /^echo 0 .*$/m;
/** The user a read-only image is tried as when the tests run as root, whom a mode of 0444 does not stop: nobody. */
const NOBODY = 65534;

/** A sparse image of `bytes`. */
function image(path: string, bytes: number): string {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return path;
}

interface Booted {
  stdout: string;
  stderr: string;
  /** Whether it reached the Running line (else it exited). */
  running: boolean;
  exit: Promise<number | null>;
  kill(signal: NodeJS.Signals): void;
}

/**
 * Starts `xenmesh up` and waits until it runs or exits; killed when the
 * test ends. Run as another user, it goes without tap's process-info hook,
 * which tap adds to every child's NODE_OPTIONS and which writes where that
 * user may not.
 */
async function boot(t: Test, args: string[], options: SpawnOptions = {}): Promise<Booted> {
  const command = [process.execPath, XENMESH, 'up', ...args];
  if (options.uid !== undefined) command.unshift('env', '-u', 'NODE_OPTIONS');
  const child = spawn(command[0]!, command.slice(1), { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  // 'close', not 'exit': by then everything it wrote has been read.
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
  });
  const booted: Booted = { stdout: '', stderr: '', running: false, exit, kill: (signal) => child.kill(signal) };
  child.stderr!.on('data', (chunk: Buffer) => (booted.stderr += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no output in time:\n${booted.stdout}\n${booted.stderr}`)), 30_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      booted.stdout += chunk.toString();
      if (booted.stdout.includes(RUNNING) && STATUS_END.test(booted.stdout)) {
        clearTimeout(timer);
        booted.running = true;
        resolve();
      }
    });
    void exit.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
  return booted;
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`xenmesh up, stopped by ${signal}`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'xenmesh-up-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const socket = join(dir, 'socket');
    // No --image: the default image, under XDG_DATA_HOME, is created with its directory.
    const image = join(dir, 'xenmesh', 'guest.img');
    const up = await boot(t, ['--socket', socket], { env: { ...process.env, XDG_DATA_HOME: dir } });
    t.ok(up.running, 'it runs', { stderr: up.stderr });
    const { stdout } = up;
    const exit = up.exit;
    t.match(stdout, `xenstored is listening on ${socket}`, 'it says where xenstored listens');
    t.match(stdout, /^0 +Domain-0 +running +xenstored ready/m, 'dom0 with xenstored');
    t.match(stdout, /^1 +driver +running +kernel:driver ready +0 +connected$/m, 'the driver domain, connected over its ring');
    t.match(stdout, /^2 +guest +running +kernel:guest ready +0 +connected$/m, 'the guest');
    t.match(
      stdout,
      /^echo 0 +guest \(2\) +Connected +driver \(1\) +Connected +connected$/m,
      'the echo device, with the state of both ends',
    );
    t.notMatch(stdout, /^\/local\/domain\/\d+$/m, 'but not their xenstore trees, which are there on request');

    const env = { XENSTORED_PATH: socket };
    const ls = await run('xenstore-ls', ['-p', '/local/domain/2'], env);
    t.match(ls.stdout, /^name = "guest" .*\(n0,r2\)$/m, 'xenstore-ls reads the running host');
    t.equal((await run('xenstore-write', ['/local/domain/2/data/hello', 'world'], env)).code, 0, 'xenstore-write drives it');
    t.equal((await run('xenstore-read', ['/local/domain/2/data/hello'], env)).stdout, 'world\n');
    t.equal(
      (await run('xenstore-read', ['/local/domain/2/device/echo/0/state', '/local/domain/1/backend/echo/2/0/state'], env)).stdout,
      '4\n4\n',
      'xenstore-read sees both ends of the device Connected',
    );

    // The guest's disk: the default image was created sparse, and is served as xvda.
    const stats = statSync(image);
    t.equal(stats.size, 2 ** 30, 'the default image was created, 1 GiB');
    t.ok(stats.blocks * 512 < 2 ** 20, 'and sparse');
    t.equal(
      (await run('xenstore-read', ['/local/domain/2/device/vbd/51712/state', '/local/domain/1/backend/vbd/2/51712/state'], env)).stdout,
      '4\n4\n',
      'xenstore-read sees both ends of the disk Connected',
    );
    const backend = (await run('xenstore-ls', ['/local/domain/1/backend/vbd/2/51712'], env)).stdout;
    for (const line of [`params = "raw:${image}"`, 'type = "qdisk"', 'mode = "w"', 'device-type = "disk"', 'dev = "xvda"', 'frontend-id = "2"', 'online = "1"', 'removable = "0"', 'bootable = "1"', 'discard-enable = "1"', 'sectors = "2097152"', 'feature-flush-cache = "1"', 'hotplug-status = "connected"']) {
      t.match(backend, line, `the backend has ${line}`);
    }
    const frontend = (await run('xenstore-ls', ['/local/domain/2/device/vbd/51712'], env)).stdout;
    for (const line of ['virtual-device = "51712"', 'device-type = "disk"', 'trusted = "1"', 'protocol = "x86_64-abi"', 'backend-id = "1"', 'event-channel']) {
      t.match(frontend, line, `the frontend has ${line}`);
    }
    t.match(stdout, /^vbd xvda +guest \(2\) +Connected +driver \(1\) +Connected +connected$/m, 'the disk in the device table');

    up.kill(signal);
    t.equal(await exit, 0, `exit status 0 on ${signal}`);
    t.notOk(existsSync(socket), 'the socket is gone');
  });
}

t.test('bad options are refused', async (t) => {
  const result = await run(process.execPath, [XENMESH, 'up', '--bogus']);
  t.equal(result.code, 1);
  t.match(result.stderr, /xenmesh up: .*\nUsage: xenmesh up/);
  const frames = await run(process.execPath, [XENMESH, 'up', '--frames', '10']);
  t.equal(frames.code, 1);
  t.match(frames.stderr, /--frames/);
});

t.test('bad --access is refused', async (t) => {
  const result = await run(process.execPath, [XENMESH, 'up', '--access', 'rwx']);
  t.equal(result.code, 1);
  t.match(result.stderr, /^xenmesh up: --access is ro or rw, not 'rwx'\nUsage: xenmesh up/);
});

t.test('images xenmesh up cannot serve are refused in one line, before any domain is created', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-up-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  symlinkSync(join(dir, 'gone.img'), join(dir, 'dangling.img'));
  writeFileSync(join(dir, 'short.img'), Buffer.alloc(100));
  image(join(dir, 'empty.img'), 0);
  const cases: [string, string, string][] = [
    ['a missing image, four directories down', join(dir, 'a', 'b', 'c', 'd', 'guest.img'), 'does not exist'],
    ['a dangling symlink', join(dir, 'dangling.img'), `is a dangling symlink (its target ${join(dir, 'gone.img')} does not exist)`],
    ['a directory', dir, 'is a directory, not a regular file or a block device'],
    ['a character device', '/dev/null', 'is a character device, not a regular file or a block device'],
    ['an empty image', join(dir, 'empty.img'), 'is empty (a disk needs at least one 512-byte sector)'],
    ['an image shorter than a sector', join(dir, 'short.img'), 'is 100 bytes, shorter than one 512-byte sector'],
  ];
  for (const [what, path, problem] of cases) {
    const started = Date.now();
    const result = await run(process.execPath, [XENMESH, 'up', '--socket', socket, '--image', path]);
    t.equal(result.code, 1, `${what}: exit status 1`);
    t.equal(result.stderr, `xenmesh up: cannot serve the guest's disk: ${path} ${problem} (--image FILE)\n`, `${what}: one line naming the path and what is wrong`);
    t.equal(result.stdout, '', `${what}: and nothing else`);
    t.notOk(existsSync(socket), `${what}: no xenstored was started, no domain created`);
    t.ok(Date.now() - started < 5000, `${what}: at once, not after a wait for the disk to connect`);
  }
  t.same(readdirSync(dir).sort(), ['dangling.img', 'empty.img', 'short.img'], 'nothing was created for the missing image');
});

/** Why the tests of an image the host cannot write are skipped, if they are: as root they run as nobody, who must be able to run xenmesh. */
const unwritableSkip = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', `await import(${JSON.stringify(new URL('../host/machine/host.js', import.meta.url).href)})`], { uid: NOBODY, gid: NOBODY });
  return probe.status === 0 ? false : `nobody (${NOBODY}) cannot load xenmesh from here: ${probe.stderr.toString().split('\n')[0]}`;
})();

t.test('an image the host cannot write: served read-only and said so, or refused with --access rw', { skip: unwritableSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-up-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // As root, the host runs as nobody, for whom a mode of 0444 means what it
  // says; the directory is nobody's, since the host refuses to put its
  // socket where others could write.
  const asNobody = process.getuid?.() === 0;
  if (asNobody) chownSync(dir, NOBODY, NOBODY);
  const as: SpawnOptions = asNobody ? { uid: NOBODY, gid: NOBODY } : {};
  const path = image(join(dir, 'readonly.img'), 16 * 2 ** 20);
  chmodSync(path, 0o444);

  const refused = await boot(t, ['--socket', join(dir, 'refused'), '--image', path, '--access', 'rw'], as);
  t.equal(await refused.exit, 1, '--access rw: exit status 1');
  t.equal(refused.stderr, `xenmesh up: cannot serve the guest's disk: ${path} is not writable (EACCES: permission denied), and the disk is read-write (--image FILE)\n`, '--access rw: one line saying the image is not writable');
  t.notOk(existsSync(join(dir, 'refused')), '--access rw: no domain was created');

  const socket = join(dir, 'socket');
  const up = await boot(t, ['--socket', socket, '--image', path], as);
  t.ok(up.running, 'without --access the host runs', { stderr: up.stderr });
  t.match(up.stderr, `the guest's disk: ${path} is not writable (EACCES: permission denied); serving it read-only`, 'and says the disk is read-only, and why');
  const env = { XENSTORED_PATH: socket };
  const backend = (await run('xenstore-ls', ['/local/domain/1/backend/vbd/2/51712'], env)).stdout;
  t.match(backend, 'mode = "r"', 'the backend has mode = r, as libxl writes for a read-only disk');
  t.match(backend, 'info = "4"', 'and info VDISK_READONLY');
  t.match(backend, 'feature-discard = "0"', 'and offers no discard');
  t.match(up.stdout, /^vbd xvda +\S+ \(\d+\) +Connected +\S+ \(\d+\) +Connected +connected$/m, 'the disk is Connected');
  up.kill('SIGTERM');
  t.equal(await up.exit, 0, 'and the host stops cleanly');
});

t.test('--access ro serves a writable image read-only', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-up-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  const path = image(join(dir, 'guest.img'), 16 * 2 ** 20);
  const up = await boot(t, ['--socket', socket, '--image', path, '--access', 'ro']);
  t.ok(up.running, 'the host runs', { stderr: up.stderr });
  t.notMatch(up.stderr, /not writable/, 'with nothing to say about the image');
  const backend = (await run('xenstore-ls', ['/local/domain/1/backend/vbd/2/51712'], { XENSTORED_PATH: socket })).stdout;
  t.match(backend, 'mode = "r"', 'the backend has mode = r');
  t.match(backend, 'info = "4"', 'and info VDISK_READONLY');
  up.kill('SIGTERM');
  t.equal(await up.exit, 0);
});
