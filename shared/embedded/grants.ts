import {
  GNTTAB_NR_RESERVED_ENTRIES,
  GrantStatus,
  PAGE_SIZE,
  PlatformError,
  type GrantCopy,
  type GrantCopyEnd,
  type GrantMapping,
  type GrantTable,
  type GuestMemory,
  type SharedPages,
} from '../platform.js';
import { DOMID_LIMIT, DomainSlot, GrantEntry, GrantState, Header, MAX_MAPTRACK, Maptrack, SlotState } from './layout.js';
import type { Machine } from './machine.js';

/** How many times a mapper retries an entry its granter is busy ending before giving up (GNTST_eagain). */
const PIN_RETRIES = 1000;

function grantError(status: number, message: string): PlatformError {
  const errno = status === GrantStatus.bad_domain ? 'ESRCH' : status === GrantStatus.no_space ? 'ENOSPC' : 'EINVAL';
  return new PlatformError(errno, message, status);
}

/**
 * A domain's grant table with Xen's v1 semantics. As granter, a domain
 * grants one page to one other domain, read-only or read-write, and may end
 * access only when nobody has the page mapped. As grantee, it maps or copies
 * through references granted to it, and nothing else of the granter's memory.
 */
export class EmbeddedGrantTable implements GrantTable {
  private hint = GNTTAB_NR_RESERVED_ENTRIES;

  private maptrackHint = 0;

  constructor(
    private readonly machine: Machine,
    readonly domid: number,
    /** Called when a dying domain's last mapped page is unmapped. */
    private readonly lastPinReleased: (slot: number) => void,
    /** The worker that maps through this table, so that its mappings can be taken back if it dies. */
    private readonly tag: number,
    /** The domain's memory, which shared pages come from. */
    private readonly memory: GuestMemory,
  ) {}

  share(remoteDomid: number, count: number, readonly: boolean): SharedPages {
    const pfns = this.memory.allocPages(count);
    const grefs: number[] = [];
    try {
      for (const pfn of pfns) grefs.push(this.grantAccess(remoteDomid, pfn, readonly));
    } catch (err) {
      for (const gref of grefs) this.endAccess(gref);
      this.memory.freePages(pfns);
      throw err;
    }
    return new EmbeddedSharedPages(grefs, pfns.map((pfn) => this.memory.page(pfn)), pfns);
  }

  unshare(shared: SharedPages): SharedPages | undefined {
    if (!(shared instanceof EmbeddedSharedPages)) throw new PlatformError('EINVAL', 'these pages were not shared by this platform');
    const left = new EmbeddedSharedPages([], [], []);
    shared.grefs.forEach((gref, i) => {
      if (this.endAccess(gref)) this.memory.freePages([shared.pfns[i]!]);
      else left.add(gref, shared.pages[i]!, shared.pfns[i]!);
    });
    return left.grefs.length > 0 ? left : undefined;
  }

  private get slot(): number {
    return this.machine.requireSlot(this.domid);
  }

  grantAccess(remoteDomid: number, pfn: number, readonly: boolean): number {
    const slot = this.slot;
    this.checkGrantable(slot, remoteDomid, pfn);
    const words = this.machine.words;
    // Round the frames the domain has; only when they are full does it get another.
    for (;;) {
      const frames = this.machine.slotWord(slot, DomainSlot.GRANT_FRAMES);
      const limit = this.machine.grantLimit(slot);
      for (let tried = 0; tried < limit - GNTTAB_NR_RESERVED_ENTRIES; tried++) {
        const gref = this.hint < limit ? this.hint : GNTTAB_NR_RESERVED_ENTRIES;
        this.hint = gref + 1 >= limit ? GNTTAB_NR_RESERVED_ENTRIES : gref + 1;
        const base = this.machine.grantBase(slot, gref);
        if (Atomics.compareExchange(words, base + GrantEntry.STATE, GrantState.FREE, GrantState.RESERVED) === GrantState.FREE) {
          this.publish(base, remoteDomid, pfn, readonly);
          return gref;
        }
      }
      if (!this.machine.growGrantTable(slot, frames)) break;
      this.hint = limit;
    }
    throw grantError(GrantStatus.no_space, `domain ${this.domid} has no free grant entry`);
  }

  grantReserved(gref: number, remoteDomid: number, pfn: number, readonly: boolean): void {
    const slot = this.slot;
    if (!Number.isInteger(gref) || gref < 0 || gref >= GNTTAB_NR_RESERVED_ENTRIES) {
      throw grantError(GrantStatus.bad_gntref, `${gref} is not a reserved grant reference`);
    }
    this.checkGrantable(slot, remoteDomid, pfn);
    const base = this.entry(slot, gref);
    if (Atomics.compareExchange(this.machine.words, base + GrantEntry.STATE, GrantState.FREE, GrantState.RESERVED) !== GrantState.FREE) {
      throw new PlatformError('EBUSY', `grant reference ${gref} of domain ${this.domid} is in use`);
    }
    this.publish(base, remoteDomid, pfn, readonly);
  }

  endAccess(gref: number): boolean {
    const slot = this.slot;
    const base = this.entry(slot, gref);
    const words = this.machine.words;
    const state = Atomics.load(words, base + GrantEntry.STATE);
    if (state !== GrantState.GRANTED_RW && state !== GrantState.GRANTED_RO) {
      throw grantError(GrantStatus.bad_gntref, `grant reference ${gref} of domain ${this.domid} is not granted`);
    }
    if (Atomics.compareExchange(words, base + GrantEntry.STATE, state, GrantState.ENDING) !== state) return false;
    if (Atomics.load(words, base + GrantEntry.PINS) > 0) {
      Atomics.store(words, base + GrantEntry.STATE, state);
      return false;
    }
    Atomics.store(words, base + GrantEntry.GRANTEE, 0);
    Atomics.store(words, base + GrantEntry.PFN, 0);
    Atomics.store(words, base + GrantEntry.STATE, GrantState.FREE);
    return true;
  }

  map(granterDomid: number, grefs: readonly number[], writable: boolean): GrantMapping {
    const granterSlot = this.machine.slotOf(granterDomid);
    if (granterSlot < 0) throw grantError(GrantStatus.bad_domain, `no domain ${granterDomid}`);
    const pinned: number[] = [];
    const tracked: number[] = [];
    const release = () => {
      for (const entry of tracked) untrack(this.machine, entry);
      for (const base of pinned) unpinEntry(this.machine, granterSlot, base, this.lastPinReleased);
    };
    try {
      for (const gref of grefs) {
        const base = this.pin(granterSlot, granterDomid, gref, writable);
        pinned.push(base);
        tracked.push(this.track(granterSlot, base));
      }
    } catch (err) {
      release();
      throw err;
    }
    const baseFrame = this.machine.slotWord(granterSlot, DomainSlot.BASE_FRAME);
    const pages = pinned.map((base) => this.machine.frameView(baseFrame + Atomics.load(this.machine.words, base + GrantEntry.PFN)));
    let mapped = true;
    return {
      pages,
      writable,
      unmap: () => {
        if (!mapped) return;
        mapped = false;
        release();
      },
    };
  }

  copy(ops: readonly GrantCopy[]): void {
    for (const op of ops) {
      if (!Number.isInteger(op.length) || op.length < 0) throw grantError(GrantStatus.bad_copy_arg, `bad copy length ${op.length}`);
      const source = this.resolve(op.source, op.length, false);
      try {
        const dest = this.resolve(op.dest, op.length, true);
        try {
          dest.bytes.set(source.bytes);
        } finally {
          dest.release();
        }
      } finally {
        source.release();
      }
    }
  }

  // ---- internals ----------------------------------------------------------

  private checkGrantable(slot: number, remoteDomid: number, pfn: number): void {
    if (!Number.isInteger(remoteDomid) || remoteDomid < 0 || remoteDomid >= DOMID_LIMIT) {
      throw grantError(GrantStatus.bad_domain, `cannot grant to domain ${remoteDomid}`);
    }
    const pages = this.machine.slotWord(slot, DomainSlot.PAGES);
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= pages) {
      throw grantError(GrantStatus.bad_page, `page ${pfn} is not in domain ${this.domid}'s memory of ${pages} pages`);
    }
  }

  private publish(base: number, remoteDomid: number, pfn: number, readonly: boolean): void {
    const words = this.machine.words;
    Atomics.store(words, base + GrantEntry.GRANTEE, remoteDomid);
    Atomics.store(words, base + GrantEntry.PFN, pfn);
    Atomics.store(words, base + GrantEntry.STATE, readonly ? GrantState.GRANTED_RO : GrantState.GRANTED_RW);
  }

  private entry(slot: number, gref: number): number {
    const base = Number.isInteger(gref) ? this.machine.grantBase(slot, gref) : -1;
    // Past the frames the granter has, as past its table on Xen.
    if (base < 0) throw grantError(GrantStatus.bad_gntref, `grant reference ${gref} is out of range`);
    return base;
  }

  /**
   * Pins one entry for this domain, as Xen does when mapping it: refused
   * unless it is granted to us, and granted writable if we want to write.
   */
  private pin(granterSlot: number, granterDomid: number, gref: number, writable: boolean): number {
    const base = this.entry(granterSlot, gref);
    const words = this.machine.words;
    for (let attempt = 0; attempt < PIN_RETRIES; attempt++) {
      const state = Atomics.load(words, base + GrantEntry.STATE);
      if (state === GrantState.ENDING) continue;
      if (state !== GrantState.GRANTED_RW && state !== GrantState.GRANTED_RO) {
        throw grantError(GrantStatus.general_error, `domain ${granterDomid} has not granted reference ${gref}`);
      }
      if (Atomics.load(words, base + GrantEntry.GRANTEE) !== this.domid) {
        throw grantError(GrantStatus.general_error, `reference ${gref} of domain ${granterDomid} is granted to another domain`);
      }
      if (writable && state === GrantState.GRANTED_RO) {
        throw grantError(GrantStatus.general_error, `reference ${gref} of domain ${granterDomid} is read-only`);
      }
      Atomics.add(words, base + GrantEntry.PINS, 1);
      if (Atomics.load(words, base + GrantEntry.STATE) === state) {
        Atomics.add(words, this.machine.slotBase(granterSlot) + DomainSlot.PINS, 1);
        return base;
      }
      Atomics.sub(words, base + GrantEntry.PINS, 1);
    }
    throw grantError(GrantStatus.eagain, `reference ${gref} of domain ${granterDomid} is being ended`);
  }

  /**
   * Records that this worker holds a mapping of the grant entry at `base`
   * (a maptrack entry), counted against this domain's max_maptrack_frames
   * as Xen counts it. Entries are taken lowest first from the machine's
   * table, so its memory follows the most mappings ever held at once.
   */
  private track(granterSlot: number, base: number): number {
    const machine = this.machine;
    const words = machine.words;
    const slot = this.slot;
    const limit = machine.slotWord(slot, DomainSlot.MAPTRACK_LIMIT);
    if (Atomics.add(words, machine.slotBase(slot) + DomainSlot.MAPTRACK_USED, 1) >= limit) {
      Atomics.sub(words, machine.slotBase(slot) + DomainSlot.MAPTRACK_USED, 1);
      throw grantError(GrantStatus.no_space, `domain ${this.domid} holds all the ${limit} grant mappings its maptrack allows`);
    }
    const claim = (entry: number) => {
      const at = machine.maptrackBase(entry);
      if (Atomics.compareExchange(words, at + Maptrack.HOLDER, 0, this.tag + 1) !== 0) return false;
      Atomics.store(words, at + Maptrack.GRANTER_SLOT, granterSlot);
      Atomics.store(words, at + Maptrack.ENTRY, base);
      Atomics.store(words, at + Maptrack.GRANTEE_SLOT, slot);
      Atomics.store(words, at + Maptrack.GRANTEE_UNIQUE_ID, machine.slotWord(slot, DomainSlot.UNIQUE_ID));
      return true;
    };
    for (;;) {
      const high = machine.high(Header.MAPTRACK_HIGH);
      for (let tried = 0; tried < high; tried++) {
        const entry = this.maptrackHint < high ? this.maptrackHint : 0;
        this.maptrackHint = entry + 1 >= high ? 0 : entry + 1;
        if (claim(entry)) return entry;
      }
      // Every entry used so far is held: take the next one never used.
      if (high >= MAX_MAPTRACK) break;
      if (Atomics.compareExchange(words, machine.layout.header + Header.MAPTRACK_HIGH, high, high + 1) === high && claim(high)) return high;
    }
    Atomics.sub(words, machine.slotBase(slot) + DomainSlot.MAPTRACK_USED, 1);
    throw grantError(GrantStatus.no_space, `all ${MAX_MAPTRACK} grant mappings of the machine are in use`);
  }

  /** The bytes of one side of a copy, pinned if they belong to another domain. */
  private resolve(end: GrantCopyEnd, length: number, write: boolean): { bytes: Uint8Array; release(): void } {
    if (!Number.isInteger(end.offset) || end.offset < 0 || (!('bytes' in end) && end.offset + length > PAGE_SIZE)) {
      throw grantError(GrantStatus.bad_copy_arg, `copy of ${length} bytes at offset ${end.offset} crosses a page boundary`);
    }
    if ('bytes' in end) {
      if (end.offset + length > end.bytes.length) {
        throw grantError(GrantStatus.bad_copy_arg, `copy of ${length} bytes at offset ${end.offset} runs past the local buffer`);
      }
      return { bytes: end.bytes.subarray(end.offset, end.offset + length), release: () => {} };
    }
    if ('pfn' in end) {
      const slot = this.slot;
      const pages = this.machine.slotWord(slot, DomainSlot.PAGES);
      if (!Number.isInteger(end.pfn) || end.pfn < 0 || end.pfn >= pages) {
        throw grantError(GrantStatus.bad_page, `page ${end.pfn} is not in domain ${this.domid}'s memory`);
      }
      const frame = this.machine.slotWord(slot, DomainSlot.BASE_FRAME) + end.pfn;
      return { bytes: this.machine.frameView(frame).subarray(end.offset, end.offset + length), release: () => {} };
    }
    const mapping = this.map(end.domid, [end.gref], write);
    return { bytes: mapping.pages[0]!.subarray(end.offset, end.offset + length), release: () => mapping.unmap() };
  }
}

/** Shared pages, with the pages of our memory they are, to free them when they are unshared. */
class EmbeddedSharedPages implements SharedPages {
  constructor(
    readonly grefs: number[],
    readonly pages: Uint8Array[],
    readonly pfns: number[],
  ) {}

  add(gref: number, page: Uint8Array, pfn: number): void {
    this.grefs.push(gref);
    this.pages.push(page);
    this.pfns.push(pfn);
  }
}

/** Frees a maptrack entry, and the mapping domain's count of it if that domain is still the one it was. */
function untrack(machine: Machine, entry: number): void {
  const words = machine.words;
  const at = machine.maptrackBase(entry);
  const slot = Atomics.load(words, at + Maptrack.GRANTEE_SLOT);
  if (machine.slotWord(slot, DomainSlot.UNIQUE_ID) === Atomics.load(words, at + Maptrack.GRANTEE_UNIQUE_ID)) {
    Atomics.sub(words, machine.slotBase(slot) + DomainSlot.MAPTRACK_USED, 1);
  }
  Atomics.store(words, at + Maptrack.HOLDER, 0);
}

/** Drops one pin of a grant entry; the last pin of a dying granter lets it go. */
function unpinEntry(machine: Machine, granterSlot: number, base: number, lastPinReleased: (slot: number) => void): void {
  const words = machine.words;
  Atomics.sub(words, base + GrantEntry.PINS, 1);
  const left = Atomics.sub(words, machine.slotBase(granterSlot) + DomainSlot.PINS, 1) - 1;
  if (left === 0 && machine.slotWord(granterSlot, DomainSlot.STATE) === SlotState.DYING) lastPinReleased(granterSlot);
}

/**
 * Unmaps what a worker that died had mapped, as Xen unmaps a dead
 * process's grant mappings when its gntdev is released: the granter can
 * end access again, and a dying granter can go.
 */
export function reclaimMappings(machine: Machine, tag: number, lastPinReleased: (slot: number) => void): number {
  let reclaimed = 0;
  const high = machine.high(Header.MAPTRACK_HIGH);
  for (let entry = 0; entry < high; entry++) {
    const at = machine.maptrackBase(entry);
    if (Atomics.load(machine.words, at + Maptrack.HOLDER) !== tag + 1) continue;
    const granterSlot = Atomics.load(machine.words, at + Maptrack.GRANTER_SLOT);
    const base = Atomics.load(machine.words, at + Maptrack.ENTRY);
    untrack(machine, entry);
    unpinEntry(machine, granterSlot, base, lastPinReleased);
    reclaimed++;
  }
  return reclaimed;
}
