/**
 * blkback's per-device counters (Linux blkback's `statistics/`: rd_req,
 * wr_req, f_req, ds_req, rd_sect, wr_sect; plus errors, in flight and a
 * latency histogram), on both I/O engines: they move exactly as a known
 * workload does, in flight goes back to 0, the histogram adds up to the
 * requests answered, a device's counters are the sum of its rings', and
 * they survive the backend reconnecting. On the embedded host the same
 * figures reach the supervisor from the driver domain's kernel worker
 * (Host.blockStats), and survive the guest being saved and resumed; the
 * backend role of `xenmesh backend` answers for its disks the same way.
 *
 * Bad inputs tried here: a read past the end of the disk (a frontend that
 * believes the disk is bigger than the backend published), which the
 * backend answers BLKIF_RSP_ERROR and counts as an error; a driver domain
 * kernel that never answers the query, which Host.blockStats skips.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VbdBackend } from '../blkback/driver.js';
import { answeredRequests, latencyBucket, readRingCounters, RING_COUNTERS_BYTES, RingCounterWriter, zeroCounters } from '../blkback/ring-counters.js';
import { responseOperation } from '../blkback/ring.js';
import { Worker } from 'node:worker_threads';
import type { IoEngine } from '../blkback/ring-messages.js';
import { devicePaths, diskDevice } from '../host/toolstack/devices.js';
import { Host } from '../host/machine/host.js';
import { backendBlockStats } from '../host/machine/backend-role.js';
import { BlkifOp, BlkifStatus, SECTOR_SIZE, type BlkifRequest } from '../shared/blkif.js';
import { setLogSink } from '../shared/log.js';
import { LATENCY_BUCKETS_US, type VbdCounters } from '../shared/vbd-stats.js';
import { waitForState } from '../xenbus/read.js';
import { XenbusState } from '../xenbus/state.js';
import { hostWithBackendRole } from './helpers/backend-role.js';
import { randomBytes, startBlkTestbed, type BlkTestbed } from './helpers/blk.js';
import { DISK_BLOCK_BYTES, DISK_KERNEL, makeImage, runDiskJob } from './helpers/disk-jobs.js';

const ENGINES: readonly IoEngine[] = ['uring', 'pool'];

/** The counters' figures that a workload moves, without the histogram's detail. */
function figures(c: VbdCounters) {
  return {
    readRequests: c.readRequests,
    writeRequests: c.writeRequests,
    flushRequests: c.flushRequests,
    discardRequests: c.discardRequests,
    bytesRead: c.bytesRead,
    bytesWritten: c.bytesWritten,
    errors: c.errors,
    inFlight: c.inFlight,
    answered: answeredRequests(c),
  };
}

/** What moved between two readings. */
function moved(before: VbdCounters, after: VbdCounters) {
  const a = figures(before);
  const b = figures(after);
  return Object.fromEntries(Object.entries(b).map(([key, value]) => [key, key === 'inFlight' ? value : value - a[key as keyof typeof a]])) as ReturnType<typeof figures>;
}

async function connectDisk(blk: BlkTestbed, vdev: string) {
  const spec = blk.disk(vdev);
  const disk = await blk.connect(spec);
  const backend = (): VbdBackend => blk.back.devices.get(`${blk.guest.domid}/${spec.devid}`)!;
  return { spec, disk, backend };
}

t.test('the latency histogram: each bound is the top of its bucket, and beyond the last bound is the last bucket', async (t) => {
  t.equal(latencyBucket(0), 0);
  t.equal(latencyBucket(LATENCY_BUCKETS_US[0]!), 0, 'a latency equal to a bound is in its bucket');
  t.equal(latencyBucket(LATENCY_BUCKETS_US[0]! + 1), 1);
  t.equal(latencyBucket(LATENCY_BUCKETS_US.at(-1)!), LATENCY_BUCKETS_US.length - 1);
  t.equal(latencyBucket(LATENCY_BUCKETS_US.at(-1)! + 1), LATENCY_BUCKETS_US.length, 'beyond the last bound: the unbounded bucket');
  t.equal(zeroCounters().latencyCounts.length, LATENCY_BUCKETS_US.length + 1, 'one count per bucket, and one for the rest');
});

t.test('one ring thread writes, another thread reads: every copy is whole and consistent, across carries into the high word', async (t) => {
  const counters = new SharedArrayBuffer(RING_COUNTERS_BYTES);
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(new URL('./helpers/ring-counters-worker.js', import.meta.url), { workerData: { counters, stop } });
  const finished = new Promise<{ reads: number; failedWrites: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  let copies = 0;
  let inconsistent = 0;
  let last = zeroCounters();
  // Until the writer has carried into the high word of bytesRead many times over.
  while (last.readRequests < 200_000) {
    const c = readRingCounters(counters);
    copies++;
    const consistent =
      c.bytesRead === c.readRequests * 2 ** 31 &&
      c.errors === c.writeRequests &&
      c.bytesWritten === 0 &&
      answeredRequests(c) === c.readRequests + c.writeRequests &&
      c.latencySumUs === c.readRequests * 7 + c.writeRequests * 30 &&
      c.readRequests >= last.readRequests;
    if (!consistent) inconsistent++;
    last = c;
    await new Promise((resolve) => setImmediate(resolve));
  }
  Atomics.store(new Int32Array(stop), 0, 1);
  const { reads, failedWrites } = await finished;
  await worker.terminate();
  t.equal(inconsistent, 0, `none of ${copies} copies read while the writer ran was torn or half updated`);
  const final = readRingCounters(counters);
  t.match(figures(final), { readRequests: reads, writeRequests: failedWrites, errors: failedWrites, bytesRead: reads * 2 ** 31, inFlight: 0 }, `the final copy holds every request (${reads} reads, ${failedWrites} failed writes)`);
  t.ok(final.bytesRead > 2 ** 32 * 1000, 'bytes well past 2^32');
  t.same(final.latencyCounts.slice(0, 2), [reads, failedWrites], 'each request in its latency bucket (7 µs, 30 µs)');
});

t.test('what a ring counts of each answer: an indirect request as its operation, a barrier as a flush with its data, an unknown operation only as an error', async (t) => {
  const counters = new SharedArrayBuffer(RING_COUNTERS_BYTES);
  const writer = new RingCounterWriter(counters);
  writer.answered(BlkifOp.WRITE_BARRIER, BlkifStatus.OKAY, 8192, 1, 0);
  writer.answered(BlkifOp.FLUSH_DISKCACHE, BlkifStatus.EOPNOTSUPP, 0, 1, 0);
  writer.answered(BlkifOp.DISCARD, BlkifStatus.OKAY, 0, 1, 0);
  writer.answered(BlkifOp.READ, BlkifStatus.ERROR, 4096, 1, 0);
  writer.answered(7, BlkifStatus.EOPNOTSUPP, 0, 1, 0);
  writer.answered(BlkifOp.WRITE, BlkifStatus.OKAY, 2 ** 33 + 5, 2 ** 33, 0);
  t.same(
    figures(readRingCounters(counters)),
    { readRequests: 1, writeRequests: 1, flushRequests: 2, discardRequests: 1, bytesRead: 0, bytesWritten: 8192 + 2 ** 33 + 5, errors: 3, inFlight: 0, answered: 6 },
    'a failed read moves no bytes; EOPNOTSUPP is an error; operation 7 is counted only as an error; an amount past 2^32 carries whole',
  );
  t.equal(readRingCounters(counters).latencySumUs, 5 + 2 ** 33, 'and so does a latency past 2^32 µs');
  t.equal(responseOperation({ kind: 'indirect', operation: BlkifOp.INDIRECT, indirectOp: BlkifOp.READ } as BlkifRequest), BlkifOp.READ, 'an indirect request is answered, and counted, as the operation it carries');
});

for (const ioEngine of ENGINES) {
  t.test(`a known workload moves the counters exactly (${ioEngine} engine)`, async (t) => {
    const blk = await startBlkTestbed(t, { back: { ioEngine }, front: { maxQueues: 1 } });
    const { disk, backend } = await connectDisk(blk, 'xvda');
    t.equal((await blk.back.ioEngine())?.engine, ioEngine, `the backend runs the ${ioEngine} engine`);
    const start = backend().counters();

    const READS = 10;
    const READ_SECTORS = 8;
    const WRITES = 5;
    const WRITE_SECTORS = 16;
    for (let i = 0; i < READS; i++) await disk.read(i * 64, READ_SECTORS);
    for (let i = 0; i < WRITES; i++) await disk.write(1000 + i * 64, randomBytes(WRITE_SECTORS * SECTOR_SIZE));
    await disk.flush();
    t.ok(disk.info!.discard, 'the RAM disk offers discard');
    await disk.discard(4096, 64);
    // A frontend that believes the disk is 8 sectors longer than it is: the backend refuses the read past its end.
    const sectors = disk.info!.sectors;
    (disk.info as { sectors: number }).sectors = sectors + 8;
    await t.rejects(disk.read(sectors, 8), 'a read past the end fails');
    (disk.info as { sectors: number }).sectors = sectors;

    const after = backend().counters();
    t.same(
      moved(start, after),
      {
        readRequests: READS + 1,
        writeRequests: WRITES,
        flushRequests: 1,
        discardRequests: 1,
        bytesRead: READS * READ_SECTORS * SECTOR_SIZE,
        bytesWritten: WRITES * WRITE_SECTORS * SECTOR_SIZE,
        errors: 1,
        inFlight: 0,
        answered: READS + 1 + WRITES + 2,
      },
      `${READS} reads of ${READ_SECTORS} sectors and one past the end, ${WRITES} writes of ${WRITE_SECTORS}, a flush and a discard`,
    );
    t.equal(answeredRequests(after), after.readRequests + after.writeRequests + after.flushRequests + after.discardRequests, 'the histogram adds up to the requests answered');
    t.ok(after.latencySumUs >= 0 && Number.isInteger(after.latencySumUs), 'the latency sum is a whole number of microseconds');
    t.equal(backend().totalServed, answeredRequests(after), 'the requests the device served are the ones counted');
  });

  t.test(`several queues: the device's counters are the sum of its rings' (${ioEngine} engine)`, async (t) => {
    const QUEUES = 4;
    const blk = await startBlkTestbed(t, { back: { ioEngine, maxQueues: QUEUES }, front: { maxQueues: QUEUES } });
    const { disk, backend } = await connectDisk(blk, 'xvda');
    const REQUESTS = 64;
    await Promise.all(Array.from({ length: REQUESTS }, (_, i) => (i % 2 === 0 ? disk.read(i * 64, 8) : disk.write(i * 64, randomBytes(8 * SECTOR_SIZE)))));
    const rings = backend().ringCounters();
    const device = backend().counters();
    t.equal(rings.length, QUEUES, `${QUEUES} rings`);
    t.ok(rings.filter((ring) => answeredRequests(ring) > 0).length > 1, `the requests were spread over the rings (${rings.map(answeredRequests).join(', ')})`);
    const sum = (pick: (c: VbdCounters) => number) => rings.reduce((total, ring) => total + pick(ring), 0);
    t.same(
      figures(device),
      {
        readRequests: sum((c) => c.readRequests),
        writeRequests: sum((c) => c.writeRequests),
        flushRequests: sum((c) => c.flushRequests),
        discardRequests: sum((c) => c.discardRequests),
        bytesRead: sum((c) => c.bytesRead),
        bytesWritten: sum((c) => c.bytesWritten),
        errors: sum((c) => c.errors),
        inFlight: sum((c) => c.inFlight),
        answered: sum(answeredRequests),
      },
      'each figure of the device is the sum of its rings',
    );
    t.same(device.latencyCounts, LATENCY_BUCKETS_US.map((_, i) => sum((c) => c.latencyCounts[i]!)).concat(sum((c) => c.latencyCounts.at(-1)!)), 'and so is each bucket');
    t.match(figures(device), { readRequests: REQUESTS / 2, writeRequests: REQUESTS / 2, bytesRead: (REQUESTS / 2) * 8 * SECTOR_SIZE, inFlight: 0 });
  });

  t.test(`the counters survive the backend reconnecting (${ioEngine} engine)`, async (t) => {
    const blk = await startBlkTestbed(t, { back: { ioEngine } });
    const { spec, disk, backend } = await connectDisk(blk, 'xvda');
    for (let i = 0; i < 6; i++) await disk.write(i * 8, randomBytes(8 * SECTOR_SIZE));
    const before = backend().counters();
    t.equal(before.writeRequests, 6, 'six writes before');

    await blk.backBus.suspend();
    await blk.bed.waitStates(spec, XenbusState.Closed, XenbusState.Closing, 10_000);
    t.same(figures(backend().counters()), figures(before), 'the same figures while disconnected');
    t.same(blk.back.blockStats().map((r) => r.counters.writeRequests), [6], 'and the driver reports them');
    await blk.backBus.resume();
    await blk.bed.waitStates(spec, XenbusState.Connected, XenbusState.Connected, 10_000);
    t.equal(backend().connections, 2, 'a second connection');

    for (let i = 0; i < 4; i++) await disk.read(i * 8, 8);
    const after = backend().counters();
    t.same(moved(before, after), { readRequests: 4, writeRequests: 0, flushRequests: 0, discardRequests: 0, bytesRead: 4 * 8 * SECTOR_SIZE, bytesWritten: 0, errors: 0, inFlight: 0, answered: 4 }, 'the second connection counts on from the first');
    const [report] = blk.back.blockStats();
    t.same({ backendDomid: report!.backendDomid, frontendDomid: report!.frontendDomid, devid: report!.devid }, { backendDomid: blk.driver.domid, frontendDomid: blk.guest.domid, devid: spec.devid }, 'the report names the device as the toolstack does');
    t.same(figures(report!.counters), figures(after));
  });
}

t.test('on the embedded host: the driver domain kernels answer for their disks, a silent one is left out, and a saved guest comes back to its counts', async (t) => {
  const logs: string[] = [];
  setLogSink((level, component, message) => void logs.push(`${level} [${component}] ${message}`));
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blk-counters-'));
  const image = join(dir, 'disk.img');
  makeImage(image, 16 * 1024 * 1024);
  const host = new Host({ socket: join(dir, 'socket'), frames: 32768, kernelModule: DISK_KERNEL });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 2048 }, { backDrivers: ['vbd'] });
  const silent = await host.startDomain({ name: 'silent', pages: 1024 }, { backDrivers: ['vbd'] });
  const guest = await host.startDomain({ name: 'guest', pages: 4096 }, { frontDrivers: ['vbd'] });
  const spec = diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev: 'xvda', target: image });
  await host.plugDevice(spec);
  const paths = devicePaths(spec);
  const connected = async () => {
    const states = await Promise.all([paths.frontend, paths.backend].map((p) => waitForState(host.xenstore, `${p}/state`, [XenbusState.Connected], 20_000)));
    t.same(states, [XenbusState.Connected, XenbusState.Connected], 'both ends Connected');
  };
  await connected();

  const COUNT = 200;
  const written = await runDiskJob(host.xenstore, guest.domid, { id: 'write', kind: 'write', count: COUNT, depth: 8 }, undefined, 60_000);
  t.same({ acked: written.acked, errors: written.errors }, { acked: COUNT, errors: 0 }, `the guest wrote ${COUNT} blocks`);
  const [report, ...others] = await host.blockStats();
  t.same(others, [], 'one disk on the host');
  t.same({ backendDomid: report!.backendDomid, frontendDomid: report!.frontendDomid, devid: report!.devid }, { backendDomid: driver.domid, frontendDomid: guest.domid, devid: spec.devid }, 'named as the toolstack names it');
  t.match(figures(report!.counters), { writeRequests: COUNT, bytesWritten: COUNT * DISK_BLOCK_BYTES, errors: 0, inFlight: 0 }, 'every write counted, with its bytes');

  await host.xenstore.write(`/local/domain/${silent.domid}/data/stall-queries`, 'now');
  const stalledSeen = async () => {
    // The kernel takes the flag from its watch: asked until it stops answering.
    for (;;) {
      const asked = await host.supervisor.query('kernel:silent', 'block-stats', 200).then(() => true, () => false);
      if (!asked) return;
    }
  };
  await stalledSeen();
  const withSilent = await host.blockStats(500);
  t.same(withSilent.map((r) => r.backendDomid), [driver.domid], 'a kernel that does not answer is left out; the others are reported');
  t.ok(logs.some((line) => /block statistics: kernel:silent left out: .*did not answer/.test(line)), 'and the log says which was left out');

  const suspended = await host.control('suspend', 'guest');
  t.match(suspended, /suspended; 1 device\(s\) released/, suspended);
  const resumed = await host.control('resume', 'guest');
  t.match(resumed, /resumed; 1 device\(s\) reconnected/, resumed);
  await connected();
  const verified = await runDiskJob(host.xenstore, guest.domid, { id: 'verify', kind: 'verify', count: COUNT, depth: 8 }, undefined, 60_000);
  t.same({ acked: verified.acked, mismatches: verified.mismatches, errors: verified.errors }, { acked: COUNT, mismatches: 0, errors: 0 }, 'the guest reads its blocks back after the resume');
  const [after] = await host.blockStats(500);
  t.match(
    figures(after!.counters),
    { writeRequests: COUNT, bytesWritten: COUNT * DISK_BLOCK_BYTES, readRequests: COUNT, bytesRead: COUNT * DISK_BLOCK_BYTES, errors: 0, inFlight: 0 },
    'the counts from before the suspend carried on: the writes, then the reads',
  );
});

t.test('the backend role (xenmesh backend) answers for the disks it serves', async (t) => {
  const { host, supervisor, backend } = await hostWithBackendRole(t);
  t.same(await backendBlockStats(supervisor), [], 'nothing served yet');
  const guest = await host.startDomain({ name: 'guest', pages: 4096 }, { frontDrivers: ['vbd'] });
  const spec = diskDevice({ frontendDomid: guest.domid, backendDomid: backend.domid, vdev: 'xvda', target: 'memory:16777216' });
  await host.plugDevice(spec);
  const states = await Promise.all([devicePaths(spec).frontend, devicePaths(spec).backend].map((p) => waitForState(host.xenstore, `${p}/state`, [XenbusState.Connected], 20_000)));
  t.same(states, [XenbusState.Connected, XenbusState.Connected], 'both ends Connected');
  const COUNT = 50;
  const written = await runDiskJob(host.xenstore, guest.domid, { id: 'write', kind: 'write', count: COUNT, depth: 4 }, undefined, 60_000);
  t.equal(written.acked, COUNT, `the guest wrote ${COUNT} blocks`);
  const reports = await backendBlockStats(supervisor);
  t.same(reports.map((r) => [r.backendDomid, r.frontendDomid, r.devid]), [[backend.domid, guest.domid, spec.devid]], 'one disk, named as the toolstack names it');
  t.match(figures(reports[0]!.counters), { writeRequests: COUNT, bytesWritten: COUNT * DISK_BLOCK_BYTES, errors: 0, inFlight: 0 }, 'every write counted');
});
