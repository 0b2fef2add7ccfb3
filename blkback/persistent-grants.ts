import type { GrantMapping, GrantTable } from '../shared/platform.js';

/**
 * Persistent grants kept mapped per ring: Linux blkback's default
 * xen_blkif_max_pgrants (drivers/block/xen-blkback/blkback.c), enough for
 * every segment of a 32-slot ring of 11-segment requests plus indirect
 * pages, as Linux sized it.
 */
export const MAX_PERSISTENT_GRANTS = 1056;

interface Kept {
  readonly mapping: GrantMapping;
  /** Operations using the page now: it is not unmapped under them. */
  users: number;
}

/**
 * The frontend's persistently granted pages a ring keeps mapped (blkif.h's
 * feature-persistent): each is mapped writable the first time a request
 * names it and stays mapped for the life of the ring, so that the data
 * path maps nothing. Beyond the limit the least recently used idle pages
 * are unmapped, as Linux purges its persistent grants. A page the frontend
 * granted read-only cannot be kept (persistent grants are writable, note
 * 8 of blkif.h): the request then maps its pages for itself.
 */
export class PersistentGrants {
  /** By grant reference, least recently used first (a Map keeps insertion order). */
  private readonly kept = new Map<number, Kept>();

  constructor(
    private readonly grants: GrantTable,
    private readonly frontend: number,
    private readonly limit = MAX_PERSISTENT_GRANTS,
  ) {}

  /** Pages kept mapped now. */
  get size(): number {
    return this.kept.size;
  }

  /**
   * The pages of `grefs`, mapped and held until release(); undefined if
   * one of them cannot be kept (the caller maps them for the request).
   */
  acquire(grefs: readonly number[]): Uint8Array[] | undefined {
    const pages: Uint8Array[] = [];
    const held: number[] = [];
    for (const gref of grefs) {
      let kept = this.kept.get(gref);
      if (kept) {
        // Most recently used now.
        this.kept.delete(gref);
        this.kept.set(gref, kept);
      } else {
        try {
          kept = { mapping: this.grants.map(this.frontend, [gref], true), users: 0 };
        } catch {
          this.release(held);
          return undefined;
        }
        this.kept.set(gref, kept);
      }
      kept.users++;
      held.push(gref);
      pages.push(kept.mapping.pages[0]!);
    }
    this.purge();
    return pages;
  }

  release(grefs: readonly number[]): void {
    for (const gref of grefs) {
      const kept = this.kept.get(gref);
      if (kept) kept.users--;
    }
  }

  /** Unmaps every page (the ring is stopping; nothing uses them any more). */
  clear(): void {
    for (const kept of this.kept.values()) kept.mapping.unmap();
    this.kept.clear();
  }

  private purge(): void {
    if (this.kept.size <= this.limit) return;
    for (const [gref, kept] of this.kept) {
      if (this.kept.size <= this.limit) return;
      if (kept.users > 0) continue;
      kept.mapping.unmap();
      this.kept.delete(gref);
    }
  }
}
