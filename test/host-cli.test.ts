/**
 * `xenmesh up` as a user runs it: it boots the embedded host, creates the
 * guest's disk image if there is none and serves it from the driver domain,
 * prints the domains with their workers, xenstore connections, devices and
 * trees, serves Xen's own tools on its socket, and stops cleanly on SIGTERM
 * and SIGINT.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`xenmesh up, stopped by ${signal}`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'xenmesh-up-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const socket = join(dir, 'socket');
    const image = join(dir, 'images', 'guest.img');
    const child = spawn(process.execPath, [XENMESH, 'up', '--socket', socket, '--image', image], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no output in time:\n${stdout}\n${stderr}`)), 30_000);
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('Ctrl-C or SIGTERM stops the host')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    t.match(stdout, `xenstored is listening on ${socket}`, 'it says where xenstored listens');
    t.match(stdout, /^0 +Domain-0 +running +xenstored ready/m, 'dom0 with xenstored');
    t.match(stdout, /^1 +driver +running +kernel:driver ready +0 +connected$/m, 'the driver domain, connected over its ring');
    t.match(stdout, /^2 +guest +running +kernel:guest ready +0 +connected$/m, 'the guest');
    t.match(
      stdout,
      /^echo 0 +\/local\/domain\/2\/device\/echo\/0 +Connected +\/local\/domain\/1\/backend\/echo\/2\/0 +Connected +connected$/m,
      'the echo device, with the state of both ends',
    );
    t.match(stdout, /^\/local\/domain\/2\n vm = /m, 'and their xenstore trees');

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

    // The guest's disk: the image was created sparse, and is served as xvda.
    const stats = statSync(image);
    t.equal(stats.size, 2 ** 30, 'the image was created, 1 GiB');
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
    t.match(stdout, /^vbd 51712 +\/local\/domain\/2\/device\/vbd\/51712 +Connected +\/local\/domain\/1\/backend\/vbd\/2\/51712 +Connected +connected$/m, 'the disk in the device table');

    child.kill(signal);
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
