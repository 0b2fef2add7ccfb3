import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_DISCARD_SECURE,
  BLKIF_SEGS_PER_INDIRECT_FRAME,
  BlkifOp,
  BlkifStatus,
  SECTORS_PER_PAGE,
  decodeResponse,
  encodeRequest,
  encodeSegments,
  indirectPagesFor,
  layoutOf,
  type BlkifAbi,
  type BlkifRequest,
  type BlkifSegment,
} from '../shared/blkif.js';
import { PAGE_SIZE } from '../shared/platform.js';
import type { FrontRing } from '../shared/ring.js';
import type { GrantedPage, GrantedPages } from './pages.js';

/** One blkif request's worth of a caller's operation. */
export interface Piece {
  readonly kind: 'read' | 'write' | 'barrier' | 'flush' | 'discard';
  /** For a flush: the operation that carries it (FLUSH_DISKCACHE, or an empty WRITE_BARRIER). */
  readonly operation: number;
  readonly sector: number;
  /** Sectors of data (or discarded); 0 for a flush. */
  readonly sectors: number;
  /** What a write (or barrier) writes; where a read's data goes. */
  readonly data: Uint8Array | undefined;
  readonly secure: boolean;
  /** Submission order, kept when pieces are replayed. */
  readonly seq: number;
  /** The BLKIF_RSP_* status, once the backend answered. */
  settle(status: number): void;
}

/** A request on the ring, with what it holds until the response. */
interface Shadow<P extends Piece> {
  readonly piece: P;
  /** The operations a response to it may name. */
  readonly answeredAs: readonly number[];
  readonly data: GrantedPage[];
  readonly indirect: GrantedPage[];
  /** The ring index its request went in at, and when. */
  readonly index: number;
  readonly issuedAt: number;
}

/** A request on the ring not yet answered, as a diagnostic names it. */
export interface UnansweredRequest {
  readonly id: number;
  /** The free-running ring index the request went in at. */
  readonly index: number;
  readonly kind: Piece['kind'];
  readonly sector: number;
  readonly sectors: number;
  readonly seq: number;
  /** How long ago it was put on the ring. */
  readonly ageMs: number;
}

/** A ring's indexes, private and shared, with what is unanswered on it. */
export interface RingReport {
  readonly size: number;
  readonly reqProdPvt: number;
  readonly rspCons: number;
  readonly reqProd: number;
  readonly reqEvent: number;
  readonly rspProd: number;
  readonly rspEvent: number;
  readonly unanswered: UnansweredRequest[];
}

/** What the frontend must not take from a backend: a response that does not answer a request it made. */
export class BackendProtocolError extends Error {}

/**
 * One ring (queue) of a block frontend: it turns pieces into blkif
 * requests (direct, or indirect when they need more than 11 pages), keeps a
 * shadow of each until its response, and hands unanswered ones back when
 * the connection goes, to be replayed on the next.
 */
export class FrontQueue<P extends Piece = Piece> {
  private readonly shadows: (Shadow<P> | undefined)[];
  private readonly freeIds: number[];
  private readonly entry: Uint8Array;

  constructor(
    private readonly ring: FrontRing,
    private readonly abi: BlkifAbi,
    private readonly pages: GrantedPages,
    /** Pages one request may carry. */
    private readonly segmentsPerRequest: number,
    /** The backend's handle for the device (blkif.h's `handle`, the virtual-device number). */
    private readonly handle: number,
  ) {
    this.shadows = new Array(ring.size).fill(undefined);
    this.freeIds = Array.from({ length: ring.size }, (_, i) => ring.size - 1 - i);
    this.entry = new Uint8Array(layoutOf(abi).entryBytes);
  }

  /** Requests that may be issued now. */
  get free(): number {
    return this.freeIds.length;
  }

  get inFlight(): number {
    return this.shadows.length - this.freeIds.length;
  }

  /**
   * Whether a piece of `sectors` sectors can go on the ring now: a free slot,
   * and pages for its data (and its indirect segments).
   */
  canCarry(sectors: number): boolean {
    if (this.freeIds.length === 0) return false;
    const pages = Math.ceil(sectors / SECTORS_PER_PAGE);
    const indirect = pages > BLKIF_MAX_SEGMENTS_PER_REQUEST ? indirectPagesFor(pages) : 0;
    return this.pages.ensure(pages + indirect);
  }

  /** Puts a piece on the ring (not yet published: see push()). The caller made sure it can carry it. */
  issue(piece: P): void {
    const id = this.freeIds.pop()!;
    const pageCount = Math.ceil(piece.sectors / SECTORS_PER_PAGE);
    const carriesData = piece.kind === 'read' || piece.kind === 'write' || (piece.kind === 'barrier' && piece.sectors > 0);
    const data = carriesData ? this.pages.take(pageCount, piece.kind === 'read') : [];
    let indirect: GrantedPage[] = [];
    try {
      if (piece.kind !== 'read' && piece.data) {
        data.forEach((page, i) => page.bytes.set(piece.data!.subarray(i * PAGE_SIZE, Math.min(piece.data!.length, (i + 1) * PAGE_SIZE))));
      }
      const segments: BlkifSegment[] = data.map((page, i) => ({
        gref: page.gref,
        firstSect: 0,
        lastSect: Math.min(SECTORS_PER_PAGE, piece.sectors - i * SECTORS_PER_PAGE) - 1,
      }));
      const request = this.request(piece, BigInt(id), segments, (count) => (indirect = this.pages.take(count, false)));
      encodeRequest(this.abi, request, this.entry);
      const index = this.ring.reqProdPvt;
      this.ring.putRequest(this.entry);
      // Linux's blkback answers an indirect request with the operation it
      // carries; blkif.h does not say, so BLKIF_OP_INDIRECT is taken too.
      const answeredAs = request.kind === 'indirect' ? [request.indirectOp, request.operation] : [request.operation];
      this.shadows[id] = { piece, answeredAs, data, indirect, index, issuedAt: performance.now() };
    } catch (err) {
      this.pages.give(data);
      this.pages.give(indirect);
      this.freeIds.push(id);
      throw err;
    }
  }

  /** Publishes what was issued; true if the backend must be signalled. */
  push(): boolean {
    return this.ring.pushRequestsAndCheckNotify();
  }

  /**
   * Takes every response, settling its piece. A response for no request
   * of ours, or for another operation than the one made, is a broken or
   * hostile backend: BackendProtocolError, and nothing more is taken.
   */
  takeResponses(): void {
    do {
      const waiting = this.ring.unconsumedResponses();
      if (waiting < 0) throw new BackendProtocolError('the backend moved its response producer past our requests');
      for (let i = 0; i < waiting; i++) {
        this.ring.takeResponse(this.entry);
        const response = decodeResponse(this.abi, this.entry);
        const id = Number(response.id);
        const shadow = response.id < BigInt(this.shadows.length) ? this.shadows[id] : undefined;
        if (!shadow) throw new BackendProtocolError(`a response for request ${response.id}, which is not in flight`);
        if (!shadow.answeredAs.includes(response.operation)) {
          throw new BackendProtocolError(`request ${id} was operation ${shadow.answeredAs.join(' or ')}, the response says ${response.operation}`);
        }
        this.finish(id, shadow, response.status);
      }
    } while (this.ring.finalCheckForResponses());
  }

  /** The ring's indexes and its unanswered requests, oldest first (for diagnostics: nothing here changes). */
  report(): RingReport {
    const { sring } = this.ring;
    const now = performance.now();
    const unanswered: UnansweredRequest[] = [];
    this.shadows.forEach((shadow, id) => {
      if (!shadow) return;
      const { piece } = shadow;
      unanswered.push({ id, index: shadow.index, kind: piece.kind, sector: piece.sector, sectors: piece.sectors, seq: piece.seq, ageMs: now - shadow.issuedAt });
    });
    return {
      size: this.ring.size,
      reqProdPvt: this.ring.reqProdPvt,
      rspCons: this.ring.rspCons,
      reqProd: sring.reqProd,
      reqEvent: sring.reqEvent,
      rspProd: sring.rspProd,
      rspEvent: sring.rspEvent,
      unanswered: unanswered.sort((a, b) => b.ageMs - a.ageMs),
    };
  }

  /** The connection is over: every unanswered piece, in the order they were made, for the next one. */
  abandon(): P[] {
    const left: P[] = [];
    this.shadows.forEach((shadow, id) => {
      if (!shadow) return;
      this.shadows[id] = undefined;
      this.pages.give(shadow.data);
      this.pages.give(shadow.indirect);
      left.push(shadow.piece);
    });
    return left.sort((a, b) => a.seq - b.seq);
  }

  private finish(id: number, shadow: Shadow<P>, status: number): void {
    this.shadows[id] = undefined;
    const { piece } = shadow;
    if (piece.kind === 'read' && status === BlkifStatus.OKAY && piece.data) {
      shadow.data.forEach((page, i) => {
        const start = i * PAGE_SIZE;
        piece.data!.set(page.bytes.subarray(0, Math.min(PAGE_SIZE, piece.data!.length - start)), start);
      });
    }
    this.pages.give(shadow.data);
    this.pages.give(shadow.indirect);
    this.freeIds.push(id);
    piece.settle(status);
  }

  private request(piece: Piece, id: bigint, segments: BlkifSegment[], takeIndirect: (count: number) => GrantedPage[]): BlkifRequest {
    const sectorNumber = BigInt(piece.sector);
    switch (piece.kind) {
      case 'discard':
        return {
          kind: 'discard',
          operation: BlkifOp.DISCARD,
          flag: piece.secure ? BLKIF_DISCARD_SECURE : 0,
          handle: this.handle,
          id,
          sectorNumber,
          nrSectors: BigInt(piece.sectors),
        };
      case 'flush':
        return { kind: 'rw', operation: piece.operation, nrSegments: 0, handle: this.handle, id, sectorNumber: 0n, segments: [] };
      default: {
        const operation = piece.kind === 'read' ? BlkifOp.READ : piece.kind === 'write' ? BlkifOp.WRITE : piece.operation;
        if (segments.length <= BLKIF_MAX_SEGMENTS_PER_REQUEST) {
          return { kind: 'rw', operation, nrSegments: segments.length, handle: this.handle, id, sectorNumber, segments };
        }
        if (segments.length > this.segmentsPerRequest || piece.kind === 'barrier') {
          throw new RangeError(`a request of ${segments.length} pages exceeds the ${this.segmentsPerRequest} negotiated`);
        }
        const frames = takeIndirect(indirectPagesFor(segments.length));
        frames.forEach((frame, i) => encodeSegments(segments.slice(i * BLKIF_SEGS_PER_INDIRECT_FRAME, (i + 1) * BLKIF_SEGS_PER_INDIRECT_FRAME), frame.bytes));
        return {
          kind: 'indirect',
          operation: BlkifOp.INDIRECT,
          indirectOp: operation,
          nrSegments: segments.length,
          handle: this.handle,
          id,
          sectorNumber,
          indirectGrefs: frames.map((f) => f.gref),
        };
      }
    }
  }
}
