/**
 * Shared rings as xen/include/public/io/ring.h defines them: a 64-byte
 * header (request and response producer indexes and their event indexes)
 * followed by a power-of-two number of fixed-size entries, each of which
 * holds a request or a response. The ring may span several pages; the pages
 * need not be contiguous in anyone's memory, so entries are copied in and
 * out rather than viewed in place (which is also what keeps a backend safe
 * from a frontend changing a request after it was checked: RING_COPY_REQUEST).
 *
 * Indexes are free-running 32-bit counters; all arithmetic on them is
 * modulo 2^32.
 */
import { PAGE_SIZE } from './platform.js';

/** Bytes of `struct __name##_sring` before the entries: four indexes and padding. */
export const SRING_HEADER_BYTES = 64;

/** Word indexes of the header fields. */
const REQ_PROD = 0;
const REQ_EVENT = 1;
const RSP_PROD = 2;
const RSP_EVENT = 3;

/** The largest power of two not above `n` (ring.h's __RD32). */
export function roundDownPow2(n: number): number {
  if (n < 1) return 0;
  return 2 ** Math.floor(Math.log2(n));
}

/** RING_SIZE for `pages` pages of entries of `entryBytes` bytes (__CONST_RING_SIZE). */
export function ringSize(pages: number, entryBytes: number): number {
  return roundDownPow2(Math.floor((pages * PAGE_SIZE - SRING_HEADER_BYTES) / entryBytes));
}

const u32 = (n: number) => n >>> 0;

/** The shared part of a ring: its header and its entries, over one or more pages. */
export class SharedRing {
  readonly size: number;
  private readonly header: Int32Array;

  constructor(
    readonly pages: readonly Uint8Array[],
    readonly entryBytes: number,
  ) {
    if (pages.length === 0) throw new Error('a ring needs at least one page');
    const first = pages[0]!;
    this.header = new Int32Array(first.buffer, first.byteOffset, 4);
    this.size = ringSize(pages.length, entryBytes);
    if (this.size < 1) throw new Error(`entries of ${entryBytes} bytes do not fit ${pages.length} pages`);
  }

  /**
   * SHARED_RING_INIT: empty, with both event indexes one past the
   * producers. ring.h starts the producers at 0; FRONT_RING_ATTACH lets a
   * front ring start anywhere, and `start` puts the shared indexes there
   * with it (tests start just below 2^32 to cross the wrap-around).
   */
  init(start = 0): void {
    Atomics.store(this.header, REQ_PROD, start | 0);
    Atomics.store(this.header, RSP_PROD, start | 0);
    Atomics.store(this.header, REQ_EVENT, (start + 1) | 0);
    Atomics.store(this.header, RSP_EVENT, (start + 1) | 0);
    this.pages[0]!.fill(0, 16, SRING_HEADER_BYTES);
  }

  get reqProd(): number {
    return u32(Atomics.load(this.header, REQ_PROD));
  }
  set reqProd(value: number) {
    Atomics.store(this.header, REQ_PROD, value | 0);
  }
  get reqEvent(): number {
    return u32(Atomics.load(this.header, REQ_EVENT));
  }
  set reqEvent(value: number) {
    Atomics.store(this.header, REQ_EVENT, value | 0);
  }
  get rspProd(): number {
    return u32(Atomics.load(this.header, RSP_PROD));
  }
  set rspProd(value: number) {
    Atomics.store(this.header, RSP_PROD, value | 0);
  }
  get rspEvent(): number {
    return u32(Atomics.load(this.header, RSP_EVENT));
  }
  set rspEvent(value: number) {
    Atomics.store(this.header, RSP_EVENT, value | 0);
  }

  /**
   * The page that holds all of entry `index` (modulo the ring size), to be
   * read or written in place at entryOffset(index); undefined when the
   * entry straddles two pages, which must then be copied with readEntry or
   * writeEntry.
   */
  entryPage(index: number): Uint8Array | undefined {
    const offset = SRING_HEADER_BYTES + (index & (this.size - 1)) * this.entryBytes;
    const at = offset % PAGE_SIZE;
    return at + this.entryBytes <= PAGE_SIZE ? this.pages[(offset - at) / PAGE_SIZE] : undefined;
  }

  /** Where entry `index` starts in its page (see entryPage). */
  entryOffset(index: number): number {
    return (SRING_HEADER_BYTES + (index & (this.size - 1)) * this.entryBytes) % PAGE_SIZE;
  }

  /** Copies entry `index` (taken modulo the ring size) out into `into`. */
  readEntry(index: number, into: Uint8Array): void {
    this.copy(index, into, false);
  }

  /** Copies `from` into entry `index`. */
  writeEntry(index: number, from: Uint8Array): void {
    this.copy(index, from, true);
  }

  private copy(index: number, bytes: Uint8Array, toRing: boolean): void {
    if (bytes.length > this.entryBytes) throw new Error(`entry of ${bytes.length} bytes in a ring of ${this.entryBytes}-byte entries`);
    let offset = SRING_HEADER_BYTES + (index & (this.size - 1)) * this.entryBytes;
    let done = 0;
    while (done < bytes.length) {
      const page = this.pages[Math.floor(offset / PAGE_SIZE)]!;
      const at = offset % PAGE_SIZE;
      const chunk = Math.min(bytes.length - done, PAGE_SIZE - at);
      if (toRing) page.set(bytes.subarray(done, done + chunk), at);
      else bytes.set(page.subarray(at, at + chunk), done);
      done += chunk;
      offset += chunk;
    }
  }
}

/** The frontend's private view of a ring (`struct __name##_front_ring`). */
export class FrontRing {
  reqProdPvt = 0;
  rspCons = 0;

  constructor(readonly sring: SharedRing) {}

  /**
   * SHARED_RING_INIT then FRONT_RING_ATTACH at `start` (FRONT_RING_INIT
   * when it is 0, as every frontend does by default).
   */
  static create(sring: SharedRing, start = 0): FrontRing {
    sring.init(start);
    const ring = new FrontRing(sring);
    ring.reqProdPvt = u32(start);
    ring.rspCons = u32(start);
    return ring;
  }

  get size(): number {
    return this.sring.size;
  }

  /** RING_FREE_REQUESTS. */
  get freeRequests(): number {
    return this.size - u32(this.reqProdPvt - this.rspCons);
  }

  get full(): boolean {
    return this.freeRequests === 0;
  }

  /** Writes the next request and advances the private producer index. */
  putRequest(request: Uint8Array): void {
    if (this.full) throw new Error('ring full');
    this.sring.writeEntry(this.reqProdPvt, request);
    this.reqProdPvt = u32(this.reqProdPvt + 1);
  }

  /**
   * Claims the next request's slot for the caller to write in place (see
   * SharedRing.entryPage) and advances the private producer index; returns
   * the slot's index.
   */
  claimRequest(): number {
    if (this.full) throw new Error('ring full');
    const index = this.reqProdPvt;
    this.reqProdPvt = u32(index + 1);
    return index;
  }

  /** RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publishes requests; true if the backend must be signalled. */
  pushRequestsAndCheckNotify(): boolean {
    const old = this.sring.reqProd;
    const now = this.reqProdPvt;
    this.sring.reqProd = now;
    return u32(now - this.sring.reqEvent) < u32(now - old);
  }

  /** Responses waiting, or -1 if the backend's producer index is implausible (RING_RESPONSE_PROD_OVERFLOW). */
  unconsumedResponses(): number {
    const prod = this.sring.rspProd;
    if (u32(prod - this.rspCons) > this.size) return -1;
    return u32(prod - this.rspCons);
  }

  /** Copies the next response out and advances the consumer index. */
  takeResponse(into: Uint8Array): void {
    this.sring.readEntry(this.rspCons, into);
    this.rspCons = u32(this.rspCons + 1);
  }

  /** The index of the next response, to be read in place, and advances the consumer index. */
  consumeResponse(): number {
    const index = this.rspCons;
    this.rspCons = u32(index + 1);
    return index;
  }

  /** RING_FINAL_CHECK_FOR_RESPONSES: asks to be woken for the next response, then checks again. */
  finalCheckForResponses(): boolean {
    if (this.unconsumedResponses() !== 0) return true;
    this.sring.rspEvent = u32(this.rspCons + 1);
    return this.unconsumedResponses() !== 0;
  }
}

/** The backend's private view of a ring (`struct __name##_back_ring`). */
export class BackRing {
  rspProdPvt = 0;
  reqCons = 0;

  constructor(readonly sring: SharedRing) {}

  /**
   * BACK_RING_ATTACH at the shared response producer: on a ring the
   * frontend has just initialised that is where every index stands, 0 for
   * FRONT_RING_INIT (so this is BACK_RING_INIT), or wherever its
   * FRONT_RING_ATTACH put them.
   */
  static attach(sring: SharedRing): BackRing {
    const ring = new BackRing(sring);
    ring.rspProdPvt = sring.rspProd;
    ring.reqCons = sring.rspProd;
    return ring;
  }

  get size(): number {
    return this.sring.size;
  }

  /**
   * Requests waiting (XEN_RING_NR_UNCONSUMED_REQUESTS), or -1 if the
   * frontend's producer index is more than a ring ahead of our responses
   * (RING_REQUEST_PROD_OVERFLOW): a hostile or broken frontend.
   */
  unconsumedRequests(): number {
    const prod = this.sring.reqProd;
    if (u32(prod - this.rspProdPvt) > this.size) return -1;
    const requests = u32(prod - this.reqCons);
    const room = this.size - u32(this.reqCons - this.rspProdPvt);
    return Math.min(requests, room);
  }

  /** Copies the next request out (never reading it in place again) and advances the consumer index. */
  takeRequest(into: Uint8Array): void {
    this.sring.readEntry(this.reqCons, into);
    this.reqCons = u32(this.reqCons + 1);
  }

  putResponse(response: Uint8Array): void {
    this.sring.writeEntry(this.rspProdPvt, response);
    this.rspProdPvt = u32(this.rspProdPvt + 1);
  }

  /** RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publishes responses; true if the frontend must be signalled. */
  pushResponsesAndCheckNotify(): boolean {
    const old = this.sring.rspProd;
    const now = this.rspProdPvt;
    this.sring.rspProd = now;
    return u32(now - this.sring.rspEvent) < u32(now - old);
  }

  /** RING_FINAL_CHECK_FOR_REQUESTS: asks to be woken for the next request, then checks again. */
  finalCheckForRequests(): number {
    const waiting = this.unconsumedRequests();
    if (waiting !== 0) return waiting;
    this.sring.reqEvent = u32(this.reqCons + 1);
    return this.unconsumedRequests();
  }
}
