/**
 * A blkif frontend's ring made by hand, as a hostile frontend has it: 1 to
 * 16 pages granted to the backend, an event channel, and raw control of
 * the request producer index (it may publish slots it never wrote, or jump
 * beyond the ring) and of notifications (none, the ones ring.h asks for,
 * or storms).
 */
import { decodeResponse, layoutOf, type BlkifAbi, type BlkifResponse } from '../../shared/blkif.js';
import type { EventDispatcher } from '../../shared/event-dispatcher.js';
import type { DomainInterface } from '../../shared/platform.js';
import { FrontRing, SharedRing } from '../../shared/ring.js';

const u32 = (n: number) => n >>> 0;

/** A response as read off the ring: decoded, the index it was read at, and the slot's bytes. */
export interface TakenResponse {
  readonly response: BlkifResponse;
  readonly index: number;
  readonly raw: Uint8Array;
}

export class HostileRing {
  readonly front: FrontRing;
  readonly grefs: number[];
  readonly port: number;
  private readonly pfns: number[];
  private readonly entry: Uint8Array;
  private wake: (() => void) | undefined;

  constructor(
    private readonly domain: DomainInterface,
    private readonly events: EventDispatcher,
    backendDomid: number,
    readonly order: number,
    readonly abi: BlkifAbi,
  ) {
    this.pfns = domain.memory.allocPages(1 << order);
    this.grefs = this.pfns.map((pfn) => domain.grants.grantAccess(backendDomid, pfn, false));
    const layout = layoutOf(abi);
    this.entry = new Uint8Array(layout.entryBytes);
    this.front = FrontRing.create(new SharedRing(this.pfns.map((pfn) => domain.memory.page(pfn)), layout.entryBytes));
    this.port = events.channels.allocUnbound(backendDomid);
    events.on(this.port, () => this.wake?.());
  }

  get size(): number {
    return this.front.size;
  }

  get entryBytes(): number {
    return this.entry.length;
  }

  /** The keys a frontend publishes for this ring (blkif.h), in either of its ways for one page. */
  keys(): Record<string, string | number> {
    const refs: Record<string, number> =
      this.order === 0 ? { 'ring-ref': this.grefs[0]! } : Object.fromEntries(this.grefs.map((gref, i) => [`ring-ref${i}`, gref]));
    return {
      protocol: this.abi === 'x86_64' ? 'x86_64-abi' : 'x86_32-abi',
      ...(this.order === 0 ? {} : { 'ring-page-order': this.order }),
      ...refs,
      'event-channel': this.port,
    };
  }

  /** Writes a request entry into the next slot (not yet published). */
  put(entry: Uint8Array): void {
    this.front.putRequest(entry);
  }

  /** Publishes what was put; true when ring.h says the backend must be notified. */
  publish(): boolean {
    return this.front.pushRequestsAndCheckNotify();
  }

  notify(times = 1): void {
    for (let i = 0; i < times; i++) this.events.channels.notify(this.port);
  }

  /**
   * Copies of what the next `count` slots hold (responses of the previous
   * lap, or zeros), for the oracle to know what publishing them unwritten
   * asks.
   */
  staleSlots(count: number): Uint8Array[] {
    return Array.from({ length: count }, (_, i) => {
      const copy = new Uint8Array(this.entry.length);
      this.front.sring.readEntry(u32(this.front.reqProdPvt + i), copy);
      return copy;
    });
  }

  /** Publishes the next `count` slots without writing them: the backend finds whatever they held. */
  publishStale(count: number): void {
    this.front.reqProdPvt = u32(this.front.reqProdPvt + count);
    this.front.pushRequestsAndCheckNotify();
  }

  /** Sets the request producer `distance` slots past the last response: more than a ring is an overrun. */
  overrun(distance: number): void {
    this.front.sring.reqProd = u32(this.front.rspCons + distance);
  }

  /**
   * The responses waiting, each with the ring index it was read at, or
   * undefined if the backend's producer index is more than a ring ahead.
   */
  takeResponses(): TakenResponse[] | undefined {
    const out: TakenResponse[] = [];
    for (;;) {
      const waiting = this.front.unconsumedResponses();
      if (waiting < 0) return undefined;
      if (waiting === 0) return out;
      for (let i = 0; i < waiting; i++) {
        const index = this.front.rspCons;
        this.front.takeResponse(this.entry);
        out.push({ response: decodeResponse(this.abi, this.entry), index, raw: Uint8Array.from(this.entry) });
      }
    }
  }

  /** Where the ring's indexes stand, shared and private, for a report. */
  describeIndexes(): string {
    const { sring, reqProdPvt, rspCons } = this.front;
    return `req_prod ${sring.reqProd} (private ${reqProdPvt}), rsp_prod ${sring.rspProd}, rsp_cons ${rspCons}, ring of ${this.size}`;
  }

  /**
   * Asks to be notified of the next response (RING_FINAL_CHECK_FOR_RESPONSES)
   * and waits for the event, or `timeoutMs`; resolves at once if responses
   * are already there.
   */
  async waitForResponses(timeoutMs: number): Promise<void> {
    if (this.front.finalCheckForResponses()) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wake = resolve;
      timer = setTimeout(resolve, timeoutMs);
      // A response may have landed between the check and the wait.
      if (this.front.unconsumedResponses() !== 0) resolve();
    });
    this.wake = undefined;
    clearTimeout(timer);
  }

  /** Ends the ring's grants (false if the backend still maps a page), closes the port, frees what was let go. */
  release(): boolean {
    this.events.off(this.port);
    try {
      this.events.channels.unbind(this.port);
    } catch {
      // Already closed with the other end.
    }
    const ended = this.grefs.map((gref) => this.domain.grants.endAccess(gref));
    this.domain.memory.freePages(this.pfns.filter((_, i) => ended[i]));
    return ended.every(Boolean);
  }
}
