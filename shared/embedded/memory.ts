import { PlatformError, type GuestMemory } from '../platform.js';
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

  private checkPfn(slot: number, pfn: number): void {
    const pages = this.machine.slotWord(slot, DomainSlot.PAGES);
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= pages) {
      throw new PlatformError('EINVAL', `page ${pfn} is not in domain ${this.domid}'s memory of ${pages} pages`);
    }
  }
}
