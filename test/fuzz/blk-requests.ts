/**
 * Block requests for the fuzzer: valid ones of every kind (reads and
 * writes direct and indirect, barriers, flushes, discards) on the batch's
 * disk and pages, then perhaps mutated the ways a hostile frontend would:
 * an operation blkif.h does not define, nr_segments 0 or over the limit,
 * segments whose sectors leave the page or run backwards, grant references
 * that are not the backend's to use, sectors past the end or near 2^64,
 * indirect pages full of garbage, ids used twice, or no struct at all.
 */
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_SEGMENT_BYTES,
  BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
  BlkifOp,
  SECTORS_PER_PAGE,
  encodeSegments,
  type BlkifRequest,
  type BlkifSegment,
} from '../../shared/blkif.js';
import { PAGE_SIZE } from '../../shared/platform.js';
import type { HostilePages, Page } from './blk-pages.js';
import type { Prng } from './prng.js';

/** A request ready to go on the ring, and the indirect page it needs written first. */
export interface PlannedRequest {
  readonly request: BlkifRequest;
  /** Raw bytes for the ring slot instead of the encoded request (a slot of garbage). */
  readonly raw?: Uint8Array;
  readonly indirect?: { readonly page: Page; readonly bytes: Uint8Array };
  readonly what: string;
}

export interface DiskShape {
  readonly sectors: number;
  readonly maxIndirectSegments: number;
}

const TOP = 2n ** 64n;

export class BlkRequestGenerator {
  private nextId: bigint;
  private lastId = 0n;
  private indirectTurn = 0;

  constructor(
    private readonly rng: Prng,
    private readonly pages: HostilePages,
    private readonly disk: DiskShape,
    private readonly mutationRate: number,
  ) {
    this.nextId = rng.u64();
  }

  /** The indirect page the next indirect request uses: round robin over the pool. */
  nextIndirectPage(): Page {
    return this.pages.indirect[this.indirectTurn % this.pages.indirect.length]!;
  }

  next(): PlannedRequest {
    const rng = this.rng;
    const planned = rng.weighted<() => PlannedRequest>([
      [30, () => this.direct(BlkifOp.READ)],
      [30, () => this.direct(BlkifOp.WRITE)],
      [12, () => this.indirect(rng.chance(0.5) ? BlkifOp.READ : BlkifOp.WRITE)],
      [5, () => this.direct(BlkifOp.WRITE_BARRIER)],
      [4, () => this.flush()],
      [7, () => this.discard()],
      [2, () => this.garbage()],
    ])();
    if (planned.raw || !rng.chance(this.mutationRate)) return planned;
    return this.mutate(planned);
  }

  private id(): bigint {
    const rng = this.rng;
    const id = rng.weighted<() => bigint>([
      [20, () => this.nextId++],
      [1, () => this.lastId],
      [1, () => 0n],
      [1, () => TOP - 1n],
    ])();
    this.lastId = id;
    return id & (TOP - 1n);
  }

  /** A segment of a page the request may use, over some or all of its sectors. */
  private segment(pool: readonly Page[]): BlkifSegment {
    const rng = this.rng;
    const whole = rng.chance(0.3);
    const first = whole ? 0 : rng.int(0, SECTORS_PER_PAGE - 1);
    const last = whole ? SECTORS_PER_PAGE - 1 : rng.int(first, SECTORS_PER_PAGE - 1);
    return { gref: rng.pick(pool).gref, firstSect: first, lastSect: last };
  }

  private dataPool(operation: number): readonly Page[] {
    // A write may take its data from a read-only grant; a read needs a writable one.
    return operation === BlkifOp.READ || !this.rng.chance(0.15) ? this.pages.data : this.pages.readOnly;
  }

  /** A sector where `count` sectors fit (or the last ones, on a disk too small for them). */
  private sectorFor(count: number): bigint {
    return BigInt(this.rng.int(0, Math.max(0, this.disk.sectors - count)));
  }

  private direct(operation: number): PlannedRequest {
    const count = this.rng.chance(0.7) ? this.rng.int(1, 3) : this.rng.int(1, BLKIF_MAX_SEGMENTS_PER_REQUEST);
    const pool = this.dataPool(operation);
    const segments = Array.from({ length: count }, () => this.segment(pool));
    const sectors = segments.reduce((n, s) => n + s.lastSect - s.firstSect + 1, 0);
    const request: BlkifRequest = { kind: 'rw', operation, nrSegments: count, handle: 0, id: this.id(), sectorNumber: this.sectorFor(sectors), segments };
    return { request, what: `${opName(operation)} of ${count} segments` };
  }

  private flush(): PlannedRequest {
    return { request: { kind: 'rw', operation: BlkifOp.FLUSH_DISKCACHE, nrSegments: 0, handle: 0, id: this.id(), sectorNumber: 0n, segments: [] }, what: 'FLUSH' };
  }

  private discard(): PlannedRequest {
    const count = this.rng.int(0, Math.min(this.disk.sectors, 256));
    const flag = this.rng.weighted([
      [8, 0],
      [2, 1],
      [1, this.rng.int(2, 255)],
    ]);
    const request: BlkifRequest = { kind: 'discard', operation: BlkifOp.DISCARD, flag, handle: 0, id: this.id(), sectorNumber: this.sectorFor(count), nrSectors: BigInt(count) };
    return { request, what: `DISCARD of ${count} sectors` };
  }

  private indirect(indirectOp: number, segmentBytes?: Uint8Array): PlannedRequest {
    const rng = this.rng;
    const count = rng.int(1, Math.max(1, Math.min(this.disk.maxIndirectSegments, rng.pick([4, 16, 64, 256]))));
    const pool = this.dataPool(indirectOp);
    const segments = Array.from({ length: count }, () => this.segment(pool));
    const sectors = segments.reduce((n, s) => n + s.lastSect - s.firstSect + 1, 0);
    const page = this.nextIndirectPage();
    this.indirectTurn++;
    const bytes = segmentBytes ?? new Uint8Array(PAGE_SIZE);
    if (!segmentBytes) encodeSegments(segments, bytes);
    const grefs = [page.gref, ...Array.from({ length: BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - 1 }, () => rng.u32())];
    const request: BlkifRequest = {
      kind: 'indirect',
      operation: BlkifOp.INDIRECT,
      indirectOp,
      nrSegments: count,
      handle: 0,
      id: this.id(),
      sectorNumber: this.sectorFor(sectors),
      indirectGrefs: grefs,
    };
    return { request, indirect: { page, bytes }, what: `indirect ${opName(indirectOp)} of ${count} segments` };
  }

  /** A slot of random bytes: whatever struct its first byte makes it. */
  private garbage(): PlannedRequest {
    return { request: { kind: 'rw', operation: 0, nrSegments: 0, handle: 0, id: 0n, sectorNumber: 0n, segments: [] }, raw: this.rng.bytes(112), what: 'a slot of random bytes' };
  }

  private badGref(): number {
    return this.rng.chance(0.8) ? this.rng.pick(this.pages.badGrefs()) : this.rng.u32();
  }

  private badSector(count: number): bigint {
    const sectors = BigInt(this.disk.sectors);
    return this.rng.pick([sectors, sectors - BigInt(Math.max(1, count - 1)), sectors + 1n, TOP - 1n, TOP - 8n, TOP - BigInt(count), this.rng.u64()]) & (TOP - 1n);
  }

  private mutate(planned: PlannedRequest): PlannedRequest {
    const rng = this.rng;
    const request = planned.request;
    const mutation = rng.weighted<string>([
      [4, 'operation'],
      [4, 'nr-segments'],
      [4, 'segment-sectors'],
      [5, 'gref'],
      [4, 'sector'],
      [3, 'indirect-op'],
      [3, 'indirect-count'],
      [3, 'indirect-page'],
      [2, 'indirect-garbage'],
      [2, 'discard-range'],
      [2, 'read-only-target'],
    ]);
    const what = `${planned.what} [${mutation}]`;
    switch (mutation) {
      case 'operation':
        return { ...planned, request: { ...request, operation: rng.pick([4, 7, 8, 99, 255, BlkifOp.READ, BlkifOp.WRITE, BlkifOp.FLUSH_DISKCACHE]) } as BlkifRequest, what };
      case 'nr-segments':
        if (request.kind === 'rw') return { ...planned, request: { ...request, nrSegments: rng.pick([0, BLKIF_MAX_SEGMENTS_PER_REQUEST + 1, 255, rng.int(0, 255)]) }, what };
        return planned;
      case 'segment-sectors':
        if (request.kind === 'rw' && request.segments.length > 0) {
          const segments = request.segments.map((s) => ({ ...s }));
          const victim = segments[rng.below(segments.length)]!;
          if (rng.chance(0.5)) [victim.firstSect, victim.lastSect] = [rng.int(1, 7), 0];
          else victim.lastSect = rng.int(SECTORS_PER_PAGE, 255);
          return { ...planned, request: { ...request, segments }, what };
        }
        return planned;
      case 'gref':
        if (request.kind === 'rw' && request.segments.length > 0) {
          const segments = request.segments.map((s) => ({ ...s }));
          segments[rng.below(segments.length)]!.gref = rng.chance(0.3) && request.operation === BlkifOp.READ ? rng.pick(this.pages.readOnly).gref : this.badGref();
          return { ...planned, request: { ...request, segments }, what };
        }
        if (request.kind === 'indirect' && planned.indirect) {
          const segments: BlkifSegment[] = [];
          const bytes = Uint8Array.from(planned.indirect.bytes);
          const n = request.nrSegments;
          for (let i = 0; i < n; i++) segments.push({ gref: view32(bytes, i * BLKIF_SEGMENT_BYTES), firstSect: bytes[i * BLKIF_SEGMENT_BYTES + 4]!, lastSect: bytes[i * BLKIF_SEGMENT_BYTES + 5]! });
          segments[rng.below(n)]!.gref = this.badGref();
          encodeSegments(segments, bytes);
          return { ...planned, indirect: { ...planned.indirect, bytes }, what };
        }
        return planned;
      case 'sector':
        return { ...planned, request: { ...request, sectorNumber: this.badSector(request.kind === 'discard' ? Number(request.nrSectors) : 8) } as BlkifRequest, what };
      case 'indirect-op':
        if (request.kind === 'indirect') return { ...planned, request: { ...request, indirectOp: rng.pick([BlkifOp.WRITE_BARRIER, BlkifOp.FLUSH_DISKCACHE, BlkifOp.DISCARD, BlkifOp.INDIRECT, 4, 255]) }, what };
        return planned;
      case 'indirect-count':
        if (request.kind === 'indirect') return { ...planned, request: { ...request, nrSegments: rng.pick([0, this.disk.maxIndirectSegments + 1, 0xffff, rng.int(0, 0xffff)]) }, what };
        return planned;
      case 'indirect-page':
        if (request.kind === 'indirect') {
          const gref = rng.chance(0.3) ? rng.pick(this.pages.readOnly).gref : this.badGref();
          return { ...planned, request: { ...request, indirectGrefs: [gref, ...request.indirectGrefs.slice(1)] }, what };
        }
        return planned;
      case 'indirect-garbage':
        if (planned.indirect) return { ...planned, indirect: { ...planned.indirect, bytes: rng.bytes(PAGE_SIZE) }, what };
        return planned;
      case 'discard-range':
        if (request.kind === 'discard') return { ...planned, request: { ...request, nrSectors: rng.pick([BigInt(this.disk.sectors) + 1n, TOP - 1n, rng.u64()]) }, what };
        return planned;
      case 'read-only-target':
        // A READ into pages the backend may only read.
        if (request.kind === 'rw' && request.operation === BlkifOp.READ) {
          return { ...planned, request: { ...request, segments: request.segments.map((s) => ({ ...s, gref: rng.pick(this.pages.readOnly).gref })) }, what };
        }
        return planned;
    }
    return planned;
  }
}

function view32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

function opName(operation: number): string {
  return ['READ', 'WRITE', 'WRITE_BARRIER', 'FLUSH_DISKCACHE', 'RESERVED_1', 'DISCARD', 'INDIRECT'][operation] ?? `operation ${operation}`;
}
