import { PAGE_SIZE, PlatformError, type GuestMemory } from '../platform.js';
import { DomainSlot } from './layout.js';
import type { Machine } from './machine.js';

/**
 * A domain's own pages, and a page allocator over them that every worker of
 * the domain shares (a bit per page in the machine's page bitmap).
 */
export class EmbeddedGuestMemory implements GuestMemory {
  private hint = 0;

  constructor(
    private readonly machine: Machine,
    readonly domid: number,
  ) {}

  get pages(): number {
    return this.machine.slotWord(this.machine.requireSlot(this.domid), DomainSlot.PAGES);
  }

  allocPages(count: number): number[] {
    const slot = this.machine.requireSlot(this.domid);
    const pages = this.machine.slotWord(slot, DomainSlot.PAGES);
    const base = this.machine.slotWord(slot, DomainSlot.BASE_FRAME);
    const bitmap = this.machine.layout.pageBitmap;
    const got: number[] = [];
    for (let tried = 0; tried < pages && got.length < count; tried++) {
      const pfn = this.hint;
      this.hint = (pfn + 1) % pages;
      if (this.machine.claimBit(bitmap, base + pfn)) got.push(pfn);
    }
    if (got.length < count) {
      this.freePages(got);
      throw new PlatformError('ENOSPC', `domain ${this.domid} has fewer than ${count} free pages`);
    }
    return got;
  }

  freePages(pfns: readonly number[]): void {
    const slot = this.machine.requireSlot(this.domid);
    const base = this.machine.slotWord(slot, DomainSlot.BASE_FRAME);
    for (const pfn of pfns) {
      this.checkPfn(slot, pfn);
      this.machine.frameView(base + pfn).fill(0);
      this.machine.clearBit(this.machine.layout.pageBitmap, base + pfn);
    }
  }

  page(pfn: number): Uint8Array {
    const slot = this.machine.requireSlot(this.domid);
    this.checkPfn(slot, pfn);
    return this.machine.frameView(this.machine.slotWord(slot, DomainSlot.BASE_FRAME) + pfn);
  }

  allocContiguousPages(count: number): number {
    if (!Number.isInteger(count) || count < 1) throw new PlatformError('EINVAL', `cannot allocate ${count} pages`);
    const slot = this.machine.requireSlot(this.domid);
    const pages = this.machine.slotWord(slot, DomainSlot.PAGES);
    const base = this.machine.slotWord(slot, DomainSlot.BASE_FRAME);
    const bitmap = this.machine.layout.pageBitmap;
    // Claims page after page from each candidate start; a page someone else
    // holds gives back the run so far and moves the start past it.
    for (let first = 0; first + count <= pages; ) {
      let claimed = 0;
      while (claimed < count && this.machine.claimBit(bitmap, base + first + claimed)) claimed++;
      if (claimed === count) return first;
      for (let i = 0; i < claimed; i++) this.machine.clearBit(bitmap, base + first + i);
      first += claimed + 1;
    }
    throw new PlatformError('ENOSPC', `domain ${this.domid} has no ${count} free pages in a row`);
  }

  range(pfn: number, count: number): Uint8Array {
    const slot = this.machine.requireSlot(this.domid);
    this.checkPfn(slot, pfn);
    if (count > 0) this.checkPfn(slot, pfn + count - 1);
    const first = this.machine.slotWord(slot, DomainSlot.BASE_FRAME) + pfn;
    return this.machine.memory.subarray(first * PAGE_SIZE, (first + Math.max(0, count)) * PAGE_SIZE);
  }

  addressOf(bytes: Uint8Array): number {
    const memory = this.machine.memory;
    if (bytes.buffer !== memory.buffer) return -1;
    const slot = this.machine.slotOf(this.domid);
    if (slot < 0) return -1;
    const start = memory.byteOffset + this.machine.slotWord(slot, DomainSlot.BASE_FRAME) * PAGE_SIZE;
    const address = bytes.byteOffset - start;
    const size = this.machine.slotWord(slot, DomainSlot.PAGES) * PAGE_SIZE;
    return address >= 0 && address + bytes.length <= size ? address : -1;
  }

  private checkPfn(slot: number, pfn: number): void {
    const pages = this.machine.slotWord(slot, DomainSlot.PAGES);
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= pages) {
      throw new PlatformError('EINVAL', `page ${pfn} is not in domain ${this.domid}'s memory of ${pages} pages`);
    }
  }
}
