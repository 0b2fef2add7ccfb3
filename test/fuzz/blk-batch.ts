/**
 * The block fuzzer's batches (the domains they share are in
 * blk-testbed.ts): a hostile guest connects a fresh disk by hand in every
 * batch and fuzzes its ring against the real blkback, and a well-behaved
 * guest's blkfront must still read back what it writes on a fresh disk
 * after every batch.
 *
 * A batch: an image file of a random size (not always a whole number of
 * sectors), a ring of 1 to 16 pages in either ABI, a read-only disk now and
 * then, discard on or off, O_DIRECT or not; then bursts of requests with
 * their responses checked (blk-frontend.ts), stale slots, notification
 * storms, and in some batches a request producer moved more than a ring
 * ahead, which must cut the frontend off cleanly. At the end the disk is
 * unplugged and the backend must have let go of every page, written
 * nothing it had no writable grant for nor any sector no READ asked for,
 * and nothing outside the image.
 */
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SECTOR_SIZE, VDisk, type BlkifAbi } from '../../shared/blkif.js';
import { devicePaths, diskDevice, type DeviceSpec } from '../../host/toolstack/devices.js';
import { PAGE_SIZE } from '../../shared/platform.js';
import { XenbusState } from '../../xenbus/state.js';
import type { TestDomain } from '../helpers/xenbus.js';
import type { DiskPolicy } from './blk-model.js';
import { HostileFrontend, type Notification } from './blk-frontend.js';
import { HostilePages } from './blk-pages.js';
import { BlkRequestGenerator, type PlannedRequest } from './blk-requests.js';
import { HostileRing } from './blk-ring.js';
import { goodFrontendServed, imageUntouched, overrunRing, stillConnected, unplugHostile } from './blk-checks.js';
import { openTestbed, RESPONSE_TIMEOUT_MS, type Testbed } from './blk-testbed.js';
import { format, type LogCapture } from './log-capture.js';
import { Prng, type Seed } from './prng.js';
import type { OpenTarget } from './runner.js';
import { FuzzViolation, Trail } from './violation.js';

const { Initialising, InitWait, Initialised, Connected } = XenbusState;

/** Steps (bursts and the like) of a batch. */
const STEPS = 24;
/** The most requests in one burst (a ring of one page holds 32). */
const MAX_BURST = 24;
/** Share of batches that end by moving the request producer beyond the ring. */
const OVERRUN_RATE = 0.2;

/** Sets up the domains once; every batch plugs its own disks. */
export const openBlkifFuzz: OpenTarget = async (logs) => {
  const testbed = await openTestbed();
  let disks = 0;
  return {
    batch: (seed) => runBlkifBatch(testbed, seed, disks++, logs),
    close: () => testbed.close(),
  };
};

/** What a batch's disk and ring are like. */
interface BatchShape {
  readonly abi: BlkifAbi;
  readonly order: number;
  readonly readOnly: boolean;
  readonly discard: boolean;
  readonly directIoSafe: boolean;
  readonly persistent: boolean;
  readonly imageBytes: number;
  readonly mutationRate: number;
  readonly overrunAt: number | undefined;
}

function shapeOf(rng: Prng): BatchShape {
  // Mostly room for requests to succeed; sometimes so small that most run past the end.
  const sectors = rng.chance(0.8) ? rng.pick([255, 2048, 4096, rng.int(64, 8192)]) : rng.pick([1, 7, 8, 9, 64]);
  return {
    abi: rng.chance(0.75) ? 'x86_64' : 'x86_32',
    order: rng.weighted([
      [4, 0],
      [1, 1],
      [1, 2],
      [1, 4],
    ]),
    readOnly: rng.chance(0.15),
    discard: rng.chance(0.8),
    directIoSafe: rng.chance(0.3),
    persistent: rng.chance(0.3),
    // Now and then a tail that is not a whole sector: outside the disk, never to be written.
    imageBytes: sectors * SECTOR_SIZE + (rng.chance(0.25) ? rng.int(1, SECTOR_SIZE - 1) : 0),
    mutationRate: rng.pick([0.1, 0.3, 0.6]),
    overrunAt: rng.chance(OVERRUN_RATE) ? rng.int(1, STEPS - 1) : undefined,
  };
}

/** xvda, ..., xvdz, xvdaa, ...: a fresh disk name per batch. */
function vdevName(n: number): string {
  let letters = '';
  for (let i = n + 1; i > 0; i = Math.floor((i - 1) / 26)) letters = String.fromCharCode(97 + ((i - 1) % 26)) + letters;
  return `xvd${letters}`;
}

async function runBlkifBatch(t: Testbed, seed: Seed, diskNumber: number, logs: LogCapture): Promise<string> {
  const rng = new Prng(seed);
  logs.reset();
  const shape = shapeOf(rng);
  const trail = new Trail();
  trail.add(`disk: ${JSON.stringify(shape)}`);
  const image = await makeImage(join(t.workdir, `disk-${diskNumber}.img`), shape.imageBytes, rng);
  const vdev = vdevName(diskNumber);
  const spec = diskDevice({
    frontendDomid: t.hostile.domid,
    backendDomid: t.driver.domid,
    vdev,
    target: image.path,
    readOnly: shape.readOnly,
    discard: shape.discard,
    directIoSafe: shape.directIoSafe,
  });
  await t.bed.plug(spec);
  await t.bed.waitStates(spec, Initialising, InitWait, RESPONSE_TIMEOUT_MS);

  const { domain, events } = t.hostile.kernel;
  // The ring first: the pages' grants, the ended ones last, must be the batch's last grants.
  const ring = new HostileRing(domain, events, t.driver.domid, shape.order, shape.abi);
  const pages = new HostilePages(domain, t.driver.domid, t.good.domid, ring.grefs, rng.fork('pages'));
  let fuzzed: { frontend: HostileFrontend; overrun: boolean };
  try {
    fuzzed = await fuzzDisk(t, spec, ring, pages, shape, rng, trail);
  } catch (err) {
    // The failure is what gets reported; the unplug is only a courtesy.
    await unplugHostile(t, spec).catch(() => {});
    throw err;
  }
  await unplugHostile(t, spec);
  if (!ring.release()) throw trail.violation('the ring is still mapped after the device closed');
  try {
    pages.release();
  } catch (err) {
    throw err instanceof FuzzViolation ? trail.violation(err.message) : err;
  }
  await imageUntouched(image.path, image.bytes, trail);
  await rm(image.path, { force: true });
  await goodFrontendServed(t, vdev, rng.fork('good'), trail);
  const internal = logs.internalErrors;
  if (internal.length > 0) throw trail.violation(`internal errors were logged: ${internal.map(format).join(' | ')}`);
  const { frontend, overrun } = fuzzed;
  const statuses = [...frontend.statuses].map(([name, n]) => `${n} ${name}`).join(', ');
  const leftOut = frontend.leftOut > 0 ? `, ${frontend.leftOut} left out for reading into the ring` : '';
  return `${frontend.sent} requests on a ${1 << shape.order}-page ${shape.abi} ring (${statuses})${leftOut}${overrun ? ', then the producer overran the ring' : ''}`;
}

/** Connects the hostile disk by hand and fuzzes its ring for a batch's steps. */
async function fuzzDisk(
  t: Testbed,
  spec: DeviceSpec,
  ring: HostileRing,
  pages: HostilePages,
  shape: BatchShape,
  rng: Prng,
  trail: Trail,
): Promise<{ frontend: HostileFrontend; overrun: boolean }> {
  await publishFrontend(t.hostile, spec, { ...ring.keys(), ...(shape.persistent ? { 'feature-persistent': 1 } : {}) });
  await t.bed.waitStates(spec, Initialised, Connected, RESPONSE_TIMEOUT_MS);
  const disk = await diskPolicy(t, spec);
  const expectedSectors = BigInt(Math.floor(shape.imageBytes / SECTOR_SIZE));
  if (disk.sectors !== expectedSectors) throw trail.violation(`the backend published ${disk.sectors} sectors for an image of ${shape.imageBytes} bytes`);

  const frontend = new HostileFrontend(ring, pages, disk, shape.abi, trail, RESPONSE_TIMEOUT_MS);
  const generator = new BlkRequestGenerator(rng.fork('requests'), pages, { sectors: Number(disk.sectors), maxIndirectSegments: disk.maxIndirectSegments }, shape.mutationRate);
  const steps = rng.fork('steps');
  for (let step = 0; step < STEPS; step++) {
    if (step === shape.overrunAt) {
      await overrunRing(t, spec, frontend, ring, steps, trail);
      return { frontend, overrun: true };
    }
    await fuzzStep(frontend, generator, steps, ring);
  }
  await stillConnected(t, spec, frontend, trail);
  return { frontend, overrun: false };
}

/** An image of `size` bytes: a random page over and over, so that every byte (the tail past the last sector too) is worth comparing. */
async function makeImage(path: string, size: number, rng: Prng): Promise<{ path: string; bytes: Buffer }> {
  const pattern = rng.bytes(PAGE_SIZE);
  const bytes = Buffer.alloc(size);
  for (let at = 0; at < size; at += PAGE_SIZE) pattern.copy(bytes, at, 0, Math.min(PAGE_SIZE, size - at));
  const file = await open(path, 'w');
  await file.write(bytes, 0, bytes.length, 0);
  await file.close();
  return { path, bytes };
}

/** The frontend's keys and Initialised, in one transaction, as a frontend publishes them. */
async function publishFrontend(guest: TestDomain, spec: DeviceSpec, keys: Record<string, string | number>): Promise<void> {
  const { frontend } = devicePaths(spec);
  const xs = guest.ctx.xs;
  await xs.transaction(async (tx) => {
    for (const [key, value] of Object.entries(keys)) await xs.write(`${frontend}/${key}`, String(value), { tx });
    await xs.write(`${frontend}/state`, String(Initialised), { tx });
  });
}

/** What the backend published for the disk. */
async function diskPolicy(t: Testbed, spec: DeviceSpec): Promise<DiskPolicy> {
  const { backend } = devicePaths(spec);
  const key = async (name: string) => t.bed.dom0.tryRead(`${backend}/${name}`);
  const info = Number((await key('info')) ?? 0);
  return {
    sectors: BigInt((await key('sectors')) ?? -1),
    readOnly: (info & VDisk.READONLY) !== 0,
    discard: (await key('feature-discard')) === '1',
    flush: (await key('feature-flush-cache')) === '1',
    barrier: (await key('feature-barrier')) === '1',
    maxIndirectSegments: Number((await key('feature-max-indirect-segments')) ?? 0),
  };
}

/** One step: a burst of requests (waited for or not), stale slots, or a notification storm. */
async function fuzzStep(frontend: HostileFrontend, generator: BlkRequestGenerator, rng: Prng, ring: HostileRing): Promise<void> {
  const kind = rng.weighted<'burst' | 'stale' | 'storm'>([
    [90, 'burst'],
    [6, 'stale'],
    [4, 'storm'],
  ]);
  const notification = rng.weighted<Notification>([
    [6, 'needed'],
    [2, 'always'],
    [1, 'storm'],
    [1, 'later'],
  ]);
  const stormSize = rng.int(20, 400);
  const wait = rng.chance(0.5);
  switch (kind) {
    case 'burst': {
      const count = rng.int(1, Math.min(MAX_BURST, ring.size));
      const planned: PlannedRequest[] = [];
      for (let i = 0; i < count; i++) {
        // An indirect page is rewritten only once nothing outstanding (or planned) names it.
        const page = generator.nextIndirectPage();
        if (frontend.inUse(page.gref) || planned.some((p) => p.indirect?.page === page)) await flushOut(frontend, planned, notification, stormSize);
        planned.push(generator.next());
      }
      if (frontend.freeSlots < planned.length) await frontend.settle();
      frontend.send(planned, notification, stormSize);
      break;
    }
    case 'stale': {
      if (frontend.freeSlots < ring.size) await frontend.settle();
      frontend.sendStale(rng.int(1, Math.min(8, ring.size)), notification, stormSize);
      break;
    }
    case 'storm':
      frontend.storm(stormSize);
      break;
  }
  if (wait) await frontend.settle();
  else frontend.collect();
}

/** Sends what is planned so far and waits for everything, so that an indirect page may be written again. */
async function flushOut(frontend: HostileFrontend, planned: PlannedRequest[], notification: Notification, stormSize: number): Promise<void> {
  if (planned.length > 0) {
    if (frontend.freeSlots < planned.length) await frontend.settle();
    frontend.send(planned.splice(0), notification, stormSize);
  }
  await frontend.settle();
}

