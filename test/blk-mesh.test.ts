/**
 * Block devices on the embedded host, each domain's kernel in its own
 * worker: the driver domain's kernel dies while the guest writes, the
 * supervisor restarts it, the backend resets the connection and the
 * frontend replays what was in flight. Nothing acknowledged is lost and no
 * request completes twice.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { diskDevice, devicePaths } from '../host/toolstack/devices.js';
import { Host } from '../host/machine/host.js';
import { setLogSink } from '../shared/log.js';
import { XenbusState } from '../xenbus/state.js';
import { waitForState } from '../xenbus/read.js';
import { DISK_KERNEL, makeImage, runDiskJob, waitForProgress, type DiskJob } from './helpers/disk-jobs.js';

t.test("the driver domain's kernel dies under load: the disk reconnects, replays, and loses nothing", async (t) => {
  setLogSink(() => {});
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blk-mesh-'));
  const image = join(dir, 'disk.img');
  makeImage(image, 64 * 1024 * 1024);
  const host = new Host({ socket: join(dir, 'socket'), frames: 32768, kernelModule: DISK_KERNEL });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 2048 }, { backDrivers: ['vbd'] });
  const guest = await host.startDomain({ name: 'guest', pages: 4096 }, { frontDrivers: ['vbd'] });
  const spec = diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev: 'xvda', target: image });
  await host.plugDevice(spec);
  const paths = devicePaths(spec);
  const connected = async () => {
    const states = await Promise.all([paths.frontend, paths.backend].map((p) => waitForState(host.xenstore, `${p}/state`, [XenbusState.Connected], 20_000)));
    t.same(states, [XenbusState.Connected, XenbusState.Connected], 'both ends Connected');
  };
  await connected();

  const runJob = (job: DiskJob, during?: () => Promise<void>) => runDiskJob(host.xenstore, guest.domid, job, during, 60_000);

  const COUNT = 3000;
  const written = await runJob({ id: 'write', kind: 'write', count: COUNT, depth: 32 }, async () => {
    await waitForProgress(host.xenstore, guest.domid, 400);
    // The backend's kernel dies with requests in flight.
    await host.xenstore.write(`/local/domain/${driver.domid}/data/crash`, 'now');
  });
  t.equal(host.workers().find((w) => w.name === 'kernel:driver')!.restarts, 1, 'the driver domain kernel died and was restarted');
  t.same(
    { acked: written.acked, errors: written.errors, settledTwice: written.settledTwice },
    { acked: COUNT, errors: 0, settledTwice: 0 },
    'every write completed, once, without an error',
  );
  await connected();
  const verified = await runJob({ id: 'verify', kind: 'verify', count: COUNT, depth: 32 });
  t.same({ acked: verified.acked, mismatches: verified.mismatches, errors: verified.errors }, { acked: COUNT, mismatches: 0, errors: 0 }, 'and every block reads back as written');
});
