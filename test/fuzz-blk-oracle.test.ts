/**
 * The block fuzzer's oracle where a request names the ring's own pages.
 * They are granted writable to the backend as data pages are, so a
 * request may name them by accident (a DISCARD whose operation byte was
 * mutated reads its nr_sectors as a segment's grant reference, and the
 * allocator hands out small references again once it has gone round its
 * table): a WRITE from a ring page is served like any other, and a READ
 * into one would have the backend overwrite the ring, so the hostile
 * frontend never publishes it, whether it wrote the slot or left it stale.
 * Both were seen in long fuzz runs as the backend's fault when they were
 * the oracle's.
 */
import t from 'tap';
import { BlkifOp, BlkifStatus, encodeRequest, layoutOf, writeIndirectSegment, type BlkifAbi, type BlkifRequest } from '../shared/blkif.js';
import { PAGE_SIZE } from '../shared/platform.js';
import { verdict, type DiskPolicy } from './fuzz/blk-model.js';
import { HostileFrontend } from './fuzz/blk-frontend.js';
import type { GrantClass, HostilePages, Page } from './fuzz/blk-pages.js';
import type { HostileRing } from './fuzz/blk-ring.js';
import type { PlannedRequest } from './fuzz/blk-requests.js';
import { Trail } from './fuzz/violation.js';

const ABI: BlkifAbi = 'x86_32';
const RING_GREF = 240;
const DATA_GREF = 20;
const INDIRECT_GREF = 30;
const DISK: DiskPolicy = { sectors: 4096n, readOnly: false, discard: true, flush: true, barrier: true, maxIndirectSegments: 32 };

/** The pages a batch has, by reference: one data page, one indirect page, and a ring page. */
class Pages {
  readonly indirect = new Uint8Array(PAGE_SIZE);
  classOf(gref: number): GrantClass {
    return gref === RING_GREF ? 'ring' : gref === DATA_GREF ? 'rw' : gref === INDIRECT_GREF ? 'ro' : 'bad';
  }
  stableBytes(gref: number): Uint8Array | undefined {
    return gref === INDIRECT_GREF ? this.indirect : undefined;
  }
  writeIndirect(_page: Page, bytes: Uint8Array): void {
    this.indirect.set(bytes);
  }
  mayFill(): void {}
  mayFillAnything(): void {}
}

/** A ring that records what is put on it, and whose stale slots hold what a test says. */
class Ring {
  readonly entryBytes = layoutOf(ABI).entryBytes;
  readonly size = 32;
  readonly entries: Uint8Array[] = [];
  stale: Uint8Array[] = [];
  published = 0;
  readonly front = { freeRequests: 32 };
  put(entry: Uint8Array): void {
    this.entries.push(Uint8Array.from(entry));
  }
  publish(): boolean {
    this.published = this.entries.length;
    return true;
  }
  notify(): void {}
  staleSlots(count: number): Uint8Array[] {
    return this.stale.slice(0, count);
  }
  publishStale(count: number): void {
    this.published += count;
  }
}

function frontendOn(ring: Ring, pages: Pages): HostileFrontend {
  return new HostileFrontend(ring as unknown as HostileRing, pages as unknown as HostilePages, DISK, ABI, new Trail(), 1000);
}

const rw = (operation: number, gref: number, id: bigint): BlkifRequest => ({
  kind: 'rw',
  operation,
  nrSegments: 1,
  handle: 0,
  id,
  sectorNumber: 8n,
  segments: [{ gref, firstSect: 0, lastSect: 7 }],
});

const slotOf = (request: BlkifRequest) => {
  const entry = new Uint8Array(layoutOf(ABI).entryBytes);
  encodeRequest(ABI, request, entry);
  return entry;
};

t.test('a WRITE from a ring page is served as any other write', async (t) => {
  const pages = new Pages();
  t.equal(verdict(rw(BlkifOp.WRITE, RING_GREF, 1n), DISK, pages).status, BlkifStatus.OKAY);
  t.equal(verdict(rw(BlkifOp.FLUSH_DISKCACHE, RING_GREF, 2n), DISK, pages).status, BlkifStatus.OKAY, 'a flush with data writes it');
  t.equal(verdict(rw(BlkifOp.WRITE, 7777, 3n), DISK, pages).status, BlkifStatus.ERROR, 'a reference granted nowhere is refused');
  t.equal(verdict(rw(BlkifOp.READ, DATA_GREF, 4n), DISK, pages).status, BlkifStatus.OKAY);
});

t.test('the frontend leaves out requests that would have the backend read into its ring', async (t) => {
  const ring = new Ring();
  const pages = new Pages();
  const frontend = frontendOn(ring, pages);
  // A DISCARD of 240 sectors whose operation byte became FLUSH_DISKCACHE and
  // flag became 1: on x86_32 its nr_sectors is read as segment 0's gref.
  const discard = slotOf({ kind: 'discard', operation: BlkifOp.DISCARD, flag: 1, handle: 0, id: 5n, sectorNumber: 686n, nrSectors: BigInt(RING_GREF) });
  const mutated = Uint8Array.from(discard);
  mutated[0] = BlkifOp.READ;
  const indirectPage: Page = { pfn: 0, gref: INDIRECT_GREF, bytes: pages.indirect, shadow: pages.indirect, what: 'indirect page 0' };
  const segments = new Uint8Array(PAGE_SIZE);
  writeIndirectSegment(segments, 0, DATA_GREF, 0, 7);
  writeIndirectSegment(segments, 1, RING_GREF, 0, 7);
  const indirectRead: BlkifRequest = { kind: 'indirect', operation: BlkifOp.INDIRECT, indirectOp: BlkifOp.READ, nrSegments: 2, handle: 0, id: 6n, sectorNumber: 0n, indirectGrefs: [INDIRECT_GREF] };
  const planned: PlannedRequest[] = [
    { request: rw(BlkifOp.READ, RING_GREF, 1n), what: 'READ into the ring' },
    { request: rw(BlkifOp.WRITE, RING_GREF, 2n), what: 'WRITE from the ring' },
    { request: rw(BlkifOp.READ, DATA_GREF, 3n), what: 'READ into a data page' },
    { request: indirectRead, indirect: { page: indirectPage, bytes: segments }, what: 'indirect READ, one segment into the ring' },
    { request: rw(BlkifOp.READ, 0, 0n), raw: mutated, what: 'a mutated DISCARD' },
  ];
  frontend.send(planned, 'needed', 0);
  t.same(
    ring.entries.map((entry) => entry[0]),
    [BlkifOp.WRITE, BlkifOp.READ],
    'the WRITE from the ring page and the READ into a data page go out; nothing else',
  );
  t.equal(frontend.leftOut, 3);
  t.equal(frontend.owed, 2);

  // Stale slots: published up to the first that would read into the ring.
  ring.stale = [slotOf(rw(BlkifOp.WRITE, DATA_GREF, 7n)), mutated, slotOf(rw(BlkifOp.READ, DATA_GREF, 8n))];
  frontend.sendStale(3, 'needed', 0);
  t.equal(ring.published, 2 + 1, 'one stale slot published, the rest held back');
  t.equal(frontend.leftOut, 5);
  t.equal(frontend.owed, 3);
});
