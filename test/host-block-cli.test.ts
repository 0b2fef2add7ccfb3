/**
 * Disks from the command line, as xl's block-list, block-attach and
 * block-detach do them, against a running `xenmesh up`: through the
 * spawned CLI and at the host's prompt, and each refusal (an unknown
 * domain, a missing image, a vdev in use, an unknown vdev, a backend that
 * cannot serve). A disk attached read-only refuses the guest's writes. A
 * disk attached to a paused domain is attached once its backend is ready,
 * as xl does, and connects when the domain runs.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Host } from '../host/machine/host.js';
import { runToolstackAction } from '../host/cli/toolstack-actions.js';
import { diskDevice, vdevNumber } from '../host/toolstack/devices.js';
import { setLogSink } from '../shared/log.js';
import { waitForState } from '../xenbus/read.js';
import { XenbusState } from '../xenbus/state.js';
import { LATENCY_BUCKETS_US, type VbdCounters } from '../shared/vbd-stats.js';
import { DISK_KERNEL, makeImage, runDiskJob } from './helpers/disk-jobs.js';
import { startXenmeshHost } from './helpers/xenmesh-host.js';

t.test('block-attach, block-list and block-detach through the CLI and at the prompt', async (t) => {
  const host = await startXenmeshHost(t, 'xenmesh-block-');
  const second = host.makeImage('second.img');

  const listed = await host.xenmesh('block-list', 'guest');
  t.equal(listed.code, 0, 'block-list exits 0', { stderr: listed.stderr });
  t.match(listed.stdout, /^Disk +Image +States +Rings +I\/O$/m, 'a table with its heading');
  t.match(listed.stdout, /^2 xvda rw +\/tmp\//m, "the guest's disk, by frontend domain and vdev, read-write, with its image");
  t.match(listed.stdout, /guest\.img/, 'its image path whole, wrapped if need be');
  t.match(listed.stdout, /^be 1 +\S+ +be Connected/m, 'served by the driver domain, backend Connected');
  t.match(listed.stdout, /fe Connected/, 'frontend Connected');
  t.match(listed.stdout, /\d+ x \d+ pages?/, 'its rings: queues x pages');
  t.match(listed.stdout, /persistent|indirect|flush|discard/, 'what the ends negotiated');
  t.match(listed.stdout, /req /, 'and the I/O counters');
  t.ok(listed.stdout.split('\n').every((line) => line.length <= 80), 'within 80 columns', { stdout: listed.stdout });

  const attached = await host.xenmesh('block-attach', 'guest', second);
  t.equal(attached.code, 0, 'block-attach exits 0', { stderr: attached.stderr });
  t.equal(attached.stdout, `xvdb (${second}, read-write) attached to domain guest (2), served by domain 1; connected\n`, 'the next free vdev, the backend of the guest\'s disks, connected');
  const backend = `/local/domain/1/backend/vbd/2/${vdevNumber('xvdb')}`;
  t.equal((await host.xenstore('xenstore-read', `${backend}/mode`)).stdout, 'w\n', 'libxl\'s mode w');
  t.equal((await host.xenstore('xenstore-read', `${backend}/params`)).stdout, `raw:${second}\n`, 'and params');
  const perms = await host.xenstore('xenstore-ls', '-p', `/local/domain/2/device/vbd/${vdevNumber('xvdb')}`);
  t.match(perms.stdout, /\(n2,r1\)/, "the frontend's keys: the guest's, readable by the driver domain, as libxl sets them");
  const both = (await host.xenmesh('block-list', 'guest')).stdout;
  t.match(both, /^2 xvdb rw +\/tmp\//m, 'block-list shows it');
  t.match(both, /second\.img/, 'with its image');
  t.match((await host.xenmesh('list')).stdout, /^guest .*vbd xvda, echo 0, vbd xvdb/m, 'and list');

  const refusals: [string[], RegExp][] = [
    [['block-attach', 'nosuch', second], /^xenmesh block-attach: no domain 'nosuch' \(there are: /],
    [['block-attach', 'guest', join(host.dir, 'missing.img')], /^xenmesh block-attach: xvdc not attached: .*missing\.img/],
    [['block-attach', 'guest', second, 'xvda'], /^xenmesh block-attach: domain guest \(2\) already has a disk xvda$/m],
    [['block-attach', 'guest', second, 'sda'], /^xenmesh block-attach: 'sda' is not a Xen virtual disk name/],
    [['block-attach', 'guest', second, '--backend', 'guest'], /^xenmesh block-attach: a domain cannot serve its own vbd devices$/m],
    [['block-attach', 'guest', second, '--backend', 'Domain-0'], /^xenmesh block-attach: Domain-0 runs no vbd backend on this host/],
    [['block-attach', 'Domain-0', second], /^xenmesh block-attach: Domain-0 takes no disks/],
    [['block-detach', 'guest', 'xvdz'], /^xenmesh block-detach: domain guest \(2\) has no disk xvdz \(its disks: xvda, xvdb\)$/m],
    [['block-detach', 'nosuch', 'xvda'], /^xenmesh block-detach: no domain 'nosuch'/],
    [['block-list', 'nosuch'], /^xenmesh block-list: no domain 'nosuch'/],
  ];
  for (const [args, error] of refusals) {
    const result = await host.xenmesh(...args);
    t.equal(result.code, 1, `${args.join(' ')}: exit status 1`);
    t.match(result.stderr, error, 'says why in one line');
    t.notMatch(result.stderr, /\n +at /, 'without a stack');
  }
  t.match((await host.xenmesh('block-list', 'guest')).stdout, /xvdb/, 'the refusals left the disks as they were');
  t.notMatch((await host.xenmesh('block-list', 'guest')).stdout, /xvdc/, 'with nothing half-attached');

  const usage: [string[], RegExp][] = [
    [['block-attach', 'guest'], /^xenmesh block-attach: missing required argument 'image'\nUsage: xenmesh block-attach/],
    [['block-detach', 'guest', 'xvdb', '--timeout', '-5'], /^xenmesh block-detach: --timeout must be a positive number of seconds\nUsage: /],
    [['block-attach', 'guest', second, '--rw'], /^xenmesh block-attach: unknown option '--rw' \(did you mean --ro\?\)\nUsage: /],
  ];
  for (const [args, error] of usage) {
    const result = await host.xenmesh(...args);
    t.equal(result.code, 1, `${args.join(' ')}: exit status 1`);
    t.match(result.stderr, error, 'a usage error: one line and the usage');
  }

  const detached = await host.xenmesh('block-detach', 'guest', 'xvdb');
  t.equal(detached.code, 0, 'block-detach exits 0', { stderr: detached.stderr });
  t.equal(detached.stdout, 'xvdb detached from domain guest (2): the guest closed it\n', 'the guest closed it by itself');
  t.equal((await host.xenstore('xenstore-read', `${backend}/state`)).code, 1, 'its backend directory is gone');
  t.notMatch((await host.xenmesh('block-list', 'guest')).stdout, /xvdb/, 'and block-list no longer shows it');

  const readOnly = await host.xenmesh('block-attach', 'guest', second, 'xvdc', '--ro');
  t.equal(readOnly.code, 0, 'block-attach --ro exits 0', { stderr: readOnly.stderr });
  t.match(readOnly.stdout, /^xvdc \(.*, read-only\) attached/, 'read-only');
  t.equal((await host.xenstore('xenstore-read', `/local/domain/1/backend/vbd/2/${vdevNumber('xvdc')}/mode`)).stdout, 'r\n', 'mode r, as libxl writes');
  t.match((await host.xenmesh('block-list', 'guest')).stdout, /^2 xvdc ro /m, 'block-list shows ro');

  // The same at the prompt.
  await host.type(`block-detach guest xvdc`, /xvdc detached from domain guest \(2\)/);
  await host.type(`block-attach guest ${second} xvdd --ro`, /xvdd \(.*read-only\) attached to domain guest \(2\).*connected/);
  await host.type('block-list guest', /^2 xvdd ro +/m);
  await host.type('block-attach guest /nonexistent/disk.img', /error: xvd. not attached: .*nonexistent/);
  await host.type('block-detach guest xvdq', /error: domain guest \(2\) has no disk xvdq/);
  await host.type('block-detach guest xvdd', /xvdd detached/);
  t.equal(host.child.exitCode, null, 'the host runs on');
});

/** A host in this process with a driver domain and a guest, and 16 MiB images made for it in a directory of its own. */
async function startDiskHost(t: Test, prefix: string, imageNames: readonly string[]) {
  setLogSink(() => {});
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const images = imageNames.map((name) => join(dir, name));
  for (const image of images) makeImage(image, 16 * 1024 * 1024);
  const host = new Host({ socket: join(dir, 'socket'), frames: 16384, kernelModule: DISK_KERNEL });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 2048 }, { backDrivers: ['vbd'] });
  const guest = await host.startDomain({ name: 'guest', pages: 2048 }, { frontDrivers: ['vbd'] });
  return { host, driver, guest, dir, images };
}

t.test('a disk attached read-only: the guest reads it and its writes are refused', async (t) => {
  const { host, driver, guest, images } = await startDiskHost(t, 'xenmesh-block-ro-', ['first.img', 'second.img']);
  const [first, second] = images as [string, string];
  await host.plugDevice(diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev: 'xvda', target: first }));

  const said = await runToolstackAction(host, 'block-attach', 'guest', { image: second, readOnly: true });
  t.match(said, /^xvdb \(.*second\.img, read-only\) attached to domain guest \(\d+\), served by domain \d+; connected$/);
  const devid = vdevNumber('xvdb');
  const writes = await runDiskJob(host.xenstore, guest.domid, { id: 'ro-write', kind: 'write', count: 8, depth: 4, devid });
  t.equal(writes.acked, 0, 'no write to the read-only disk is acknowledged');
  t.equal(writes.errors, 8, 'every one is refused');
  const reads = await runDiskJob(host.xenstore, guest.domid, { id: 'ro-read', kind: 'verify', count: 8, depth: 4, devid });
  t.equal(reads.errors, 0, 'while reads succeed');
  const rw = await runDiskJob(host.xenstore, guest.domid, { id: 'rw-write', kind: 'write', count: 8, depth: 4, devid: vdevNumber('xvda') });
  t.same([rw.acked, rw.errors], [8, 0], 'and the read-write disk takes writes');

  const measured = await runToolstackAction(host, 'block-list', 'guest', {});
  const xvdbReads = /xvdb.*?req \d+ \(r (\d+) w \d+\)/s.exec(measured);
  t.ok(xvdbReads && Number(xvdbReads[1]) >= 8, "block-list shows blkback's own counters: xvdb's reads at least", { measured });
  t.notMatch(measured, /req -/, 'no counter is missing while the driver domain answers');
  // The counters as blkback reports them, per disk: here made up, to see them shown.
  const latencyCounts = LATENCY_BUCKETS_US.map(() => 0).concat(0);
  latencyCounts[LATENCY_BUCKETS_US.indexOf(100)] = 98;
  latencyCounts[LATENCY_BUCKETS_US.indexOf(2_500)] = 2;
  const counters: VbdCounters = {
    readRequests: 40, writeRequests: 60, flushRequests: 0, discardRequests: 0,
    bytesRead: 40 * 4096, bytesWritten: 3 * 1024 * 1024, errors: 8, inFlight: 1, latencyCounts, latencySumUs: 15_000,
  };
  Object.assign(host, { blockStats: async () => [{ backendDomid: driver.domid, frontendDomid: guest.domid, devid, counters }] });
  const shown = await runToolstackAction(host, 'block-list', 'guest', {});
  t.match(shown, /req 100 \(r 40 w 60\)/, 'requests, by operation');
  t.match(shown, /r 160\.0KiB w 3\.0MiB/, 'bytes read and written');
  t.match(shown, /err 8 infl 1/, 'errors and in flight');
  t.match(shown, /p50 100us p99 2\.5ms/, 'latency percentiles');
  t.ok(shown.split('\n').every((line) => line.length <= 80), 'within 80 columns', { shown });
});

t.test('a disk attached to a paused domain: attached once the backend is ready, connected once it runs', async (t) => {
  const { host, driver, guest, dir, images } = await startDiskHost(t, 'xenmesh-block-paused-', ['late.img']);
  const [image] = images as [string];
  t.equal(await runToolstackAction(host, 'pause', 'guest', {}), `domain guest (${guest.domid}) paused`);

  const started = Date.now();
  const said = await runToolstackAction(host, 'block-attach', 'guest', { image, timeoutMs: 20_000 });
  t.equal(said, `xvda (${image}, read-write) attached to domain guest (${guest.domid}), served by domain ${driver.domid}; it connects once the domain is unpaused`);
  t.ok(Date.now() - started < 20_000, 'without waiting out the timeout for a frontend that cannot answer');
  const devid = vdevNumber('xvda');
  const backend = `/local/domain/${driver.domid}/backend/vbd/${guest.domid}/${devid}`;
  t.equal((await host.xenstore.read(`${backend}/state`)).toString(), '2', 'the backend waits in InitWait');
  t.equal((await host.xenstore.read(`${backend}/hotplug-status`)).toString(), 'connected');

  t.equal(await runToolstackAction(host, 'unpause', 'guest', {}), `domain guest (${guest.domid}) unpaused`);
  const frontend = `/local/domain/${guest.domid}/device/vbd/${devid}/state`;
  t.equal(await waitForState(host.xenstore, frontend, [XenbusState.Connected], 20_000), XenbusState.Connected, 'once it runs, the guest connects the disk');
  const job = await runDiskJob(host.xenstore, guest.domid, { id: 'after-unpause', kind: 'write', count: 8, depth: 4, devid });
  t.same([job.acked, job.errors], [8, 0], 'and writes to it');
  t.equal((await host.xenstore.read(`${backend}/state`)).toString(), '4', 'backend Connected');

  // A backend that refuses the disk is said at once, paused or not.
  await runToolstackAction(host, 'pause', 'guest', {});
  await t.rejects(runToolstackAction(host, 'block-attach', 'guest', { image: join(dir, 'missing.img') }), /xvdb not attached: .*missing\.img/);
});
