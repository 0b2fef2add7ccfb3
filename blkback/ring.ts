import {
  BLKIF_DISCARD_SECURE,
  BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
  BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BlkifOp,
  BlkifStatus,
  SECTOR_SIZE,
  SECTORS_PER_PAGE,
  BLKIF_SEGMENT_BYTES,
  BlkifRequestView,
  indirectPagesFor,
  layoutOf,
  writeResponse,
  type BlkifAbi,
  type BlkifRequest,
} from '../shared/blkif.js';
import type { Logger } from '../shared/log.js';
import type { GrantMapping, GrantTable } from '../shared/platform.js';
import { BackRing, SharedRing } from '../shared/ring.js';
import type { PageChunk } from './io-task.js';
import type { BlockIo, RequestQueue } from './queue.js';
import { RingCounterWriter } from './ring-counters.js';

/** What a ring needs to know of its store: its size and what it allows. Structured-clonable. */
export interface StoreShape {
  readonly description: string;
  /** Size in 512-byte sectors. */
  readonly sectors: number;
  readonly readOnly: boolean;
  /** Set when the store can discard; `secure` as discard-secure publishes it. */
  readonly discard: { readonly secure: boolean } | undefined;
}

/** What a ring's requests may ask for: what was published, and the store's size. */
export interface RingPolicy {
  readonly abi: BlkifAbi;
  readonly store: StoreShape;
  /** Segments an indirect request may carry (feature-max-indirect-segments). */
  readonly maxIndirectSegments: number;
  readonly flush: boolean;
  readonly barrier: boolean;
}

/** Why a request is answered without any I/O (refused, or with nothing to do). */
type Refusal = { readonly status: number; readonly why: string };

const refuse = (why: string): Refusal => ({ status: BlkifStatus.ERROR, why });
/** Nothing to do: answered at once. */
const done = (why: string): Refusal => ({ status: BlkifStatus.OKAY, why });
const unsupported = (why: string): Refusal => ({ status: BlkifStatus.EOPNOTSUPP, why });

/**
 * The operation a response names: the request's, except that an indirect
 * request is answered with the operation it carries (its indirect_op), as
 * Linux's blkback answers and Linux's blkfront insists ("response has wrong
 * operation"), even when that operation is one it refuses.
 */
export function responseOperation(request: BlkifRequest): number {
  return request.kind === 'indirect' ? request.indirectOp : request.operation;
}

/**
 * Where a ring lives: the thread that owns it maps the frontend's pages and
 * binds its event channel through its own attachment to the platform.
 */
export interface RingHost {
  /** The device the ring belongs to, for messages (its backend node). */
  readonly name: string;
  readonly log: Logger;
  /** Our grant table, to map the frontend's indirect pages. */
  readonly grants: GrantTable;
  /** The frontend's domain. */
  readonly frontend: number;
  /** Binds the frontend's port, with its handler; the local port. */
  bind(remotePort: number, handler: () => void): number;
  unbind(port: number): void;
  notify(port: number): void;
}

/**
 * One ring of a block device (one queue): it takes the frontend's requests
 * off the ring, checks every field before it trusts it, hands the I/O to
 * the request queue, and pushes each response as its request completes,
 * signalling the frontend once per batch. A frontend that moves its
 * producer index more than a ring ahead is cut off.
 */
export class BlkbackRing {
  private readonly back: BackRing;
  private readonly port: number;
  private readonly entry: Uint8Array;
  private readonly response: Uint8Array;
  /** The request being handled, decoded in place into fields reused for the next. */
  private readonly view: BlkifRequestView;
  /** Requests taken off the ring and not yet answered. */
  private outstanding = 0;
  private stopped = false;
  private pushScheduled = false;
  private drainWaiters: (() => void)[] = [];
  constructor(
    private readonly host: RingHost,
    private readonly mapping: GrantMapping,
    remotePort: number,
    private readonly queue: RequestQueue,
    private readonly policy: RingPolicy,
    /** The ring is broken beyond repair: the device goes Closing with this error. */
    private readonly broken: (why: string) => void,
    /** The ring's counters, in shared memory that the device's thread reads without asking. */
    private readonly counters: RingCounterWriter,
  ) {
    const layout = layoutOf(policy.abi);
    this.back = BackRing.attach(new SharedRing(mapping.pages, layout.entryBytes));
    this.entry = new Uint8Array(layout.entryBytes);
    this.response = new Uint8Array(layout.entryBytes);
    this.view = new BlkifRequestView(policy.abi, Math.max(BLKIF_MAX_SEGMENTS_PER_REQUEST, policy.maxIndirectSegments));
    this.port = host.bind(remotePort, () => this.service());
    // Requests may have been queued before we bound the channel.
    queueMicrotask(() => this.service());
  }

  /** Slots of the ring: the most requests it can hold. */
  get size(): number {
    return this.back.size;
  }

  /**
   * Stops taking requests, lets those taken finish and be answered, then
   * lets go of the ring and its event channel.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.outstanding > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    this.pushResponses();
    this.host.unbind(this.port);
    this.mapping.unmap();
  }

  private service(): void {
    if (this.stopped) return;
    for (;;) {
      const waiting = this.back.unconsumedRequests();
      if (waiting < 0) {
        this.stopped = true;
        this.broken('the frontend moved its request producer more than a ring ahead of the responses');
        return;
      }
      // One clock read for the pass: its requests are taken off the ring together.
      const takenAt = waiting > 0 ? performance.now() : 0;
      for (let i = 0; i < waiting; i++) {
        this.back.takeRequest(this.entry);
        this.handle(this.view.read(this.entry), takenAt);
      }
      if (this.back.finalCheckForRequests() === 0) return;
    }
  }

  /** `takenAt`: when it was taken off the ring (performance.now()), from which its latency is counted. */
  private handle(request: BlkifRequestView, takenAt: number): void {
    this.outstanding++;
    this.counters.inFlight(this.outstanding);
    // The view is reused for the next request: what the response echoes is taken now.
    const { idLow, idHigh } = request;
    const operation = request.kind === 'indirect' ? request.indirectOp : request.operation;
    // One response per request taken, whatever happens below: a second one
    // would answer a request the frontend may already have reused its id
    // for (Linux's blkfront stops the disk when one comes).
    let answered = false;
    // The bytes it moves, counted once it has: a refusal or a discard moves none.
    let bytes = 0;
    const answer = (status: number) => {
      if (answered) {
        this.host.log.error(`${this.host.name}: internal error: request ${(BigInt(idHigh) << 32n) | BigInt(idLow >>> 0)} (operation ${operation}) completed a second time (status ${status}): not answered again`);
        return;
      }
      answered = true;
      this.respond(idLow, idHigh, operation, status, bytes, takenAt);
    };
    let io: BlockIo | Refusal;
    try {
      io = this.translate(request);
    } catch (err) {
      io = refuse((err as Error).message);
    }
    if ('status' in io) {
      this.host.log.debug(`${this.host.name}: request ${request.id} (operation ${request.operation}) answered at once: ${io.why}`);
      answer(io.status);
      return;
    }
    if (io.kind === 'read' || io.kind === 'write' || io.kind === 'barrier') bytes = io.length;
    this.queue.submit(io, answer);
  }

  /** What a request asks of the store, once every field is checked. */
  private translate(request: BlkifRequestView): BlockIo | Refusal {
    const { store } = this.policy;
    switch (request.kind) {
      case 'discard': {
        // A discard is a write: refused on a read-only disk as one.
        if (store.readOnly) return refuse('the device is read-only');
        if (!store.discard) return unsupported('discard is not offered');
        const range = this.range(request.sector, request.nrSectors);
        if ('status' in range) return range;
        if (range.length === 0) return done('a discard of nothing');
        // blkif.h: the flag is ignored where discard-secure is 0.
        const secure = (request.flag & BLKIF_DISCARD_SECURE) !== 0 && store.discard.secure;
        return { kind: 'discard', offset: range.offset, length: range.length, secure };
      }
      case 'indirect': {
        if (request.indirectOp !== BlkifOp.READ && request.indirectOp !== BlkifOp.WRITE) {
          return refuse(`indirect operation ${request.indirectOp} is neither READ nor WRITE`);
        }
        if (this.policy.maxIndirectSegments === 0) return unsupported('indirect requests are not offered');
        if (request.nrSegments < 1 || request.nrSegments > this.policy.maxIndirectSegments) {
          return refuse(`${request.nrSegments} indirect segments (1..${this.policy.maxIndirectSegments})`);
        }
        const read = this.readIndirectSegments(request);
        if (read) return read;
        return this.dataIo(request.indirectOp === BlkifOp.READ ? 'read' : 'write', request);
      }
      case 'rw':
        switch (request.operation) {
          case BlkifOp.READ:
          case BlkifOp.WRITE:
            if (request.nrSegments < 1 || request.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
              return refuse(`${request.nrSegments} segments (1..${BLKIF_MAX_SEGMENTS_PER_REQUEST})`);
            }
            return this.dataIo(request.operation === BlkifOp.READ ? 'read' : 'write', request);
          case BlkifOp.WRITE_BARRIER:
          case BlkifOp.FLUSH_DISKCACHE: {
            const barrier = request.operation === BlkifOp.WRITE_BARRIER;
            if (barrier ? !this.policy.barrier : !this.policy.flush) return unsupported(barrier ? 'barriers are not offered' : 'flushes are not offered');
            if (request.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return refuse(`${request.nrSegments} segments`);
            // With no data, both are a flush (FreeBSD takes an empty barrier
            // so too); with data, a write made durable before anything after it.
            if (request.nrSegments === 0) return { kind: 'flush' };
            const write = this.dataIo('write', request);
            if ('status' in write) return write;
            if (write.kind !== 'write') return write;
            return { kind: 'barrier', offset: write.offset, length: write.length, chunks: write.chunks };
          }
          default:
            return unsupported(`operation ${request.operation} is not one blkif.h defines`);
        }
    }
  }

  /** A read or write of the pages the request's segments name, starting at its sector. */
  private dataIo(kind: 'read' | 'write', request: BlkifRequestView): BlockIo | Refusal {
    if (kind === 'write' && this.policy.store.readOnly) return refuse('the device is read-only');
    const chunks: PageChunk[] = [];
    let sectors = 0;
    for (let i = 0; i < request.segmentCount; i++) {
      const first = request.firstSects[i]!;
      const last = request.lastSects[i]!;
      if (first > last || last >= SECTORS_PER_PAGE) return refuse(`segment sectors ${first}..${last} are not within a page`);
      const count = last - first + 1;
      chunks.push({ gref: request.grefs[i]!, start: first * SECTOR_SIZE, length: count * SECTOR_SIZE });
      sectors += count;
    }
    const range = this.range(request.sector, sectors);
    if ('status' in range) return range;
    return { kind, offset: range.offset, length: range.length, chunks };
  }

  /**
   * The byte range of `count` sectors from `sector`, if it lies within the
   * device. Both are numbers: exact below 2^53, and anything at or above
   * that (a 64-bit field read inexactly) is past the end of any disk.
   */
  private range(sector: number, count: number): { offset: number; length: number } | Refusal {
    const end = sector + count;
    if (end > this.policy.store.sectors) {
      return refuse(`sectors ${sector}..${end} are past the end of the device (${this.policy.store.sectors} sectors)`);
    }
    return { offset: sector * SECTOR_SIZE, length: count * SECTOR_SIZE };
  }

  /**
   * Reads an indirect request's segments from its indirect pages into the
   * view: mapped read-only just long enough to copy the entries out, so
   * that the frontend cannot change them after they were checked. A
   * refusal if the pages cannot be mapped.
   */
  private readIndirectSegments(request: BlkifRequestView): Refusal | undefined {
    const pages = indirectPagesFor(request.nrSegments);
    if (pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) return refuse(`${pages} indirect pages`);
    const grefs = Array.from(request.indirectGrefs.subarray(0, pages));
    let mapping: GrantMapping;
    try {
      mapping = this.host.grants.map(this.host.frontend, grefs, false);
    } catch (err) {
      return refuse(`indirect pages ${grefs.join(',')}: ${(err as Error).message}`);
    }
    try {
      let left = request.nrSegments;
      for (const page of mapping.pages) {
        const here = Math.min(left, page.length / BLKIF_SEGMENT_BYTES);
        request.readIndirectSegments(page, here);
        left -= here;
      }
      return undefined;
    } finally {
      mapping.unmap();
    }
  }

  private respond(idLow: number, idHigh: number, operation: number, status: number, bytes: number, takenAt: number): void {
    writeResponse(this.policy.abi, this.response, 0, idLow, idHigh, operation, status);
    this.back.putResponse(this.response);
    this.outstanding--;
    this.counters.answered(operation, status, bytes, Math.round((performance.now() - takenAt) * 1000), this.outstanding);
    // Responses completed together go out with one signal.
    if (!this.pushScheduled) {
      this.pushScheduled = true;
      queueMicrotask(() => {
        this.pushScheduled = false;
        this.pushResponses();
        if (this.outstanding === 0) for (const resolve of this.drainWaiters.splice(0)) resolve();
      });
    }
  }

  private pushResponses(): void {
    if (this.back.pushResponsesAndCheckNotify()) this.host.notify(this.port);
  }
}
