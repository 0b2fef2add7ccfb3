import type { DomainInterface } from '../shared/platform.js';
import type { DeferredRelease } from '../xenbus/deferred-release.js';

/**
 * Persistent grants of callers' pages one connection keeps per queue: Linux
 * blkback's default max_persistent_grants (1056, drivers/block/xen-blkback),
 * the most a Linux backend keeps mapped, so that more would gain nothing.
 */
export const PERSISTENT_CALLER_GRANTS_PER_QUEUE = 1056;

/**
 * Grants of the pages callers' buffers lie in, for requests that carry them
 * as they are (zero-copy), over one connection. Without persistent grants a
 * page is granted for one request, read-only unless the backend writes it,
 * and the grant ended after the response (blkif.h). With them, the grant
 * of a page of a buffer the device allocated is kept (pfn → gref, up to a
 * limit) and offered again whenever the page is, writable whatever the
 * request (blkif.h's note 8), so that the backend sees the same references
 * again; they are ended when the connection goes, or when the buffer is
 * freed. Other pages of the domain are granted per request as without
 * persistent grants: nothing would end their grants before the caller
 * reuses them. A grant the backend still has mapped cannot be ended yet:
 * the domain's deferred list ends it later, and a freed page under it goes
 * back to the domain only then.
 */
export class CallerPageGrants {
  /** pfn → gref of kept grants, -1 for none. */
  private readonly kept: Int32Array;
  private keptCount = 0;

  constructor(
    private readonly domain: DomainInterface,
    private readonly deferred: DeferredRelease,
    private readonly backendDomid: number,
    readonly persistent: boolean,
    /** Grants kept at most; beyond, pages are granted per request. */
    private readonly keepLimit: number,
  ) {
    this.kept = new Int32Array(persistent ? domain.memory.pages : 0).fill(-1);
  }

  /**
   * The grant reference for a request's page `pfn`. Only a page whose
   * grant will be revoked before it leaves the caller (`keepable`: a
   * buffer the device allocated, see revoke()) is kept.
   */
  grant(pfn: number, backendWrites: boolean, keepable: boolean): number {
    if (this.persistent && keepable) {
      const kept = this.kept[pfn]!;
      if (kept >= 0) return kept;
      if (this.keptCount < this.keepLimit) {
        const gref = this.domain.grants.grantAccess(this.backendDomid, pfn, false);
        this.kept[pfn] = gref;
        this.keptCount++;
        return gref;
      }
    }
    return this.domain.grants.grantAccess(this.backendDomid, pfn, !backendWrites);
  }

  /** A request that carried page `pfn` under `gref` is over: a grant made for it alone ends. */
  done(pfn: number, gref: number): void {
    if (this.persistent && this.kept[pfn] === gref) return;
    this.end(gref, pfn, false);
  }

  /**
   * A buffer of `count` pages from `pfn` is freed: the grants kept on its
   * pages end. Returns the pages whose grant the backend still has mapped:
   * not the domain's to reuse yet, they are freed once the grant ends.
   */
  revoke(pfn: number, count: number): number[] {
    const held: number[] = [];
    if (!this.persistent) return held;
    for (let p = pfn; p < pfn + count; p++) {
      const gref = this.kept[p]!;
      if (gref < 0) continue;
      this.kept[p] = -1;
      this.keptCount--;
      if (!this.end(gref, p, true)) held.push(p);
    }
    return held;
  }

  /** Ends every grant (the connection is over). */
  releaseAll(): void {
    for (let pfn = 0; pfn < this.kept.length && this.keptCount > 0; pfn++) {
      const gref = this.kept[pfn]!;
      if (gref < 0) continue;
      this.kept[pfn] = -1;
      this.keptCount--;
      this.end(gref, pfn, false);
    }
  }

  /**
   * Ends a grant, freeing its page to the domain after if `free` (the
   * buffer it was in is gone); false if the backend still maps it and the
   * deferred list ends it later.
   */
  private end(gref: number, pfn: number, free: boolean): boolean {
    if (!free) return this.deferred.endGrant(gref);
    if (!this.deferred.endPage(gref, pfn)) return false;
    this.domain.memory.freePages([pfn]);
    return true;
  }
}
