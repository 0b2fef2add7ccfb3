import { PAGE_SIZE, PlatformError } from '../platform.js';
import {
  DOMID_LIMIT,
  DomainSlot,
  EVTCHN_PORTS,
  GRANT_ENTRIES,
  GrantEntry,
  Handle,
  MAX_DOMAINS,
  Maptrack,
  PENDING_WORDS,
  Port,
  SlotState,
  layoutFor,
  type EmbeddedDescriptor,
  type Layout,
} from './layout.js';

/**
 * Typed access to the shared state of the embedded hypervisor: the domain
 * table, the machine's page frames, and the regions the grant and event
 * channel code use. Every worker builds one over the same buffers.
 */
export class Machine {
  readonly words: Int32Array;
  readonly memory: Uint8Array;
  readonly layout: Layout;

  constructor(readonly descriptor: EmbeddedDescriptor) {
    this.words = new Int32Array(descriptor.control);
    this.memory = new Uint8Array(descriptor.memory, descriptor.memoryOffset, descriptor.frames * PAGE_SIZE);
    this.layout = layoutFor(descriptor.frames);
  }

  // ---- domains --------------------------------------------------------------

  slotBase(slot: number): number {
    return this.layout.domains + slot * DomainSlot.WORDS;
  }

  slotWord(slot: number, field: number): number {
    return Atomics.load(this.words, this.slotBase(slot) + field);
  }

  setSlotWord(slot: number, field: number, value: number): void {
    Atomics.store(this.words, this.slotBase(slot) + field, value);
  }

  /** The slot of a live (or dying) domain, or -1. */
  slotOf(domid: number): number {
    if (!Number.isInteger(domid) || domid < 0 || domid >= DOMID_LIMIT) return -1;
    return Atomics.load(this.words, this.layout.domidMap + domid) - 1;
  }

  /** The slot of a domain, or a PlatformError if there is no such domain. */
  requireSlot(domid: number): number {
    const slot = this.slotOf(domid);
    if (slot < 0) throw new PlatformError('ESRCH', `no domain ${domid}`);
    return slot;
  }

  mapDomid(domid: number, slot: number): void {
    Atomics.store(this.words, this.layout.domidMap + domid, slot + 1);
  }

  unmapDomid(domid: number): void {
    Atomics.store(this.words, this.layout.domidMap + domid, 0);
  }

  freeSlot(): number {
    for (let slot = 0; slot < MAX_DOMAINS; slot++) {
      if (Atomics.compareExchange(this.words, this.slotBase(slot) + DomainSlot.STATE, SlotState.FREE, SlotState.PAUSED) === SlotState.FREE) {
        return slot;
      }
    }
    throw new PlatformError('ENOSPC', `all ${MAX_DOMAINS} domain slots are in use`);
  }

  slotName(slot: number): string {
    const bytes = new Uint8Array(this.words.buffer, (this.slotBase(slot) + DomainSlot.NAME) * 4, DomainSlot.WORDS * 4 - DomainSlot.NAME * 4);
    const end = bytes.indexOf(0);
    return Buffer.from(bytes.subarray(0, end < 0 ? bytes.length : end)).toString('utf8');
  }

  setSlotName(slot: number, name: string): void {
    const bytes = new Uint8Array(this.words.buffer, (this.slotBase(slot) + DomainSlot.NAME) * 4, DomainSlot.WORDS * 4 - DomainSlot.NAME * 4);
    bytes.fill(0);
    bytes.set(Buffer.from(name, 'utf8').subarray(0, bytes.length - 1));
  }

  /** Changes a domain's state and wakes whoever waits for it to change. */
  setSlotState(slot: number, state: number): void {
    this.setSlotWord(slot, DomainSlot.STATE, state);
    Atomics.add(this.words, this.slotBase(slot) + DomainSlot.STATE_SEQ, 1);
    Atomics.notify(this.words, this.slotBase(slot) + DomainSlot.STATE_SEQ);
  }

  // ---- machine frames ---------------------------------------------------------

  /** Claims `count` contiguous free frames; returns the first. */
  allocFrames(count: number): number {
    const { frameBitmap, frames } = this.layout;
    let run = 0;
    for (let frame = 0; frame < frames; frame++) {
      run = this.bit(frameBitmap, frame) ? 0 : run + 1;
      if (run === count) {
        const first = frame - count + 1;
        for (let f = first; f <= frame; f++) this.setBit(frameBitmap, f);
        return first;
      }
    }
    throw new PlatformError('ENOSPC', `no ${count} contiguous free pages in a machine of ${frames}`);
  }

  freeFrames(first: number, count: number): void {
    this.memory.fill(0, first * PAGE_SIZE, (first + count) * PAGE_SIZE);
    for (let f = first; f < first + count; f++) {
      this.clearBit(this.layout.frameBitmap, f);
      this.clearBit(this.layout.pageBitmap, f);
    }
  }

  frameView(frame: number): Uint8Array {
    return this.memory.subarray(frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE);
  }

  bit(region: number, index: number): boolean {
    return (Atomics.load(this.words, region + (index >>> 5)) & (1 << (index & 31))) !== 0;
  }

  setBit(region: number, index: number): void {
    Atomics.or(this.words, region + (index >>> 5), 1 << (index & 31));
  }

  clearBit(region: number, index: number): void {
    Atomics.and(this.words, region + (index >>> 5), ~(1 << (index & 31)));
  }

  /** Sets a bit that was clear; false if someone else set it first. */
  claimBit(region: number, index: number): boolean {
    const mask = 1 << (index & 31);
    return (Atomics.or(this.words, region + (index >>> 5), mask) & mask) === 0;
  }

  // ---- grants, ports, handles -------------------------------------------------

  grantBase(slot: number, gref: number): number {
    return this.layout.grants + (slot * GRANT_ENTRIES + gref) * GrantEntry.WORDS;
  }

  portBase(slot: number, port: number): number {
    return this.layout.ports + (slot * EVTCHN_PORTS + port) * Port.WORDS;
  }

  pendingBase(slot: number): number {
    return this.layout.pending + slot * PENDING_WORDS;
  }

  maskBase(slot: number): number {
    return this.layout.masks + slot * PENDING_WORDS;
  }

  handleBase(handle: number): number {
    return this.layout.handles + handle * Handle.WORDS;
  }

  maptrackBase(entry: number): number {
    return this.layout.maptrack + entry * Maptrack.WORDS;
  }
}
