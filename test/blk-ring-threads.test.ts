/**
 * The block backend's ring threads: each ring is served by one thread from
 * request to response, a device's queues are spread over the threads, the
 * I/O engine is io_uring where it can run and the pool where it cannot
 * (and says why), and a ring thread that dies breaks its rings loudly
 * instead of leaving the frontend waiting.
 */
import t from 'tap';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { startEngine } from '../blkback/io-engine.js';
import type { IoPool } from '../blkback/io-pool.js';
import { openUring } from '../shared/uring.js';
import { XenbusState } from '../xenbus/state.js';
import { captureLogs } from './helpers/logs.js';
import { randomBytes, startBlkTestbed } from './helpers/blk.js';

const uringHere = (() => {
  const opened = openUring(8);
  if ('reason' in opened) return opened.reason;
  opened.uring.close();
  return undefined;
})();

for (const engine of ['pool', 'uring'] as const) {
  t.test(`the ${engine} engine serves a multi-queue disk`, { skip: engine === 'uring' && uringHere ? `io_uring cannot run here: ${uringHere}` : false }, async (t) => {
    const blk = await startBlkTestbed(t, { back: { ioEngine: engine, ringThreads: 2, maxQueues: 4 }, front: { maxQueues: 4 } });
    const disk = await blk.connect(blk.disk('xvda'));
    t.same(await blk.back.ioEngine(), { engine }, `the backend runs ${engine}`);
    t.same(blk.back.ringThreadLoad(), [2, 2], "the device's four queues are spread over both ring threads");
    const data = randomBytes(256 * 1024);
    await Promise.all(Array.from({ length: 64 }, (_, i) => disk.write(i * 8, data.subarray(i * 4096, (i + 1) * 4096))));
    await disk.flush();
    const back = await disk.read(0, data.length / 512);
    t.ok(Buffer.from(back).equals(data), '64 concurrent writes over four rings read back');
  });
}

t.test('auto falls back to the pool where io_uring cannot run, and says why; uring refuses to', async (t) => {
  const platform = EmbeddedPlatform.create(256);
  const refused = () => ({ reason: 'io_uring_setup: EPERM (a seccomp filter)' });
  const auto = await startEngine('auto', platform, { grantAccess: 'map', domid: 0 }, refused);
  t.equal(auto.engine, 'pool', 'auto runs the pool');
  t.match(auto.reason, /EPERM \(a seccomp filter\)/, 'and says why');
  await (auto.forRing(2, false).runner as IoPool).close();
  await t.rejects(startEngine('uring', platform, { grantAccess: 'map', domid: 0 }, refused), /io_uring cannot be used here: io_uring_setup: EPERM/, 'uring asked for and refused is an error');
});

t.test('a bad engine name is refused when the driver is made', async (t) => {
  const { BlkbackDriver } = await import('../blkback/driver.js');
  t.throws(() => new BlkbackDriver({ ioEngine: 'aio' as never }), /the I\/O engine is one of uring, pool, auto/);
  process.env['XENMESH_IO_ENGINE'] = 'threads';
  t.teardown(() => void delete process.env['XENMESH_IO_ENGINE']);
  t.throws(() => new BlkbackDriver(), /XENMESH_IO_ENGINE=threads/, 'from the environment too');
});

t.test('ring threads that die break their rings: the device reports it and goes Closing', async (t) => {
  const logs = captureLogs(t);
  const blk = await startBlkTestbed(t, { back: { ringThreads: 1 } });
  const spec = blk.disk('xvda');
  const disk = await blk.connect(spec);
  await disk.write(0, randomBytes(4096));
  // The threads go while the device is connected, as if one had crashed.
  await blk.back.close();
  const states = await blk.bed.waitStates(spec, XenbusState.Closed, XenbusState.Closed, 10_000).then(
    () => 'closed',
    () => 'not closed',
  );
  t.equal(states, 'closed', 'both ends closed the device');
  const error = await blk.bed.dom0.tryRead(`/local/domain/${blk.driver.domid}/error/backend/vbd/${blk.guest.domid}/${spec.devid}/error`);
  t.match(error, /ring thread/, `the error node says why: ${error}`);
  t.ok(logs.some((line) => /ring thread/.test(line)), 'and so does the log');
});

t.test("ring threads start without the process's preloaded modules", async (t) => {
  const { withoutPreloads } = await import('../blkback/ring-threads.js');
  t.same(
    withoutPreloads(['--import=file:///hooks.mjs', '--enable-source-maps', '--import', 'x.mjs', '-r', 'y.cjs', '--require=z.cjs', '--loader', 'l.mjs', '--max-old-space-size=512']),
    ['--enable-source-maps', '--max-old-space-size=512'],
    'module preloads go, other options stay',
  );
});

t.test('xenmesh backend refuses a bad --io-engine or --ring-threads before it touches anything', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const cli = new URL('../bin/xenmesh.js', import.meta.url).pathname;
  for (const [args, message] of [
    [['--io-engine', 'aio'], /--io-engine is uring, pool or auto, not 'aio'/],
    [['--ring-threads', '0'], /--ring-threads must be a positive number of threads, not '0'/],
    [['--ring-threads', 'many'], /--ring-threads must be a positive number of threads, not 'many'/],
  ] as const) {
    const run = spawnSync(process.execPath, [cli, 'backend', ...args], { encoding: 'utf8', timeout: 30_000 });
    t.equal(run.status, 1, `${args.join(' ')}: exit status 1`);
    t.match(run.stderr, message, `${args.join(' ')}: says what is wrong`);
  }
});
