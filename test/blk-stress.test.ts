/**
 * Multi-queue block I/O under stress, through blkfront and blkback as a
 * domain uses them: 1 to 4 queues × rings of 1, 2, 4 and 16 pages, at a
 * depth of 1 (every request alone: each end is signalled, and asks to be
 * signalled, at every ring index), of a ring's worth, and of more than all
 * the rings hold (the frontend waits for room). Random reads, writes and
 * flushes, every read checked against a model of the disk.
 *
 * The rings' free-running indexes start just below 2^32 (FRONT_RING_ATTACH
 * allows any start), so that every ring crosses the wrap-around, and
 * enough requests go through each ring for its indexes to take every value
 * modulo its size. Each end takes its events late, by random amounts, so
 * that it meets the other at every point of its loops.
 *
 * In the middle of the load the driver domain is suspended and resumed:
 * the backend answers what it took, closes and opens again, the frontend
 * sends the rest again; the backend's count of requests answered must then
 * equal the operations made, so that none ran twice. A watchdog names any
 * request unanswered for too long (its ring, id and index) instead of
 * letting the test hang.
 *
 * Then a backend restarts while its guest is paused, unseen by the
 * frontend, and finds the rings in use: it must carry on from where they
 * stand.
 *
 * BLK_STRESS_SECONDS=N soaks for N seconds over random configurations
 * after the matrix; BLK_STRESS_SEED replays one seed, BLK_STRESS_ONLY=QxP
 * one configuration; BLK_STRESS_STALL_MS sets the watchdog's patience.
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { devicePaths, type DeviceSpec } from '../host/toolstack/devices.js';
import { waitForState } from '../xenbus/read.js';
import { SECTOR_SIZE, SECTORS_PER_PAGE, layoutOf } from '../shared/blkif.js';
import { ringSize } from '../shared/ring.js';
import { XenbusState } from '../xenbus/state.js';
import { DiskModel, delayEvents, runLoad, type LoadOptions } from './helpers/blk-stress.js';
import { startBlkTestbed, type BlkTestbed } from './helpers/blk.js';
import { captureLogs } from './helpers/logs.js';
import { Prng, freshSeed, parseSeed } from './fuzz/prng.js';

const QUEUES = [1, 2, 3, 4];
const RING_PAGES = [1, 2, 4, 16];
/** The test disk: 16 MiB, an image file (a RAM disk would start empty at each reconnection). */
const DISK_BYTES = 16 * 1024 * 1024;
/** Segments per request the frontend asks for (indirect requests), so operations of up to 32 pages fit one request. */
const SEGMENTS = 32;
/** Guest memory: room for the data pages of more requests than four 16-page rings hold. */
const GUEST_PAGES = 6144;
/** Machine memory: the guest, the driver domain and xenstored's. */
const FRAMES = 16384;
/** 2^32: where the free-running indexes wrap. */
const INDEX_WRAP = 2 ** 32;

const soakSeconds = Number(process.env.BLK_STRESS_SECONDS ?? 0);
/** BLK_STRESS_ONLY=QxP runs only Q queues with rings of P pages (to replay one configuration). */
const only = process.env.BLK_STRESS_ONLY;
const seed = process.env.BLK_STRESS_SEED ? parseSeed(process.env.BLK_STRESS_SEED) : freshSeed();

interface Config {
  readonly queues: number;
  readonly ringPages: number;
  readonly persistent: boolean;
}

/** How long an operation may go unanswered on a loaded machine before the watchdog calls it stuck. */
const STALL_MS = Number(process.env.BLK_STRESS_STALL_MS ?? 15_000);

/** Slots of one ring of this many pages (x86_64 entries). */
const slotsOf = (pages: number) => ringSize(pages, layoutOf('x86_64').entryBytes);

async function connect(t: Test, config: Config, start: number, prng: Prng): Promise<{ blk: BlkTestbed; spec: DeviceSpec; devid: string; backendId: string }> {
  const blk = await startBlkTestbed(t, {
    front: { maxQueues: config.queues, maxRingPageOrder: Math.log2(config.ringPages), maxIndirectSegments: SEGMENTS, persistent: config.persistent, firstRingIndex: start },
    back: { maxQueues: 4, maxRingPageOrder: 4 },
    frames: FRAMES,
    guestPages: GUEST_PAGES,
  });
  // Before any ring's event channel is bound: every handler is late.
  const restore = [delayEvents(blk.guest.kernel.events, prng.fork('guest')), delayEvents(blk.driver.kernel.events, prng.fork('driver'))];
  t.teardown(() => restore.forEach((r) => r()));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-blk-stress-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'disk.img');
  writeFileSync(image, '');
  truncateSync(image, DISK_BYTES);
  const spec = blk.disk('xvda', image);
  await blk.connect(spec);
  return { blk, spec, devid: String(spec.devid), backendId: `${blk.guest.domid}/${spec.devid}` };
}

/**
 * One configuration: the three depths in turn, then the deepest again with
 * the driver domain suspended and resumed in the middle. `opsScale` > 1
 * runs longer (the soak).
 */
async function stress(t: Test, config: Config, prng: Prng, logs: string[], opsScale = 1): Promise<void> {
  const slots = slotsOf(config.ringPages);
  // A ring and a half before the wrap: the first depth crosses it.
  const start = INDEX_WRAP - slots - (slots >> 1) - 3;
  const { blk, spec, devid, backendId } = await connect(t, config, start, prng);
  const frontend = blk.front.devices.get(devid)!;
  const disk = frontend.disk;
  const negotiated = frontend.negotiated!;
  t.same({ queues: negotiated.queues, ringPages: negotiated.ringPages }, { queues: config.queues, ringPages: config.ringPages }, 'the rings are as asked');

  const model = new DiskModel(DISK_BYTES / SECTOR_SIZE);
  const backend = () => blk.back.devices.get(backendId)!;
  const maxSectors = negotiated.segmentsPerRequest * SECTORS_PER_PAGE;
  // Every ring sees each of its indexes at depth 1, and the wrap.
  const perRing = Math.ceil((slots + (slots >> 1) + 8) * opsScale);
  const deep = slots * config.queues + slots;
  const reconnections = 2;
  let reconnected = 0;
  const reconnect = async () => {
    await blk.backBus.suspend();
    // The frontend lets go of its rings before the backend comes back.
    await blk.bed.waitStates(spec, XenbusState.Closed, XenbusState.Closing, 10_000);
    await blk.backBus.resume();
    await blk.bed.waitStates(spec, XenbusState.Connected, XenbusState.Connected, 10_000);
    reconnected++;
  };
  const phases: { name: string; options: LoadOptions }[] = [
    { name: 'depth 1', options: { ops: perRing * config.queues, depth: 1, maxSectors } },
    { name: `depth ${slots} (a ring's worth)`, options: { ops: Math.ceil(2 * slots * config.queues * opsScale), depth: slots, maxSectors } },
    {
      // The rings full, the frontend holding the rest, and the backend closing and opening again twice meanwhile.
      name: `depth ${deep} (more than the rings hold), the driver domain suspended and resumed twice`,
      options: {
        ops: Math.ceil(2 * deep * opsScale),
        depth: deep,
        maxSectors,
        midway: {
          after: Math.floor(deep / 2),
          action: async () => {
            for (let i = 0; i < reconnections; i++) await reconnect();
          },
        },
      },
    },
  ];

  for (const phase of phases) {
    const servedBefore = backend().totalServed;
    const logStart = logs.length;
    const result = await runLoad(disk, model, prng.fork(phase.name), phase.options, () => frontend.ringReports(), STALL_MS).catch(async (err: Error) => {
      // What both ends did meanwhile, and what the frontend published.
      const front = `/local/domain/${blk.guest.domid}/device/vbd/${devid}`;
      const keys = await Promise.all(
        [...Array(config.queues).keys()].map(async (q) => `${q}: ${await blk.bed.dom0.read(`${front}/${config.queues > 1 ? `queue-${q}/` : ''}event-channel`).catch(() => '?')}`),
      );
      throw new Error(`${err.message}\nevent-channel keys ${keys.join(', ')}\n${logs.slice(logStart).join('\n')}`);
    });
    // A reconnection may still be settling once the last operation is answered.
    await blk.bed.waitStates(spec, XenbusState.Connected, XenbusState.Connected, 10_000);
    t.same(result.problems, [], `${phase.name}: ${result.ops} operations (${result.reads} reads, ${result.writes} writes, ${result.flushes} flushes), every read as written`);
    t.equal(backend().totalServed - servedBefore, result.ops, `${phase.name}: the backend answered ${result.ops} requests, each once`);
  }
  t.equal(reconnected, reconnections, 'the backend closed and reopened under load');
  t.equal(frontend.connections, 1 + reconnections, 'and the frontend connected again each time');
  const reports = frontend.ringReports();
  t.ok(reports.every((r) => r.unanswered.length === 0), 'nothing is left unanswered on any ring');
}

t.test(`multi-queue stress (seed ${seed}; replay with BLK_STRESS_SEED=${seed})`, async (t) => {
  // The matrix takes about a minute on a loaded machine; the soak as long as asked.
  t.setTimeout((240 + soakSeconds * 2) * 1000);
  const logs = captureLogs(t);
  const prng = new Prng(seed);
  for (const queues of QUEUES) {
    for (const ringPages of RING_PAGES) {
      const config: Config = { queues, ringPages, persistent: prng.chance(0.5) };
      if (only && only !== `${queues}x${ringPages}`) continue;
      await t.test(`${queues} queue(s), rings of ${ringPages} page(s)${config.persistent ? ', persistent grants' : ''}`, (t) => stress(t, config, prng.fork(`${queues}x${ringPages}`), logs));
    }
  }
  if (soakSeconds > 0) {
    const until = Date.now() + soakSeconds * 1000;
    for (let round = 0; Date.now() < until; round++) {
      const config: Config = { queues: prng.pick(QUEUES), ringPages: prng.pick(RING_PAGES), persistent: prng.chance(0.5) };
      await t.test(`soak ${round}: ${config.queues} queue(s), rings of ${config.ringPages} page(s)`, (t) => stress(t, config, prng.fork(`soak ${round}`), logs, 3));
    }
  }
});

/**
 * The driver domain is suspended and resumed while the guest is paused, so
 * that the frontend never sees its backend Closing: when the guest runs
 * again, the backend is Connected once more, and it has connected to the
 * rings the frontend still uses, whose indexes stand wherever the last
 * connection left them, their slots holding that connection's responses.
 * The backend must carry on from where the rings stand (ring.h's
 * BACK_RING_ATTACH); taken from index 0 (BACK_RING_INIT), those old
 * responses read as requests (an id of 2 or 3 is a barrier or a flush),
 * answered out of order, and a real request's answer lands behind the
 * frontend's consumer index: never seen, while later ones complete.
 */
t.test('a backend that restarts unseen by its paused guest carries on from where the rings stand', async (t) => {
  captureLogs(t);
  const config: Config = { queues: 4, ringPages: 1, persistent: true };
  // Indexes from 0, as every frontend starts them: a ring that carried less than a ring's worth looks fresh.
  const { blk, spec, devid, backendId } = await connect(t, config, 0, new Prng(seed).fork('unseen'));
  const frontend = blk.front.devices.get(devid)!;
  const disk = frontend.disk;
  const model = new DiskModel(DISK_BYTES / SECTOR_SIZE);
  const prng = new Prng(seed).fork('unseen load');
  const maxSectors = 8 * SECTORS_PER_PAGE;
  const rings = () => frontend.ringReports();
  // A few requests on each ring, several at once so that their slots hold many ids.
  const before = await runLoad(disk, model, prng, { ops: 8 * config.queues, depth: 8 * config.queues, maxSectors }, rings, STALL_MS);
  t.same(before.problems, [], 'the first connection serves');
  t.ok(frontend.ringReports().every((r) => r.rspCons > 0 && r.rspCons < r.size), 'every ring has carried some requests, less than its size');

  const { platform } = blk.bed.env;
  platform.pauseDomain(blk.guest.domid);
  await blk.backBus.suspend();
  await blk.backBus.resume();
  const backendState = `${devicePaths(spec).backend}/state`;
  await waitForState(blk.bed.dom0, backendState, [XenbusState.Connected], 10_000);
  t.equal(blk.back.devices.get(backendId)!.connections, 2, 'the backend connected again, to the rings the guest had published');
  platform.unpauseDomain(blk.guest.domid);

  const after = await runLoad(disk, model, prng, { ops: 200, depth: 8 * config.queues, maxSectors }, rings, STALL_MS);
  t.same(after.problems, [], 'and every request made since is answered, reads as written');
  t.equal(frontend.connections, 1, 'on the rings of the first connection');
});
