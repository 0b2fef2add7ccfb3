/**
 * The control driver on the embedded host, each domain's kernel in its own
 * worker, asked through the toolstack (Host.control, what `xenmesh domain`
 * calls) and through a bare xenstore write to `control/shutdown`, as any
 * real client could: every shutdown reason, SysRq keys, a domain without
 * PV control, suspend and resume with hundreds of requests in flight, the
 * migration case (the source backend lets go of the image before the
 * destination opens it), and a driver domain powered off under load.
 */
import t from 'tap';
import { closeSync, mkdtempSync, openSync, readSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DomainActionError } from '../control/actions.js';
import { diskDevice, devicePaths, type DeviceSpec } from '../host/toolstack/devices.js';
import { Host } from '../host/machine/host.js';
import { setLogSink } from '../shared/log.js';
import { XenbusState } from '../xenbus/state.js';
import { waitForState } from '../xenbus/read.js';
import { waitFor } from './helpers/daemon.js';
import { DISK_BLOCK_BYTES, DISK_KERNEL, diskBlock, makeImage, runDiskJob, waitForProgress, type DiskJob, type DiskJobResult } from './helpers/disk-jobs.js';

type TapTest = { teardown(fn: () => unknown): void };


/** Descriptors of this process (every worker's) open on `path`. */
function openOn(path: string): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === path) count++;
    } catch {
      // closed meanwhile
    }
  }
  return count;
}

interface Bed {
  host: Host;
  image: string;
  logs: string[];
  guest: () => number;
  disk: () => DeviceSpec;
  connected: () => Promise<boolean>;
  runJob(job: DiskJob, during?: () => Promise<void>): Promise<DiskJobResult>;
}

/** A host with a driver domain serving an image file to a guest whose kernel runs disk jobs. */
async function startBed(t: TapTest, extraDrivers: string[] = []): Promise<Bed> {
  const logs: string[] = [];
  setLogSink((level, component, message) => {
    logs.push(`${level} [${component}] ${message}`);
    if (process.env['CONTROL_DEBUG']) process.stderr.write(`${level} [${component}] ${message}\n`);
  });
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-control-'));
  const image = join(dir, 'disk.img');
  makeImage(image, 64 * 1024 * 1024);
  const host = new Host({ socket: join(dir, 'socket'), frames: 65536, kernelModule: DISK_KERNEL });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 2048 }, { backDrivers: ['vbd'] });
  for (const name of extraDrivers) await host.startDomain({ name, pages: 2048 }, { backDrivers: ['vbd'] });
  const first = await host.startDomain({ name: 'guest', pages: 8192 }, { frontDrivers: ['vbd'] });
  let guestDomid = first.domid;
  const guest = () => guestDomid;
  host.lifecycle.on('rebooted', (old: number, now: number) => {
    if (old === guestDomid) guestDomid = now;
  });
  const disk = () => diskDevice({ frontendDomid: guestDomid, backendDomid: driver.domid, vdev: 'xvda', target: image });
  await host.plugDevice(disk());
  const connected = async () => {
    const paths = devicePaths(disk());
    const front = await waitForState(host.xenstore, `${paths.frontend}/state`, [XenbusState.Connected], 20_000);
    return front === XenbusState.Connected;
  };
  if (!(await connected())) throw new Error('the disk did not connect');
  return {
    host,
    image,
    logs,
    guest,
    disk,
    connected,
    runJob: (job, during) => runDiskJob(host.xenstore, guestDomid, job, during),
  };
}

/** Waits until the guest has had `count` writes acknowledged. */
function writing(bed: Bed, count: number): Promise<void> {
  return waitForProgress(bed.host.xenstore, bed.guest(), count);
}

/** Blocks `0 .. count - 1` (or those `only` names) of the image file that do not hold what the guest wrote there. */
function wrongBlocks(image: string, count: number, only?: (i: number) => boolean): number[] {
  const fd = openSync(image, 'r');
  const buffer = new Uint8Array(DISK_BLOCK_BYTES);
  const wrong: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      if (only && !only(i)) continue;
      readSync(fd, buffer, 0, DISK_BLOCK_BYTES, i * DISK_BLOCK_BYTES);
      if (!Buffer.from(buffer).equals(diskBlock(i))) wrong.push(i);
    }
  } finally {
    closeSync(fd);
  }
  return wrong;
}

t.test('control nodes: the guest publishes its features and watches shutdown and sysrq', async (t) => {
  const bed = await startBed(t);
  const home = `/local/domain/${bed.guest()}/control`;
  for (const feature of ['feature-poweroff', 'feature-reboot', 'feature-suspend']) {
    t.equal(await bed.host.xenstore.tryRead(`${home}/${feature}`), '1', `${feature} is published`);
  }
  // An unknown request is logged and left alone (manage.c acknowledges only what it handles).
  await bed.host.xenstore.write(`${home}/shutdown`, 'dance');
  await waitFor(() => bed.logs.some((l) => l.includes("ignoring shutdown request 'dance'")), 'the unknown request to be logged', 10_000);
  t.equal(await bed.host.xenstore.tryRead(`${home}/shutdown`), 'dance', 'an unknown request is not acknowledged');
  t.equal(bed.host.platform.domainInfo(bed.guest())?.state, 'running', 'and the domain runs on');
  await bed.host.xenstore.write(`${home}/shutdown`, '');

  // SysRq: s syncs, t shows the devices, h helps; an unknown key is logged; each is acknowledged.
  for (const [key, expected] of [
    ['s', 'SysRq sync done'],
    ['t', 'control: front /local/domain/'],
    ['h', 'SysRq keys:'],
    ['x', "SysRq 'x' is not handled here"],
  ] as const) {
    await bed.host.control('sysrq', 'guest', { key });
    await waitFor(() => bed.logs.some((l) => l.includes(expected)), `SysRq ${key}`, 10_000);
    t.pass(`SysRq '${key}' handled: ${expected}`);
    t.equal(await bed.host.xenstore.tryRead(`${home}/sysrq`), '', `SysRq '${key}' acknowledged (the node cleared)`);
  }
  await t.rejects(bed.host.control('sysrq', 'guest', { key: 'ab' }), DomainActionError, 'a SysRq key is one character');
  await t.rejects(bed.host.control('shutdown', 'nobody'), /no domain 'nobody'/, 'an unknown domain is refused by name');
  await t.rejects(bed.host.control('shutdown', '0'), /Domain-0/, 'Domain-0 is not shut down from here');
});

t.test('a domain without PV control is refused, as xl refuses it', async (t) => {
  const bed = await startBed(t);
  // A domain with no kernel running: nothing publishes control/feature-*.
  const bare = await bed.host.toolstack.createDomain({ name: 'bare', pages: 256 });
  for (const action of ['shutdown', 'reboot', 'suspend'] as const) {
    await t.rejects(bed.host.control(action, 'bare'), /no PV control interface/, `${action} is refused`);
  }
  t.equal(await bed.host.xenstore.tryRead(`/local/domain/${bare.domid}/control/shutdown`), '', 'and nothing was written');
  t.match(await bed.host.control('destroy', 'bare'), /destroyed/, 'destroy still works');
});

for (const how of ['poweroff', 'halt'] as const) {
  t.test(`${how}: devices close after what is in flight, and the domain is destroyed`, async (t) => {
    const bed = await startBed(t);
    const domid = bed.guest();
    const written = await bed.runJob({ id: 'w', kind: 'write', count: 500, depth: 32 });
    t.equal(written.acked, 500);
    const message = await bed.host.control('shutdown', 'guest', { halt: how === 'halt' });
    t.match(message, how === 'halt' ? /halted/ : /powered off/, message);
    t.equal(bed.host.platform.domainInfo(domid), undefined, 'the domain is gone');
    t.equal(await bed.host.xenstore.tryRead(`/local/domain/${domid}/name`), undefined, 'and its home');
    t.equal(await bed.host.xenstore.tryRead(`${devicePaths(bed.disk()).backend}/state`), undefined, 'and the backend');
    t.equal(openOn(bed.image), 0, 'the image is closed');
    t.same(wrongBlocks(bed.image, 500), [], 'every write is in the image');
  });
}

t.test('reboot: the domain starts again with the same devices and the same data', async (t) => {
  const bed = await startBed(t);
  const before = bed.host.platform.domainInfo(bed.guest())!.uniqueId;
  await bed.runJob({ id: 'w', kind: 'write', count: 300, depth: 16 });
  const message = await bed.host.control('reboot', 'guest');
  t.match(message, /rebooted; it runs again as domain \d+/, message);
  t.not(bed.host.platform.domainInfo(bed.guest())?.uniqueId, before, 'a new domain (the old one was destroyed)');
  t.ok(await bed.connected(), 'the disk connects again');
  const verified = await bed.runJob({ id: 'v', kind: 'verify', count: 300, depth: 16 });
  t.same({ acked: verified.acked, mismatches: verified.mismatches }, { acked: 300, mismatches: 0 }, 'and reads what was written');
});

t.test('crash, written by a bare xenstore client: the domain ends at once', async (t) => {
  const bed = await startBed(t);
  const domid = bed.guest();
  const destroyed = new Promise<string>((resolve) => bed.host.lifecycle.on('destroyed', (gone: number, reason: string) => gone === domid && resolve(reason)));
  await bed.host.xenstore.write(`/local/domain/${domid}/control/shutdown`, 'crash');
  t.equal(await destroyed, 'crash', 'it shut down as crashed and the toolstack destroyed it');
});

t.test('poweroff written by a bare xenstore client does what the command does', async (t) => {
  const bed = await startBed(t);
  const domid = bed.guest();
  const destroyed = new Promise<string>((resolve) => bed.host.lifecycle.on('destroyed', (gone: number, reason: string) => gone === domid && resolve(reason)));
  await bed.host.xenstore.write(`/local/domain/${domid}/control/shutdown`, 'poweroff');
  t.equal(await destroyed, 'poweroff');
  t.equal(openOn(bed.image), 0, 'the image is closed');
});

t.test('suspend and resume with hundreds of requests in flight: each is done exactly once', async (t) => {
  const bed = await startBed(t);
  const COUNT = 4000;
  const written = await bed.runJob({ id: 'w', kind: 'write', count: COUNT, depth: 256 }, async () => {
    await writing(bed, 500);
    const suspended = await bed.host.control('suspend', 'guest');
    t.match(suspended, /suspended; 1 device\(s\) released/, suspended);
    t.equal(bed.host.platform.domainInfo(bed.guest())?.shutdownReason, 'suspend', 'the domain is held, suspended');
    t.equal(openOn(bed.image), 0, 'the backend closed the image');
    const resumed = await bed.host.control('resume', 'guest');
    t.match(resumed, /resumed; 1 device\(s\) reconnected/, resumed);
  });
  t.same(
    { acked: written.acked, errors: written.errors, settledTwice: written.settledTwice },
    { acked: COUNT, errors: 0, settledTwice: 0 },
    'every write completed once, without an error',
  );
  t.same(wrongBlocks(bed.image, COUNT), [], 'block by block, the image holds every write');
  const verified = await bed.runJob({ id: 'v', kind: 'verify', count: COUNT, depth: 64 });
  t.same({ acked: verified.acked, mismatches: verified.mismatches }, { acked: COUNT, mismatches: 0 }, 'and the guest reads it back');
  await t.rejects(bed.host.control('resume', 'guest'), /is not suspended/, 'a running domain is not resumed');
});

t.test('migration: the source backend closes the image before the destination opens it, nothing is stale or lost', async (t) => {
  const bed = await startBed(t, ['driver2']);
  const COUNT = 3000;
  let openWhileSuspended = -1;
  const written = await bed.runJob({ id: 'w', kind: 'write', count: COUNT, depth: 128 }, async () => {
    await writing(bed, 400);
    await bed.host.control('suspend', 'guest');
    openWhileSuspended = openOn(bed.image);
    // What the destination reads when it opens the image: every acknowledged write is there.
    await bed.host.control('resume', 'guest', { backend: 'driver2' });
  });
  t.equal(openWhileSuspended, 0, 'between suspend and resume nothing has the image open');
  const backend = await bed.host.xenstore.tryRead(`/local/domain/${bed.guest()}/device/vbd/51712/backend`);
  t.match(backend, /^\/local\/domain\/\d+\/backend\/vbd\//, 'the frontend names its new backend');
  t.equal(bed.host.findDomain('driver2').domid, Number(/^\/local\/domain\/(\d+)\//.exec(backend!)![1]), 'in the destination driver domain');
  t.same(
    { acked: written.acked, errors: written.errors, settledTwice: written.settledTwice },
    { acked: COUNT, errors: 0, settledTwice: 0 },
    'no request lost or done twice',
  );
  const verified = await bed.runJob({ id: 'v', kind: 'verify', count: COUNT, depth: 64 });
  t.same({ acked: verified.acked, mismatches: verified.mismatches }, { acked: COUNT, mismatches: 0 }, 'every write acknowledged before the suspend reads back');
});

t.test('a driver domain powered off under load: nothing acknowledged is lost', async (t) => {
  const bed = await startBed(t, ['driver2']);
  const COUNT = 3000;
  let acknowledged = 0;
  let wrong: number[] = [];
  const written = await bed.runJob({ id: 'w', kind: 'write', count: COUNT, depth: 64 }, async () => {
    await writing(bed, 500);
    const message = await bed.host.control('shutdown', 'driver');
    t.match(message, /powered off/, message);
    t.equal(openOn(bed.image), 0, 'the driver domain released the image');
    // Exactly the writes the guest was told were done, when the driver domain had gone.
    const bitmap = Buffer.from((await bed.host.xenstore.tryRead(`/local/domain/${bed.guest()}/data/disk-acked`)) ?? '', 'base64');
    const acked = (i: number) => ((bitmap[i >> 3] ?? 0) & (1 << (i & 7))) !== 0;
    for (let i = 0; i < COUNT; i++) if (acked(i)) acknowledged++;
    wrong = wrongBlocks(bed.image, COUNT, acked);
    t.equal(
      await bed.host.xenstore.tryRead(`/local/domain/${bed.guest()}/device/vbd/51712/state`),
      String(XenbusState.Closed),
      'the frontend closed, holding what was in flight',
    );
    // The guest moves to another driver domain and finishes.
    await bed.host.control('suspend', 'guest');
    await bed.host.control('resume', 'guest', { backend: 'driver2' });
  });
  t.ok(acknowledged >= 500, `${acknowledged} writes were acknowledged before the driver domain went`);
  t.same(wrong, [], 'each of them is in the image');
  t.same(
    { acked: written.acked, errors: written.errors, settledTwice: written.settledTwice },
    { acked: COUNT, errors: 0, settledTwice: 0 },
    'the rest completed on the next driver domain, once each',
  );
  t.same(wrongBlocks(bed.image, COUNT), [], 'and the image holds them all');
});
