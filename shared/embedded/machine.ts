import { PAGE_SIZE, PlatformError } from '../platform.js';
import {
  DOMID_LIMIT,
  DomainSlot,
  EVTCHN_PORTS,
  GRANT_ENTRIES,
  GRANT_FRAME_ENTRIES,
  GRANT_FRAME_POOL,
  GrantEntry,
  Handle,
  Header,
  MAX_DOMAINS,
  MAX_GRANT_FRAMES,
  Maptrack,
  PORT_GROUP_POOL,
  PORT_GROUPS_PER_DOMAIN,
  PORTS_PER_GROUP,
  Port,
  PortGroup,
  SlotState,
  layoutFor,
  type EmbeddedDescriptor,
  type Layout,
} from './layout.js';
import { giveChunk, takeChunk, type ChunkPool } from './pool.js';

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/**
 * Typed access to the shared state of the embedded hypervisor: the domain
 * table, the machine's page frames, and the regions the grant and event
 * channel code use. Every worker builds one over the same buffers.
 */
export class Machine {
  readonly words: Int32Array;
  readonly memory: Uint8Array;
  readonly layout: Layout;
  readonly grantFramePool: ChunkPool;
  readonly portGroupPool: ChunkPool;

  constructor(readonly descriptor: EmbeddedDescriptor) {
    this.words = new Int32Array(descriptor.control);
    this.memory = new Uint8Array(descriptor.memory, descriptor.memoryOffset, descriptor.frames * PAGE_SIZE);
    this.layout = layoutFor(descriptor.frames);
    const { grantFrameBitmap, grantFrames, portGroupBitmap, portGroups } = this.layout;
    this.grantFramePool = { bitmap: grantFrameBitmap, base: grantFrames, chunkWords: GRANT_FRAME_ENTRIES * GrantEntry.WORDS, chunks: GRANT_FRAME_POOL };
    this.portGroupPool = { bitmap: portGroupBitmap, base: portGroups, chunkWords: PortGroup.WORDS, chunks: PORT_GROUP_POOL };
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

  /** Takes the lowest free slot: a scan as long as the domains that exist, not the table. */
  freeSlot(): number {
    for (let slot = 0; slot < MAX_DOMAINS; slot++) {
      if (Atomics.compareExchange(this.words, this.slotBase(slot) + DomainSlot.STATE, SlotState.FREE, SlotState.PAUSED) === SlotState.FREE) {
        this.raiseHigh(Header.SLOT_HIGH, slot + 1);
        return slot;
      }
    }
    throw new PlatformError('ENOSPC', `all ${MAX_DOMAINS} domain slots are in use`);
  }

  /** One past the highest slot, handle or maptrack entry ever used (a Header field). */
  high(field: number): number {
    return Atomics.load(this.words, this.layout.header + field);
  }

  /** Raises a high-water mark to at least `value`. */
  raiseHigh(field: number, value: number): void {
    const at = this.layout.header + field;
    for (let seen = Atomics.load(this.words, at); seen < value; ) {
      const was = Atomics.compareExchange(this.words, at, seen, value);
      if (was === seen) return;
      seen = was;
    }
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
      // Whole words of taken frames at a time: a machine of many domains is mostly taken.
      if ((frame & 31) === 0 && Atomics.load(this.words, frameBitmap + (frame >>> 5)) === -1) {
        run = 0;
        frame += 31;
        continue;
      }
      run = this.bit(frameBitmap, frame) ? 0 : run + 1;
      if (run === count) {
        const first = frame - count + 1;
        for (let f = first; f <= frame; f++) this.setBit(frameBitmap, f);
        return first;
      }
    }
    throw new PlatformError('ENOSPC', `no ${count} contiguous free pages in a machine of ${frames}`);
  }

  /**
   * Gives frames back, zeroed for their next domain. A page never written
   * is left alone rather than written with zeros: Linux has not given it
   * memory yet, and zeroing it would.
   */
  freeFrames(first: number, count: number): void {
    for (let f = first; f < first + count; f++) {
      const page = Buffer.from(this.memory.buffer, this.memory.byteOffset + f * PAGE_SIZE, PAGE_SIZE);
      if (!page.equals(ZERO_PAGE)) page.fill(0);
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

  /** Word offset of a grant entry of a domain, or -1 if the domain has no frame holding it. */
  grantBase(slot: number, gref: number): number {
    if (gref < 0 || gref >= GRANT_ENTRIES) return -1;
    const frame = Atomics.load(this.words, this.layout.grantDirs + slot * MAX_GRANT_FRAMES + Math.floor(gref / GRANT_FRAME_ENTRIES));
    return frame === 0 ? -1 : frame + (gref % GRANT_FRAME_ENTRIES) * GrantEntry.WORDS;
  }

  /** Grant entries a domain has frames for. */
  grantLimit(slot: number): number {
    return this.slotWord(slot, DomainSlot.GRANT_FRAMES) * GRANT_FRAME_ENTRIES;
  }

  /**
   * Gives a domain its next grant frame (gnttab_grow_table); false when it
   * has all MAX_GRANT_FRAMES or the machine has no frame left. Two workers
   * of a domain growing it at once grow it by one.
   */
  growGrantTable(slot: number, had: number): boolean {
    if (had >= MAX_GRANT_FRAMES) return false;
    const dir = this.layout.grantDirs + slot * MAX_GRANT_FRAMES + had;
    if (Atomics.load(this.words, dir) === 0) {
      const frame = takeChunk(this.words, this.grantFramePool);
      if (frame < 0) return false;
      if (Atomics.compareExchange(this.words, dir, 0, frame) !== 0) giveChunk(this.words, this.grantFramePool, frame);
    }
    Atomics.compareExchange(this.words, this.slotBase(slot) + DomainSlot.GRANT_FRAMES, had, had + 1);
    return true;
  }

  /** Every grant frame of a domain, in order. */
  *grantFrames(slot: number): Generator<number> {
    const count = this.slotWord(slot, DomainSlot.GRANT_FRAMES);
    for (let i = 0; i < count; i++) yield Atomics.load(this.words, this.layout.grantDirs + slot * MAX_GRANT_FRAMES + i);
  }

  /** Gives back a dead domain's grant frames, zeroed. */
  releaseGrantTable(slot: number): void {
    for (let i = 0; i < MAX_GRANT_FRAMES; i++) {
      const dir = this.layout.grantDirs + slot * MAX_GRANT_FRAMES + i;
      const frame = Atomics.exchange(this.words, dir, 0);
      if (frame === 0) break;
      giveChunk(this.words, this.grantFramePool, frame);
    }
    this.setSlotWord(slot, DomainSlot.GRANT_FRAMES, 0);
  }

  /** Word offset of a port group of a domain, or -1 if the domain has none there. */
  portGroup(slot: number, group: number): number {
    if (group < 0 || group >= PORT_GROUPS_PER_DOMAIN) return -1;
    return Atomics.load(this.words, this.layout.portDirs + slot * PORT_GROUPS_PER_DOMAIN + group) || -1;
  }

  /** Gives a domain port group `group` if it has none there; its word offset, or -1 if the machine has none left. */
  addPortGroup(slot: number, group: number): number {
    const dir = this.layout.portDirs + slot * PORT_GROUPS_PER_DOMAIN + group;
    const had = Atomics.load(this.words, dir);
    if (had !== 0) return had;
    const base = takeChunk(this.words, this.portGroupPool);
    if (base < 0) return -1;
    const was = Atomics.compareExchange(this.words, dir, 0, base);
    if (was === 0) return base;
    giveChunk(this.words, this.portGroupPool, base);
    return was;
  }

  /** The groups a domain holds, as [group, word offset]. */
  *portGroups(slot: number): Generator<[number, number]> {
    for (let group = 0; group < PORT_GROUPS_PER_DOMAIN; group++) {
      const base = Atomics.load(this.words, this.layout.portDirs + slot * PORT_GROUPS_PER_DOMAIN + group);
      if (base !== 0) yield [group, base];
    }
  }

  /** Gives back a dead domain's port groups, zeroed. */
  releasePortGroups(slot: number): void {
    for (let group = 0; group < PORT_GROUPS_PER_DOMAIN; group++) {
      const base = Atomics.exchange(this.words, this.layout.portDirs + slot * PORT_GROUPS_PER_DOMAIN + group, 0);
      if (base !== 0) giveChunk(this.words, this.portGroupPool, base);
    }
  }

  /** Word offset of a port of a domain, or -1 if it is out of range or in no group the domain holds. */
  portBase(slot: number, port: number): number {
    if (!Number.isInteger(port) || port <= 0 || port >= EVTCHN_PORTS) return -1;
    const group = this.portGroup(slot, Math.floor(port / PORTS_PER_GROUP));
    return group < 0 ? -1 : group + PortGroup.PORTS + (port % PORTS_PER_GROUP) * Port.WORDS;
  }

  handleBase(handle: number): number {
    return this.layout.handles + handle * Handle.WORDS;
  }

  maptrackBase(entry: number): number {
    return this.layout.maptrack + entry * Maptrack.WORDS;
  }
}
