import {
  BLKIF_DISCARD_SECURE,
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_SEGS_PER_INDIRECT_FRAME,
  BlkifOp,
  BlkifRequestWriter,
  BlkifResponseView,
  BlkifStatus,
  SECTORS_PER_PAGE,
  indirectPagesFor,
  layoutOf,
  writeIndirectSegment,
  type BlkifAbi,
} from '../shared/blkif.js';
import type { EventDispatcher } from '../shared/event-dispatcher.js';
import { PAGE_SIZE } from '../shared/platform.js';
import { FrontRing, SharedRing } from '../shared/ring.js';
import type { GrantedPage, GrantedPages } from './pages.js';
import type { Operation, Work, WorkKind } from './work.js';

/** What the frontend must not take from a backend: a response that does not answer a request it made. */
export class BackendProtocolError extends Error {}

/**
 * What a queue is built from, as QEMU starts a dataplane from a ring's
 * references, its event channel and its protocol: the ring's pages
 * (granted, and named by ring-ref), the port the backend binds, the ABI,
 * and the limits negotiated for the connection.
 */
export interface QueueHandles {
  readonly ringPages: readonly Uint8Array[];
  readonly port: number;
  /** The worker's event channels: the queue is woken through them and signals the backend through them. */
  readonly events: EventDispatcher;
  readonly abi: BlkifAbi;
  /** The backend's handle for the device (blkif.h's `handle`, the virtual-device number). */
  readonly handle: number;
  /** Pages one request may carry: 11, or the negotiated indirect limit. */
  readonly segmentsPerRequest: number;
  /** The connection's grants of data pages (bounce pages, and callers' own). */
  readonly pages: GrantedPages;
  /** Where the ring's free-running indexes start (ring.h's FRONT_RING_ATTACH; 0 unless a test crosses the wrap). */
  readonly firstRingIndex?: number;
}

/** A request on the ring not yet answered, as a diagnostic names it. */
export interface UnansweredRequest {
  readonly id: number;
  /** The free-running ring index the request went in at. */
  readonly index: number;
  readonly kind: WorkKind;
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

/** Who hears what a queue's responses say. */
export interface QueueListener {
  /** A request carrying `sectors` sectors of `op` was answered with a BLKIF_RSP_* status. */
  requestAnswered(op: Operation, kind: WorkKind, sectors: number, status: number): void;
  /** Responses were taken: requests that wait may go now. */
  responsesTaken(): void;
}

/** A request on the ring, in a slot reused by every request of its id: what it holds until the response. */
class Shadow {
  op: Operation | undefined = undefined;
  kind: WorkKind = 'read';
  /** The work's operation (a flush's, as made): what a replay goes as. */
  operation = 0;
  /** The operations a response may name: the request's, and for an indirect one the one it carries. */
  answeredAs = 0;
  answeredAlso = -1;
  sector = 0;
  sectors = 0;
  data: Uint8Array | undefined = undefined;
  dataOffset = 0;
  firstPfn = -1;
  ownBuffer = false;
  secure = false;
  seq = 0;
  /** The page of the domain's memory the request's data starts in, if carried as it is; -1 through bounce pages. */
  piecePfn = -1;
  /** Grants made of callers' pages (piecePfn onwards). */
  granted = 0;
  /** The ring index the request went in at, and when (for diagnostics). */
  index = 0;
  issuedAt = 0;
  readonly grefs: Int32Array;
  readonly bounce: GrantedPage[] = [];
  readonly indirect: GrantedPage[] = [];

  constructor(segments: number) {
    this.grefs = new Int32Array(segments);
  }
}

/**
 * One ring (queue) of a block frontend, built from its handles. It turns
 * the pieces of callers' operations into blkif requests written straight
 * into the ring's slots (direct, or indirect when they need more than 11
 * pages), granting the caller's own pages when the data lies page-aligned
 * in the domain's memory and bounce pages otherwise; keeps a shadow of each
 * request by id (ids are slots of a free list) until its response; and
 * hands unanswered ones back when the connection goes, to be sent again on
 * the next. Nothing is allocated per request.
 */
export class BlkfrontQueue {
  readonly ring: FrontRing;
  readonly port: number;
  readonly segmentsPerRequest: number;
  private readonly shadows: Shadow[];
  private readonly freeIds: number[];
  private readonly writer: BlkifRequestWriter;
  private readonly response: BlkifResponseView;
  /** Where an entry that straddles two ring pages is put together. */
  private readonly staging: Uint8Array;
  private readonly events: EventDispatcher;
  private readonly pages: GrantedPages;
  private readonly handle: number;
  private closed = false;

  constructor(
    handles: QueueHandles,
    private readonly listener: QueueListener,
    /** The backend answered what no request of ours asked: the connection cannot go on. */
    private readonly backendBroke: (err: BackendProtocolError) => void,
  ) {
    const { entryBytes } = layoutOf(handles.abi);
    this.ring = FrontRing.create(new SharedRing(handles.ringPages, entryBytes), handles.firstRingIndex ?? 0);
    this.port = handles.port;
    this.events = handles.events;
    this.pages = handles.pages;
    this.handle = handles.handle;
    this.segmentsPerRequest = handles.segmentsPerRequest;
    this.writer = new BlkifRequestWriter(handles.abi);
    this.response = new BlkifResponseView(handles.abi);
    this.staging = new Uint8Array(entryBytes);
    const size = this.ring.size;
    this.shadows = Array.from({ length: size }, () => new Shadow(handles.segmentsPerRequest));
    this.freeIds = Array.from({ length: size }, (_, i) => size - 1 - i);
    this.events.on(this.port, () => this.eventArrived());
  }

  /** Requests that may be issued now. */
  get free(): number {
    return this.freeIds.length;
  }

  get inFlight(): number {
    return this.shadows.length - this.freeIds.length;
  }

  /**
   * Whether the next `sectors` of `work` can go on the ring now: a free
   * slot, and the pages the request needs (bounce pages for data that is
   * not carried as it is, indirect pages when it has more than 11).
   */
  canCarry(work: Work, sectors: number): boolean {
    if (this.freeIds.length === 0) return false;
    const pages = carriesData(work.kind, sectors) ? Math.ceil(sectors / SECTORS_PER_PAGE) : 0;
    const bounce = work.firstPfn < 0 ? pages : 0;
    const indirect = pages > BLKIF_MAX_SEGMENTS_PER_REQUEST ? indirectPagesFor(pages) : 0;
    return bounce + indirect === 0 || this.pages.ensure(bounce + indirect);
  }

  /**
   * Puts the next `sectors` of `work` on the ring as `operation` (not yet
   * published: see push()). The caller made sure it can carry it.
   */
  issue(work: Work, sectors: number, operation: number): void {
    const id = this.freeIds.pop()!;
    const s = this.shadows[id]!;
    const kind = work.kind;
    const pageCount = carriesData(kind, sectors) ? Math.ceil(sectors / SECTORS_PER_PAGE) : 0;
    s.kind = kind;
    s.operation = work.operation;
    s.sector = work.sector;
    s.sectors = sectors;
    s.data = work.data;
    s.dataOffset = work.dataOffset;
    s.firstPfn = work.firstPfn;
    s.ownBuffer = work.ownBuffer;
    s.secure = work.secure;
    s.seq = work.seq;
    // With persistent grants a backend keeps every page it is given mapped
    // (Linux's and ours do): a page only this request would grant could not
    // be taken back before its owner reuses it, so it goes through the
    // persistently granted bounce pages, as Linux's blkfront copies.
    const carriedAsIs = work.firstPfn >= 0 && (work.ownBuffer || !this.pages.persistent);
    s.piecePfn = pageCount > 0 && carriedAsIs ? work.firstPfn + work.dataOffset / PAGE_SIZE : -1;
    try {
      if (pageCount > BLKIF_MAX_SEGMENTS_PER_REQUEST && (pageCount > this.segmentsPerRequest || kind === 'barrier')) {
        throw new RangeError(`a request of ${pageCount} pages exceeds the ${kind === 'barrier' ? BLKIF_MAX_SEGMENTS_PER_REQUEST : this.segmentsPerRequest} it may carry`);
      }
      this.grantData(s, pageCount, kind === 'read');
      this.write(s, id, pageCount, operation);
    } catch (err) {
      this.ungrant(s);
      s.data = undefined;
      this.freeIds.push(id);
      throw err;
    }
    s.answeredAs = pageCount > BLKIF_MAX_SEGMENTS_PER_REQUEST ? BlkifOp.INDIRECT : operation;
    // Linux's blkback answers an indirect request with the operation it
    // carries; blkif.h does not say, so BLKIF_OP_INDIRECT is taken too.
    s.answeredAlso = pageCount > BLKIF_MAX_SEGMENTS_PER_REQUEST ? operation : -1;
    s.op = work.op;
  }

  /** Publishes what was issued, and signals the backend if it asked to be. */
  push(): void {
    if (this.ring.pushRequestsAndCheckNotify()) this.events.channels.notify(this.port);
  }

  /**
   * Takes every response, settling its request. A response for no request
   * of ours, or for another operation than the one made, is a broken or
   * hostile backend: BackendProtocolError, and nothing more is taken.
   */
  takeResponses(): void {
    const { ring, response } = this;
    const sring = ring.sring;
    do {
      const waiting = ring.unconsumedResponses();
      if (waiting < 0) throw new BackendProtocolError('the backend moved its response producer past our requests');
      for (let i = 0; i < waiting; i++) {
        const index = ring.consumeResponse();
        const page = sring.entryPage(index);
        if (page) response.read(page, sring.entryOffset(index));
        else {
          sring.readEntry(index, this.staging);
          response.read(this.staging);
        }
        const id = response.idLow;
        const shadow = response.idHigh === 0 && id < this.shadows.length ? this.shadows[id]! : undefined;
        if (!shadow || shadow.op === undefined) throw new BackendProtocolError(`a response for request ${response.id}, which is not in flight`);
        if (response.operation !== shadow.answeredAs && response.operation !== shadow.answeredAlso) {
          const made = shadow.answeredAlso < 0 ? `${shadow.answeredAs}` : `${shadow.answeredAs} or ${shadow.answeredAlso}`;
          throw new BackendProtocolError(`request ${id} was operation ${made}, the response says ${response.operation}`);
        }
        this.finish(id, shadow, response.status);
      }
    } while (ring.finalCheckForResponses());
  }

  /**
   * The connection is over: stops listening, takes what the backend
   * answered before it went (so that only the unanswered are sent again,
   * each request done exactly once), and returns every unanswered piece as
   * work, in the order they were made, for the next connection.
   */
  close(): Work[] {
    if (!this.closed) {
      this.closed = true;
      this.events.off(this.port);
      try {
        this.takeResponses();
      } catch {
        // A ring the backend broke: what it says is not believed.
      }
    }
    const left: Work[] = [];
    this.shadows.forEach((s, id) => {
      const op = s.op;
      if (op === undefined) return;
      this.ungrant(s);
      left.push({
        kind: s.kind,
        operation: s.operation,
        sector: s.sector,
        sectors: s.sectors,
        data: s.data,
        dataOffset: s.dataOffset,
        firstPfn: s.firstPfn,
        ownBuffer: s.ownBuffer,
        secure: s.secure,
        seq: s.seq,
        op,
      });
      s.op = undefined;
      s.data = undefined;
      this.freeIds.push(id);
    });
    return left.sort((a, b) => a.seq - b.seq);
  }

  /** The ring's indexes and its unanswered requests, oldest first (for diagnostics: nothing here changes). */
  report(): RingReport {
    const { sring } = this.ring;
    const now = performance.now();
    const unanswered: UnansweredRequest[] = [];
    this.shadows.forEach((s, id) => {
      if (s.op === undefined) return;
      unanswered.push({ id, index: s.index, kind: s.kind, sector: s.sector, sectors: s.sectors, seq: s.seq, ageMs: now - s.issuedAt });
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

  private eventArrived(): void {
    if (this.closed) return;
    try {
      this.takeResponses();
    } catch (err) {
      if (!(err instanceof BackendProtocolError)) throw err;
      this.backendBroke(err);
      return;
    }
    this.listener.responsesTaken();
  }

  /** Grants the request's data pages: the caller's own, or bounce pages filled from its data for a write. */
  private grantData(s: Shadow, pageCount: number, backendWrites: boolean): void {
    if (pageCount === 0) return;
    if (s.piecePfn >= 0) {
      const callerPages = this.pages.callerPages;
      for (let i = 0; i < pageCount; i++) {
        s.grefs[i] = callerPages.grant(s.piecePfn + i, backendWrites, s.ownBuffer);
        s.granted = i + 1;
      }
      return;
    }
    this.pages.take(pageCount, backendWrites, s.bounce);
    if (backendWrites || !s.data) return;
    const end = Math.min(s.data.length, s.dataOffset + s.sectors * (PAGE_SIZE / SECTORS_PER_PAGE));
    for (let i = 0, at = s.dataOffset; at < end; i++, at += PAGE_SIZE) {
      s.bounce[i]!.bytes.set(s.data.subarray(at, Math.min(end, at + PAGE_SIZE)));
    }
  }

  /** Writes the request into the next slot (in place, unless it straddles two pages) and claims it. */
  private write(s: Shadow, id: number, pageCount: number, operation: number): void {
    const { ring, writer } = this;
    const sring = ring.sring;
    const index = ring.reqProdPvt;
    if (ring.full) throw new Error('ring full');
    const page = sring.entryPage(index);
    const into = page ?? this.staging;
    const at = page ? sring.entryOffset(index) : 0;
    if (s.kind === 'discard') {
      writer.discard(into, at, s.secure ? BLKIF_DISCARD_SECURE : 0, this.handle, id, s.sector, s.sectors);
    } else if (pageCount <= BLKIF_MAX_SEGMENTS_PER_REQUEST) {
      writer.rw(into, at, operation, pageCount, this.handle, id, s.kind === 'flush' ? 0 : s.sector);
      for (let i = 0; i < pageCount; i++) writer.segment(into, at, i, this.gref(s, i), 0, lastSector(s.sectors, i));
    } else {
      this.pages.take(indirectPagesFor(pageCount), false, s.indirect);
      for (let i = 0; i < pageCount; i++) {
        const frame = s.indirect[Math.floor(i / BLKIF_SEGS_PER_INDIRECT_FRAME)]!;
        writeIndirectSegment(frame.bytes, i % BLKIF_SEGS_PER_INDIRECT_FRAME, this.gref(s, i), 0, lastSector(s.sectors, i));
      }
      writer.indirect(into, at, operation, pageCount, this.handle, id, s.sector);
      for (let i = 0; i < s.indirect.length; i++) writer.indirectPage(into, at, i, s.indirect[i]!.gref);
    }
    if (!page) sring.writeEntry(index, this.staging);
    s.index = index;
    s.issuedAt = performance.now();
    ring.claimRequest();
  }

  private gref(s: Shadow, page: number): number {
    return s.piecePfn >= 0 ? s.grefs[page]! : s.bounce[page]!.gref;
  }

  /** The request is answered: a read's data leaves its bounce pages, the grants go, the id is free again. */
  private finish(id: number, s: Shadow, status: number): void {
    const op = s.op!;
    if (s.kind === 'read' && status === BlkifStatus.OKAY && s.data && s.bounce.length > 0) {
      const data = s.data;
      const end = Math.min(data.length, s.dataOffset + s.sectors * (PAGE_SIZE / SECTORS_PER_PAGE));
      for (let i = 0, at = s.dataOffset; at < end; i++, at += PAGE_SIZE) {
        data.set(s.bounce[i]!.bytes.subarray(0, Math.min(PAGE_SIZE, end - at)), at);
      }
    }
    this.ungrant(s);
    s.op = undefined;
    s.data = undefined;
    this.freeIds.push(id);
    this.listener.requestAnswered(op, s.kind, s.sectors, status);
  }

  private ungrant(s: Shadow): void {
    if (s.granted > 0) {
      const callerPages = this.pages.callerPages;
      for (let i = 0; i < s.granted; i++) callerPages.done(s.piecePfn + i, s.grefs[i]!);
      s.granted = 0;
    }
    if (s.bounce.length > 0) {
      this.pages.give(s.bounce);
      s.bounce.length = 0;
    }
    if (s.indirect.length > 0) {
      this.pages.give(s.indirect);
      s.indirect.length = 0;
    }
  }
}

/** Whether a request of this kind carries data pages (a barrier may be empty, a flush and a discard never do). */
function carriesData(kind: WorkKind, sectors: number): boolean {
  return kind === 'read' || kind === 'write' || (kind === 'barrier' && sectors > 0);
}

/** last_sect of page `page` of a request of `sectors` sectors, each page from its first sector. */
function lastSector(sectors: number, page: number): number {
  return Math.min(SECTORS_PER_PAGE, sectors - page * SECTORS_PER_PAGE) - 1;
}
