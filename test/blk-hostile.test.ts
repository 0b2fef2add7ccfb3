/**
 * A hostile or broken block frontend, scripted by hand against blkback:
 * every bad request gets blkif.h's own answer (BLKIF_RSP_ERROR or
 * BLKIF_RSP_EOPNOTSUPP, its id and operation echoed), every bad
 * connection gets an error node and the device Closing, and a well-behaved
 * guest served by the same driver domain never notices. The cases:
 *
 * - sector ranges: a read past the last sector; a read that starts inside
 *   the disk and ends past it; a write past the end; sector numbers near
 *   2^64, where sector + count overflows in C (reads, writes, discards);
 * - segment counts: nr_segments 0 for READ and WRITE; 12 (over
 *   BLKIF_MAX_SEGMENTS_PER_REQUEST) and 255 for READ, WRITE, WRITE_BARRIER
 *   and FLUSH_DISKCACHE;
 * - segments: first_sect > last_sect; last_sect 8 (past the page), alone
 *   and after a good segment;
 * - grant references: never granted, ended before the request, granted to
 *   another domain, out of range; a READ into a page granted read-only
 *   (the page is left alone); a bad request merged with a good neighbour
 *   fails alone; a barrier whose data page is not granted;
 * - indirect requests: indirect_op not READ or WRITE; nr_segments 0;
 *   nr_segments above the published feature-max-indirect-segments; an
 *   indirect page never granted; an indirect page whose segments are bad
 *   (last_sect 9, first_sect > last_sect, an ungranted data gref);
 * - unknown operation codes 4 (BLKIF_OP_RESERVED_1), 7 and 255, alone and a
 *   whole ring of them at once;
 * - a read-only disk: WRITE, WRITE_BARRIER with data, indirect WRITE and
 *   DISCARD (ERROR); a disk with discard disabled: DISCARD (EOPNOTSUPP); a
 *   file-backed disk (discard-secure 0): a secure DISCARD, which blkif.h
 *   says is then a plain one, and a DISCARD of no sectors;
 * - after all of those, valid READs and WRITEs (direct and indirect) on the
 *   same hostile ring still work, and every request was answered once;
 * - connect-time attacks, each on a fresh device, each an error node naming
 *   the problem and the backend Closing: protocol 'sparc-abi';
 *   ring-page-order above max-ring-page-order; num-ring-pages 3;
 *   multi-queue-num-queues above multi-queue-max-queues, and 0; a ring-ref
 *   never granted, or granted read-only; ring-page-order 1 without
 *   ring-ref1; no event-channel; an event-channel offered to another
 *   domain, or already bound for another of the guest's disks; two queues
 *   whose second ring-ref is not granted (the first ring is let go too);
 * - a request producer more than a ring ahead of the responses: the device
 *   goes Closing with an error node naming the overrun, and lets go of the
 *   ring.
 *
 * After every group the other guest's disk still reads back what it wrote
 * and is Connected at both ends; at the end the driver domain's back bus
 * still attaches and connects a new disk for it (no worker crashed).
 */
import t, { type Test } from 'tap';
import { responseOperation } from '../blkback/ring.js';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkbackDriver } from '../blkback/driver.js';
import { BlkfrontDriver } from '../blkfront/driver.js';
import { devicePaths, diskDevice, type DeviceSpec, type DiskSpec } from '../host/toolstack/devices.js';
import {
  BLKIF_DISCARD_SECURE,
  BlkifOp,
  BlkifStatus,
  SECTOR_SIZE,
  SECTORS_PER_PAGE,
  VDisk,
  decodeResponse,
  encodeRequest,
  encodeSegments,
  layoutOf,
  type BlkifRequest,
  type BlkifResponse,
  type BlkifSegment,
} from '../shared/blkif.js';
import { GRANT_ENTRIES } from '../shared/embedded/layout.js';
import { PAGE_SIZE } from '../shared/platform.js';
import { FrontRing, SharedRing } from '../shared/ring.js';
import { XenbusState } from '../xenbus/state.js';
import { startBusTestbed, type TestDomain } from './helpers/xenbus.js';

const { Initialising, InitWait, Initialised, Connected, Closing } = XenbusState;
const { OKAY, ERROR, EOPNOTSUPP } = BlkifStatus;
const ABI = 'x86_64';
const ENTRY_BYTES = layoutOf(ABI).entryBytes;
/** The RAM disks' size: 1 MiB, 2048 sectors. */
const DISK_BYTES = 1024 * 1024;
/** How long a response may take before the test calls it lost. */
const RESPONSE_TIMEOUT_MS = 3000;

const statusName = (status: number) => (status === OKAY ? 'OKAY' : status === ERROR ? 'ERROR' : status === EOPNOTSUPP ? 'EOPNOTSUPP' : `status ${status}`);

/** Rejects if `promise` takes longer than `ms`. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Bytes that differ from one call to the next. */
let patternSeed = 1;
function pattern(bytes: number): Uint8Array {
  const seed = patternSeed++;
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return out;
}
const sameBytes = (a: Uint8Array, b: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));

/** A page of the guest's memory granted to `to`, and a view of it. */
function grantPage(guest: TestDomain, to: number, readOnly = false): { pfn: number; gref: number; bytes: Uint8Array } {
  const { domain } = guest.kernel;
  const [pfn] = domain.memory.allocPages(1) as [number];
  return { pfn, gref: domain.grants.grantAccess(to, pfn, readOnly), bytes: domain.memory.page(pfn) };
}

/** A blkif frontend's ring made by hand: a granted page, a FrontRing on it and an unbound port. */
function handMadeRing(guest: TestDomain, backendDomid: number) {
  const { events } = guest.kernel;
  const page = grantPage(guest, backendDomid);
  const ring = FrontRing.create(new SharedRing([page.bytes], ENTRY_BYTES));
  const port = events.channels.allocUnbound(backendDomid);
  let wake: () => void = () => {};
  events.on(port, () => wake());
  const event = () => new Promise<void>((resolve) => (wake = resolve));
  return {
    pfn: page.pfn,
    gref: page.gref,
    ring,
    port,
    notify: () => events.channels.notify(port),
    /** The next `count` responses, waiting for the backend's events (and asking for them) as needed. */
    async responses(count: number): Promise<BlkifResponse[]> {
      const out: BlkifResponse[] = [];
      const entry = new Uint8Array(ENTRY_BYTES);
      for (;;) {
        while (ring.unconsumedResponses() > 0) {
          ring.takeResponse(entry);
          out.push(decodeResponse(ABI, entry));
        }
        if (out.length >= count) return out;
        const next = event();
        if (ring.finalCheckForResponses()) continue;
        await within(next, RESPONSE_TIMEOUT_MS, `waiting for ${count - out.length} of ${count} responses`);
      }
    },
  };
}
type HandRing = ReturnType<typeof handMadeRing>;

/** Publishes keys as the frontend and says Initialised, in one transaction. */
async function publish(guest: TestDomain, spec: DeviceSpec, keys: Record<string, string | number>): Promise<void> {
  const { frontend } = devicePaths(spec);
  const xs = guest.ctx.xs;
  await xs.transaction(async (tx) => {
    for (const [key, value] of Object.entries(keys)) await xs.write(`${frontend}/${key}`, String(value), { tx });
    await xs.write(`${frontend}/state`, String(Initialised), { tx });
  });
}

const seg = (gref: number, firstSect = 0, lastSect = SECTORS_PER_PAGE - 1): BlkifSegment => ({ gref, firstSect, lastSect });

/** Request ids the backend must echo: 64-bit, with bits in both halves. */
let nextId = 0xb10c_0000_0000_0001n;
const id = () => nextId++;

function rw(operation: number, sector: bigint | number, segments: BlkifSegment[], nrSegments = segments.length): BlkifRequest {
  return { kind: 'rw', operation, nrSegments, handle: 0, id: id(), sectorNumber: BigInt(sector), segments };
}
function discard(sector: bigint | number, nrSectors: bigint | number, flag = 0): BlkifRequest {
  return { kind: 'discard', operation: BlkifOp.DISCARD, flag, handle: 0, id: id(), sectorNumber: BigInt(sector), nrSectors: BigInt(nrSectors) };
}
function indirect(indirectOp: number, sector: bigint | number, nrSegments: number, indirectGrefs: number[]): BlkifRequest {
  return { kind: 'indirect', operation: BlkifOp.INDIRECT, indirectOp, nrSegments, handle: 0, id: id(), sectorNumber: BigInt(sector), indirectGrefs };
}

/** A disk of the hostile guest, connected by hand. */
class HostileDisk {
  /** Requests put on the ring. */
  sent = 0;
  constructor(
    readonly spec: DeviceSpec,
    readonly ring: HandRing,
  ) {}

  /** Puts requests on the ring, pushes them, notifies, and returns their responses (in the order they came). */
  async send(...requests: BlkifRequest[]): Promise<BlkifResponse[]> {
    const entry = new Uint8Array(ENTRY_BYTES);
    for (const request of requests) {
      encodeRequest(ABI, request, entry);
      this.ring.ring.putRequest(entry);
    }
    this.ring.ring.pushRequestsAndCheckNotify();
    // A hostile frontend may notify whether or not the backend asked.
    this.ring.notify();
    this.sent += requests.length;
    return this.ring.responses(requests.length);
  }

  /** One request, and its response. */
  async request(request: BlkifRequest): Promise<BlkifResponse> {
    return (await this.send(request))[0]!;
  }
}

// ---- the testbed, shared by every group ---------------------------------------------

const bed = await startBusTestbed();
const back = new BlkbackDriver();
const front = new BlkfrontDriver();
const workdir = await mkdtemp(join(tmpdir(), 'blk-hostile-'));
t.teardown(async () => {
  await back.close();
  await bed.close();
  await rm(workdir, { recursive: true, force: true });
});
const driver = await bed.domain('driver');
const hostile = await bed.domain('hostile');
const bystander = await bed.domain('bystander');
await driver.backBus(back);
await bystander.frontBus(front);

const backendKey = async (spec: DeviceSpec, key: string) => bed.dom0.tryRead(`${devicePaths(spec).backend}/${key}`);
const errorNode = (spec: DeviceSpec) => bed.dom0.tryRead(`/local/domain/${driver.domid}/error/backend/vbd/${spec.frontendDomid}/${spec.devid}/error`);
const hostileDisk = (vdev: string, options: Partial<DiskSpec> = {}) =>
  diskDevice({ frontendDomid: hostile.domid, backendDomid: driver.domid, vdev, target: `memory:${DISK_BYTES}`, ...options });

/** An indirect page of the hostile guest (granted read-only, as the backend maps it) holding these segments. */
function indirectPage(segments: BlkifSegment[]): number {
  const page = grantPage(hostile, driver.domid, true);
  encodeSegments(segments, page.bytes);
  return page.gref;
}

/** Plugs a disk for the hostile guest and waits for the backend's InitWait. */
async function plugHostile(spec: DeviceSpec): Promise<void> {
  await bed.plug(spec);
  await bed.waitStates(spec, Initialising, InitWait);
}

/** Plugs a disk for the hostile guest and connects it by hand, with one single-page ring. */
async function connectByHand(spec: DeviceSpec): Promise<HostileDisk> {
  await plugHostile(spec);
  const ring = handMadeRing(hostile, driver.domid);
  await publish(hostile, spec, { protocol: 'x86_64-abi', 'ring-ref': ring.gref, 'event-channel': ring.port });
  await bed.waitStates(spec, Initialised, Connected);
  return new HostileDisk(spec, ring);
}

/** Sends a request and checks its answer: the status expected, its id and operation echoed. */
async function expectAnswer(t: Test, disk: HostileDisk, what: string, request: BlkifRequest, status: number): Promise<BlkifResponse> {
  const response = await disk.request(request);
  t.same(
    { id: response.id, operation: response.operation, status: statusName(response.status) },
    { id: request.id, operation: responseOperation(request), status: statusName(status) },
    `${what}: ${statusName(status)}, id and operation echoed (an indirect request's own operation, as Linux's blkback answers)`,
  );
  return response;
}

// The well-behaved guest and its disk, written once now and checked after every group.
const goodSpec = diskDevice({ frontendDomid: bystander.domid, backendDomid: driver.domid, vdev: 'xvda', target: `memory:${DISK_BYTES}` });
await bed.plug(goodSpec);
await bed.waitStates(goodSpec, Connected, Connected);
const goodDisk = front.devices.get(String(goodSpec.devid))!.disk;
await goodDisk.whenConnected();
const goodBaseline = pattern(4 * PAGE_SIZE);
await goodDisk.write(0, goodBaseline);
let goodRound = 0;

/** The other guest's disk still holds what it wrote, takes new writes and reads them back, and is Connected. */
async function bystanderUnharmed(t: Test, after: string): Promise<void> {
  const baseline = await goodDisk.read(0, goodBaseline.length / SECTOR_SIZE);
  t.ok(sameBytes(baseline, goodBaseline), `after ${after}: the other guest's disk still holds what it wrote first`);
  const written = pattern(2 * PAGE_SIZE);
  const sector = 64 + 16 * goodRound++;
  await goodDisk.write(sector, written);
  t.ok(sameBytes(await goodDisk.read(sector, written.length / SECTOR_SIZE), written), `after ${after}: the other guest's disk reads back a new write`);
  t.same(await bed.states(goodSpec), { front: 'Connected', back: 'Connected' }, `after ${after}: the other guest's disk is still Connected`);
}

// The hostile guest's main disk (read-write, discard on), and the pages its requests use.
const mainSpec = hostileDisk('xvda');
const main = await connectByHand(mainSpec);
const sectors = Number(await backendKey(mainSpec, 'sectors'));
const maxIndirect = Number(await backendKey(mainSpec, 'feature-max-indirect-segments'));
const data = grantPage(hostile, driver.domid);
const data2 = grantPage(hostile, driver.domid);
const TOP = 2n ** 64n;

t.test('sector ranges past the end of the disk, and sector + count overflowing 64 bits', async (t) => {
  t.equal(sectors, DISK_BYTES / SECTOR_SIZE, 'the backend published the disk size');
  await expectAnswer(t, main, 'a read past the last sector', rw(BlkifOp.READ, sectors, [seg(data.gref)]), ERROR);
  await expectAnswer(t, main, 'a read of the sector after the last', rw(BlkifOp.READ, sectors, [seg(data.gref, 0, 0)]), ERROR);
  await expectAnswer(t, main, 'a read that starts inside the disk and ends past it', rw(BlkifOp.READ, sectors - 4, [seg(data.gref)]), ERROR);
  await expectAnswer(t, main, 'a write that starts inside the disk and ends past it', rw(BlkifOp.WRITE, sectors - 1, [seg(data.gref, 0, 1)]), ERROR);
  await expectAnswer(t, main, 'a read at sector 2^64-1', rw(BlkifOp.READ, TOP - 1n, [seg(data.gref)]), ERROR);
  await expectAnswer(t, main, 'a read at sector 2^64-8 of 8 sectors (the end wraps to 0)', rw(BlkifOp.READ, TOP - 8n, [seg(data.gref)]), ERROR);
  await expectAnswer(t, main, 'a write at sector 2^64-4 of 8 sectors (the end wraps to 4)', rw(BlkifOp.WRITE, TOP - 4n, [seg(data.gref)]), ERROR);
  await expectAnswer(t, main, 'a discard at sector 1 of 2^64-1 sectors (the end wraps to 0)', discard(1, TOP - 1n), ERROR);
  await expectAnswer(t, main, 'a discard at sector 2^64-1 of 2 sectors (the end wraps to 1)', discard(TOP - 1n, 2), ERROR);
  await expectAnswer(t, main, 'a discard past the end', discard(sectors - 8, 16), ERROR);
  await expectAnswer(t, main, 'control: a read of the last sector', rw(BlkifOp.READ, sectors - 1, [seg(data.gref, 0, 0)]), OKAY);
  await bystanderUnharmed(t, 'sector ranges');
});

t.test('segment counts out of range', async (t) => {
  const eleven = Array.from({ length: 11 }, () => seg(data.gref));
  await expectAnswer(t, main, 'a READ with nr_segments 0', rw(BlkifOp.READ, 0, [], 0), ERROR);
  await expectAnswer(t, main, 'a WRITE with nr_segments 0', rw(BlkifOp.WRITE, 0, [], 0), ERROR);
  await expectAnswer(t, main, 'a READ with nr_segments 12 (over BLKIF_MAX_SEGMENTS_PER_REQUEST)', rw(BlkifOp.READ, 0, eleven, 12), ERROR);
  await expectAnswer(t, main, 'a WRITE with nr_segments 12', rw(BlkifOp.WRITE, 0, eleven, 12), ERROR);
  await expectAnswer(t, main, 'a READ with nr_segments 255', rw(BlkifOp.READ, 0, eleven, 255), ERROR);
  await expectAnswer(t, main, 'a WRITE with nr_segments 255', rw(BlkifOp.WRITE, 0, eleven, 255), ERROR);
  await expectAnswer(t, main, 'a WRITE_BARRIER with nr_segments 12', rw(BlkifOp.WRITE_BARRIER, 0, eleven, 12), ERROR);
  await expectAnswer(t, main, 'a FLUSH_DISKCACHE with nr_segments 255', rw(BlkifOp.FLUSH_DISKCACHE, 0, eleven, 255), ERROR);
  await expectAnswer(t, main, 'control: a READ with 11 segments', rw(BlkifOp.READ, 0, eleven), OKAY);
  await bystanderUnharmed(t, 'segment counts');
});

t.test('segments whose sectors are not within their page', async (t) => {
  await expectAnswer(t, main, 'a READ segment with first_sect > last_sect', rw(BlkifOp.READ, 0, [seg(data.gref, 5, 3)]), ERROR);
  await expectAnswer(t, main, 'a WRITE segment with first_sect > last_sect', rw(BlkifOp.WRITE, 0, [seg(data.gref, 7, 0)]), ERROR);
  await expectAnswer(t, main, 'a READ segment with last_sect 8 (past the page)', rw(BlkifOp.READ, 0, [seg(data.gref, 0, 8)]), ERROR);
  await expectAnswer(t, main, 'a WRITE segment with last_sect 8 after a good one', rw(BlkifOp.WRITE, 0, [seg(data.gref), seg(data2.gref, 0, 8)]), ERROR);
  await expectAnswer(t, main, 'a segment with first_sect and last_sect 255', rw(BlkifOp.READ, 0, [seg(data.gref, 255, 255)]), ERROR);
  await expectAnswer(t, main, 'a WRITE_BARRIER segment with last_sect 8', rw(BlkifOp.WRITE_BARRIER, 0, [seg(data.gref, 0, 8)]), ERROR);
  await bystanderUnharmed(t, 'bad segments');
});

t.test('grant references the backend may not use', async (t) => {
  const grants = hostile.kernel.domain.grants;
  const neverGranted = GRANT_ENTRIES - 1;
  const ended = grantPage(hostile, driver.domid);
  t.ok(grants.endAccess(ended.gref), 'a page granted and taken back before the request');
  const elsewhere = grantPage(hostile, bystander.domid);
  const readOnly = grantPage(hostile, driver.domid, true);

  await expectAnswer(t, main, 'a READ through a grant reference never granted', rw(BlkifOp.READ, 0, [seg(neverGranted)]), ERROR);
  await expectAnswer(t, main, 'a WRITE through a grant reference never granted', rw(BlkifOp.WRITE, 0, [seg(neverGranted)]), ERROR);
  await expectAnswer(t, main, 'a READ through a grant reference ended before the request', rw(BlkifOp.READ, 0, [seg(ended.gref)]), ERROR);
  await expectAnswer(t, main, 'a READ through a grant reference granted to another domain', rw(BlkifOp.READ, 0, [seg(elsewhere.gref)]), ERROR);
  await expectAnswer(t, main, 'a WRITE through a grant reference granted to another domain', rw(BlkifOp.WRITE, 0, [seg(elsewhere.gref)]), ERROR);
  await expectAnswer(t, main, 'a READ through a grant reference out of range (GRANT_ENTRIES)', rw(BlkifOp.READ, 0, [seg(GRANT_ENTRIES)]), ERROR);
  await expectAnswer(t, main, 'a WRITE through a grant reference out of range (2^32-1)', rw(BlkifOp.WRITE, 0, [seg(0xffff_ffff)]), ERROR);
  await expectAnswer(t, main, 'a WRITE whose second segment is never granted', rw(BlkifOp.WRITE, 0, [seg(data.gref), seg(neverGranted)]), ERROR);
  await expectAnswer(t, main, 'a WRITE_BARRIER whose data page is never granted', rw(BlkifOp.WRITE_BARRIER, 0, [seg(neverGranted)]), ERROR);

  readOnly.bytes.fill(0x5a);
  await expectAnswer(t, main, 'a READ into a page granted read-only', rw(BlkifOp.READ, 0, [seg(readOnly.gref)]), ERROR);
  t.ok(
    readOnly.bytes.every((b) => b === 0x5a),
    'a READ into a page granted read-only: the page is left alone',
  );
  await expectAnswer(t, main, 'control: a WRITE from a page granted read-only (the backend only reads it)', rw(BlkifOp.WRITE, 8, [seg(readOnly.gref)]), OKAY);

  // Contiguous requests taken together are merged into one operation; the
  // bad one must fail alone, and the good ones around it succeed.
  const good1 = rw(BlkifOp.WRITE, 16, [seg(data.gref)]);
  const bad = rw(BlkifOp.WRITE, 24, [seg(neverGranted)]);
  const good2 = rw(BlkifOp.WRITE, 32, [seg(data2.gref)]);
  const badRead = rw(BlkifOp.READ, 40, [seg(readOnly.gref)]);
  const goodRead = rw(BlkifOp.READ, 48, [seg(data.gref)]);
  const byId = new Map((await main.send(good1, bad, good2, badRead, goodRead)).map((r) => [r.id, r]));
  for (const [what, request, status] of [
    ['merged with a bad neighbour: the first good WRITE', good1, OKAY],
    ['merged with good neighbours: the WRITE through an ungranted reference', bad, ERROR],
    ['merged with a bad neighbour: the second good WRITE', good2, OKAY],
    ['merged with a good neighbour: the READ into a read-only page', badRead, ERROR],
    ['merged with a bad neighbour: the good READ', goodRead, OKAY],
  ] as const) {
    const response = byId.get(request.id);
    t.same(
      response && { operation: response.operation, status: statusName(response.status) },
      { operation: request.operation, status: statusName(status) },
      `${what}: ${statusName(status)}, id and operation echoed`,
    );
  }
  t.ok(
    readOnly.bytes.every((b) => b === 0x5a),
    'merged READ into a page granted read-only: the page is left alone',
  );
  await bystanderUnharmed(t, 'bad grant references');
});

t.test('indirect requests that lie', async (t) => {
  t.equal(maxIndirect, 256, 'the backend published feature-max-indirect-segments');
  const neverGranted = GRANT_ENTRIES - 2;
  const goodPage = indirectPage([seg(data.gref), seg(data2.gref)]);
  await expectAnswer(t, main, 'an indirect request whose indirect_op is WRITE_BARRIER', indirect(BlkifOp.WRITE_BARRIER, 0, 2, [goodPage]), ERROR);
  await expectAnswer(t, main, 'an indirect request whose indirect_op is DISCARD', indirect(BlkifOp.DISCARD, 0, 2, [goodPage]), ERROR);
  await expectAnswer(t, main, 'an indirect request whose indirect_op is INDIRECT', indirect(BlkifOp.INDIRECT, 0, 2, [goodPage]), ERROR);
  await expectAnswer(t, main, 'an indirect request whose indirect_op is 255', indirect(255, 0, 2, [goodPage]), ERROR);
  await expectAnswer(t, main, 'an indirect READ with nr_segments 0', indirect(BlkifOp.READ, 0, 0, [goodPage]), ERROR);
  await expectAnswer(t, main, 'an indirect WRITE with nr_segments 0', indirect(BlkifOp.WRITE, 0, 0, [goodPage]), ERROR);
  await expectAnswer(
    t,
    main,
    `an indirect READ with nr_segments ${maxIndirect + 1} (above feature-max-indirect-segments)`,
    indirect(BlkifOp.READ, 0, maxIndirect + 1, [goodPage]),
    ERROR,
  );
  await expectAnswer(t, main, 'an indirect WRITE with nr_segments 65535', indirect(BlkifOp.WRITE, 0, 0xffff, Array(8).fill(goodPage)), ERROR);
  await expectAnswer(t, main, 'an indirect READ whose indirect page is never granted', indirect(BlkifOp.READ, 0, 2, [neverGranted]), ERROR);
  await expectAnswer(t, main, 'an indirect READ whose indirect gref is out of range', indirect(BlkifOp.READ, 0, 2, [0xffff_ffff]), ERROR);
  const elsewhere = grantPage(hostile, bystander.domid);
  encodeSegments([seg(data.gref)], elsewhere.bytes);
  await expectAnswer(t, main, 'an indirect READ whose indirect page is granted to another domain', indirect(BlkifOp.READ, 0, 1, [elsewhere.gref]), ERROR);
  await expectAnswer(t, main, 'an indirect READ whose segment has last_sect 9', indirect(BlkifOp.READ, 0, 1, [indirectPage([seg(data.gref, 0, 9)])]), ERROR);
  await expectAnswer(
    t,
    main,
    'an indirect WRITE whose second segment has first_sect > last_sect',
    indirect(BlkifOp.WRITE, 0, 2, [indirectPage([seg(data.gref), seg(data2.gref, 6, 2)])]),
    ERROR,
  );
  await expectAnswer(t, main, 'an indirect READ whose data gref is never granted', indirect(BlkifOp.READ, 0, 2, [indirectPage([seg(data.gref), seg(neverGranted)])]), ERROR);
  await expectAnswer(t, main, 'an indirect WRITE whose data gref is granted to another domain', indirect(BlkifOp.WRITE, 0, 1, [indirectPage([seg(elsewhere.gref)])]), ERROR);
  await expectAnswer(t, main, 'an indirect READ past the end of the disk', indirect(BlkifOp.READ, sectors - 8, 2, [goodPage]), ERROR);
  await expectAnswer(t, main, 'an indirect READ at sector 2^64-8 of 16 sectors (the end wraps)', indirect(BlkifOp.READ, TOP - 8n, 2, [goodPage]), ERROR);
  await bystanderUnharmed(t, 'lying indirect requests');
});

t.test('operation codes blkif.h does not define', async (t) => {
  await expectAnswer(t, main, 'operation 4 (BLKIF_OP_RESERVED_1)', rw(4, 0, [seg(data.gref)]), EOPNOTSUPP);
  await expectAnswer(t, main, 'operation 7', rw(7, 0, [seg(data.gref)]), EOPNOTSUPP);
  await expectAnswer(t, main, 'operation 255', rw(255, 0, [seg(data.gref)]), EOPNOTSUPP);
  const flood = Array.from({ length: main.ring.ring.freeRequests }, (_, i) => rw([4, 7, 255][i % 3]!, 0, [seg(data.gref)]));
  const responses = await main.send(...flood);
  t.same(
    responses.map((r) => [r.id, r.operation, statusName(r.status)]),
    flood.map((r) => [r.id, r.operation, 'EOPNOTSUPP']),
    `a whole ring (${flood.length}) of unknown operations: each EOPNOTSUPP, in order, id and operation echoed`,
  );
  await bystanderUnharmed(t, 'unknown operations');
});

t.test('writes and discards a disk does not allow', async (t) => {
  const readOnlySpec = hostileDisk('xvdb', { readOnly: true });
  const readOnlyDisk = await connectByHand(readOnlySpec);
  t.equal(Number(await backendKey(readOnlySpec, 'info')) & VDisk.READONLY, VDisk.READONLY, 'the read-only disk says VDISK_READONLY');
  await expectAnswer(t, readOnlyDisk, 'a WRITE to the read-only disk', rw(BlkifOp.WRITE, 0, [seg(data.gref)]), ERROR);
  await expectAnswer(t, readOnlyDisk, 'a WRITE_BARRIER with data to the read-only disk', rw(BlkifOp.WRITE_BARRIER, 0, [seg(data.gref)]), ERROR);
  await expectAnswer(t, readOnlyDisk, 'an indirect WRITE to the read-only disk', indirect(BlkifOp.WRITE, 0, 1, [indirectPage([seg(data.gref)])]), ERROR);
  // A discard is a write: refused as one (Linux's blkback does the same).
  await expectAnswer(t, readOnlyDisk, 'a DISCARD to the read-only disk', discard(0, 8), ERROR);
  await expectAnswer(t, readOnlyDisk, 'control: a READ from the read-only disk', rw(BlkifOp.READ, 0, [seg(data.gref)]), OKAY);
  await expectAnswer(t, readOnlyDisk, 'control: a FLUSH_DISKCACHE on the read-only disk', rw(BlkifOp.FLUSH_DISKCACHE, 0, []), OKAY);

  const noDiscardSpec = hostileDisk('xvdc', { discard: false });
  const noDiscard = await connectByHand(noDiscardSpec);
  t.equal(await backendKey(noDiscardSpec, 'feature-discard'), '0', 'the disk with discard disabled publishes feature-discard 0');
  await expectAnswer(t, noDiscard, 'a DISCARD to the disk with discard disabled', discard(0, 8), EOPNOTSUPP);
  await expectAnswer(t, noDiscard, 'a secure DISCARD to the disk with discard disabled', discard(0, 8, BLKIF_DISCARD_SECURE), EOPNOTSUPP);
  await expectAnswer(t, noDiscard, 'control: a WRITE to the disk with discard disabled', rw(BlkifOp.WRITE, 0, [seg(data.gref)]), OKAY);

  const image = join(workdir, 'sparse.img');
  const file = await open(image, 'w');
  await file.truncate(DISK_BYTES);
  await file.close();
  const fileSpec = hostileDisk('xvdd', { target: image });
  const fileDisk = await connectByHand(fileSpec);
  t.same(
    { discard: await backendKey(fileSpec, 'feature-discard'), secure: await backendKey(fileSpec, 'discard-secure') },
    { discard: '1', secure: '0' },
    'the file-backed disk offers discard, not secure discard',
  );
  // blkif.h: BLKIF_DISCARD_SECURE is "ignored if discard-secure=0".
  await expectAnswer(t, fileDisk, 'a secure DISCARD where discard-secure is 0: done as a plain one', discard(0, 8, BLKIF_DISCARD_SECURE), OKAY);
  await expectAnswer(t, fileDisk, 'a DISCARD with every flag bit set where discard-secure is 0: a plain one', discard(0, 8, 0xff), OKAY);
  await expectAnswer(t, fileDisk, 'a DISCARD of no sectors: nothing to do', discard(0, 0), OKAY);
  await expectAnswer(t, fileDisk, 'control: a plain DISCARD on the file-backed disk', discard(0, 8), OKAY);
  await bystanderUnharmed(t, 'refused writes and discards');
});

t.test('the hostile ring is still served after all of that', async (t) => {
  const written = pattern(PAGE_SIZE);
  data.bytes.set(written);
  await expectAnswer(t, main, 'a valid WRITE', rw(BlkifOp.WRITE, 128, [seg(data.gref)]), OKAY);
  data2.bytes.fill(0);
  await expectAnswer(t, main, 'a valid READ', rw(BlkifOp.READ, 128, [seg(data2.gref)]), OKAY);
  t.ok(sameBytes(data2.bytes, written), 'the valid READ returns what the valid WRITE wrote');

  // The same through an indirect request: two pages out, two pages back, at another sector.
  const out = [grantPage(hostile, driver.domid), grantPage(hostile, driver.domid)];
  const readBack = [grantPage(hostile, driver.domid), grantPage(hostile, driver.domid)];
  for (const page of out) page.bytes.set(pattern(PAGE_SIZE));
  await expectAnswer(t, main, 'a valid indirect WRITE', indirect(BlkifOp.WRITE, 256, 2, [indirectPage(out.map((p) => seg(p.gref)))]), OKAY);
  await expectAnswer(t, main, 'a valid indirect READ', indirect(BlkifOp.READ, 256, 2, [indirectPage(readBack.map((p) => seg(p.gref)))]), OKAY);
  t.ok(sameBytes(readBack[0]!.bytes, out[0]!.bytes) && sameBytes(readBack[1]!.bytes, out[1]!.bytes), 'the indirect READ returns what the indirect WRITE wrote');

  const backend = back.devices.get(`${hostile.domid}/${mainSpec.devid}`)!;
  t.equal(backend.served, main.sent, `every request on the hostile ring was answered exactly once (${main.sent})`);
  t.equal(main.ring.ring.unconsumedResponses(), 0, 'and no response came that was not asked for');
  t.same(await bed.states(mainSpec), { front: 'Initialised', back: 'Connected' }, 'the hostile disk is still Connected');
  t.equal(await errorNode(mainSpec), undefined, 'and no error node was written for it');
  await bystanderUnharmed(t, 'valid requests on the hostile ring');
});

t.test('connect-time attacks: an error node naming the problem, and Closing', async (t) => {
  const maxOrder = Number(await backendKey(mainSpec, 'max-ring-page-order'));
  const maxQueues = Number(await backendKey(mainSpec, 'multi-queue-max-queues'));
  t.same({ maxOrder, maxQueues }, { maxOrder: 4, maxQueues: 4 }, 'the backend published max-ring-page-order 4 and multi-queue-max-queues 4');
  const neverGranted = GRANT_ENTRIES - 3;
  const x86 = { protocol: 'x86_64-abi' };
  type Keys = (ring: HandRing) => Record<string, string | number>;
  const cases: [string, Keys, RegExp][] = [
    ["protocol 'sparc-abi'", (r) => ({ protocol: 'sparc-abi', 'ring-ref': r.gref, 'event-channel': r.port }), /protocol 'sparc-abi' is not one this backend speaks/],
    [
      `ring-page-order ${maxOrder + 1} (above max-ring-page-order)`,
      (r) => ({ ...x86, 'ring-page-order': maxOrder + 1, 'ring-ref0': r.gref, 'event-channel': r.port }),
      new RegExp(`ring-page-order ${maxOrder + 1} is not in 0\\.\\.${maxOrder}`),
    ],
    [
      'num-ring-pages 3 (not a power of two)',
      (r) => ({ ...x86, 'num-ring-pages': 3, 'ring-ref0': r.gref, 'ring-ref1': r.gref, 'ring-ref2': r.gref, 'event-channel': r.port }),
      /num-ring-pages 3 is not a power of two/,
    ],
    [
      `multi-queue-num-queues ${maxQueues + 5} (above multi-queue-max-queues)`,
      (r) => ({ ...x86, 'multi-queue-num-queues': maxQueues + 5, 'queue-0/ring-ref': r.gref, 'queue-0/event-channel': r.port }),
      new RegExp(`multi-queue-num-queues ${maxQueues + 5} is not in 1\\.\\.${maxQueues}`),
    ],
    [
      'multi-queue-num-queues 0',
      (r) => ({ ...x86, 'multi-queue-num-queues': 0, 'ring-ref': r.gref, 'event-channel': r.port }),
      new RegExp(`multi-queue-num-queues 0 is not in 1\\.\\.${maxQueues}`),
    ],
    ['a ring-ref never granted', (r) => ({ ...x86, 'ring-ref': neverGranted, 'event-channel': r.port }), new RegExp(`ring-ref ${neverGranted}.*(has not granted reference ${neverGranted}|grant reference ${neverGranted} is out of range)`)],
    [
      'a ring-ref granted read-only',
      (r) => ({ ...x86, 'ring-ref': hostile.kernel.domain.grants.grantAccess(driver.domid, r.pfn, true), 'event-channel': r.port }),
      /mapping ring-ref .*read-only/,
    ],
    ['ring-page-order 1 without ring-ref1', (r) => ({ ...x86, 'ring-page-order': 1, 'ring-ref0': r.gref, 'event-channel': r.port }), /ring-ref1 is missing/],
    ['no event-channel', (r) => ({ ...x86, 'ring-ref': r.gref }), /event-channel is missing/],
    [
      'an event-channel offered to another domain',
      (r) => ({ ...x86, 'ring-ref': r.gref, 'event-channel': hostile.kernel.events.channels.allocUnbound(bystander.domid) }),
      /binding event-channel/,
    ],
    [
      "an event-channel already bound for the guest's main disk",
      (r) => ({ ...x86, 'ring-ref': r.gref, 'event-channel': main.ring.port }),
      new RegExp(`binding event-channel ${main.ring.port}`),
    ],
    [
      "two queues, the second's ring-ref never granted (the first one's ring is let go)",
      (r) => {
        const second = handMadeRing(hostile, driver.domid);
        return {
          ...x86,
          'multi-queue-num-queues': 2,
          'queue-0/ring-ref': r.gref,
          'queue-0/event-channel': r.port,
          'queue-1/ring-ref': neverGranted,
          'queue-1/event-channel': second.port,
        };
      },
      new RegExp(`mapping ring-ref ${neverGranted}`),
    ],
  ];
  for (const [i, [what, keys, expected]] of cases.entries()) {
    const spec = hostileDisk(`xvd${String.fromCharCode('e'.charCodeAt(0) + i)}`);
    await plugHostile(spec);
    const ring = handMadeRing(hostile, driver.domid);
    await publish(hostile, spec, keys(ring));
    await bed.waitStates(spec, Initialised, Closing);
    const error = await errorNode(spec);
    t.match(error, expected, `${what}: the error node says so (${error})`);
    t.equal(back.devices.get(`${hostile.domid}/${spec.devid}`)?.store, undefined, `${what}: nothing is left connected`);
    t.ok(hostile.kernel.domain.grants.endAccess(ring.gref), `${what}: the ring page is not left mapped`);
  }
  await expectAnswer(t, main, "after the connect-time attacks, a READ on the guest's main disk", rw(BlkifOp.READ, 0, [seg(data.gref)]), OKAY);
  await bystanderUnharmed(t, 'connect-time attacks');
});

t.test('a request producer more than a ring ahead: cut off, and the ring let go', async (t) => {
  const spec = hostileDisk('xvdz');
  const disk = await connectByHand(spec);
  await expectAnswer(t, disk, 'control: a READ before the overrun', rw(BlkifOp.READ, 0, [seg(data.gref)]), OKAY);
  const backend = back.devices.get(`${hostile.domid}/${spec.devid}`)!;
  t.ok(backend.store, 'the device is connected before the overrun');
  const sring = disk.ring.ring.sring;
  sring.reqProd = sring.rspProd + disk.ring.ring.size + 5;
  disk.ring.notify();
  await bed.waitStates(spec, Initialised, Closing);
  t.match(await errorNode(spec), /request producer more than a ring ahead/, 'the error node names the overrun');
  const deadline = Date.now() + RESPONSE_TIMEOUT_MS;
  let released = false;
  while (!(released = hostile.kernel.domain.grants.endAccess(disk.ring.gref)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  t.ok(released, 'the backend unmapped the ring page (the guest could end its grant)');
  t.equal(backend.store, undefined, 'and closed its connection');
  t.same(await bed.states(mainSpec), { front: 'Initialised', back: 'Connected' }, "the hostile guest's other disk is still Connected");
  await expectAnswer(t, main, "a READ on the hostile guest's other disk", rw(BlkifOp.READ, 0, [seg(data.gref)]), OKAY);
  await bystanderUnharmed(t, 'the producer overrun');
});

t.test('the back bus still attaches and connects a new disk', async (t) => {
  const spec = diskDevice({ frontendDomid: bystander.domid, backendDomid: driver.domid, vdev: 'xvdb', target: `memory:${DISK_BYTES}` });
  await bed.plug(spec);
  await bed.waitStates(spec, Connected, Connected);
  const disk = front.devices.get(String(spec.devid))!.disk;
  await disk.whenConnected();
  const written = pattern(3 * PAGE_SIZE);
  await disk.write(100, written);
  t.ok(sameBytes(await disk.read(100, written.length / SECTOR_SIZE), written), 'a new disk for the other guest reads back what it wrote');
  await bystanderUnharmed(t, 'everything');
});
