import type { DomainInterface } from '../shared/platform.js';
import type { DeferredRelease } from '../xenbus/deferred-release.js';
import { CallerPageGrants, PERSISTENT_CALLER_GRANTS_PER_QUEUE } from './caller-grants.js';

/** A page of the frontend's memory granted to the backend. */
export interface GrantedPage {
  readonly pfn: number;
  readonly gref: number;
  readonly bytes: Uint8Array;
}

/**
 * The pages a frontend's requests carry their data in. Without persistent
 * grants each page is granted for one request and its grant ended after the
 * response (the page itself is kept for the next request). With them
 * (blkif.h's feature-persistent) pages are granted once, writable by the
 * backend whatever the request (note 8), and reused last-in first-out so
 * that the backend's mapping cache keeps hitting the same few. A grant the
 * backend still has mapped cannot be ended yet; it is kept and tried again.
 */
export class GrantedPages {
  private readonly persistentPool: GrantedPage[] = [];
  /** The grants of callers' own pages, for requests that carry them as they are. */
  readonly callerPages: CallerPageGrants;

  constructor(
    private readonly domain: DomainInterface,
    private readonly deferred: DeferredRelease,
    private readonly backendDomid: number,
    readonly persistent: boolean,
    /** Pages of ours no grant names now, kept across connections for the next requests. */
    private readonly spare: number[] = [],
    /** Grants of callers' pages kept at most, with persistent grants. */
    callerGrantLimit = PERSISTENT_CALLER_GRANTS_PER_QUEUE,
  ) {
    this.callerPages = new CallerPageGrants(domain, deferred, backendDomid, persistent, callerGrantLimit);
  }

  /**
   * `count` pages granted to the backend, appended to `out` (an array a
   * request reuses); read-only for the backend unless it must write them
   * (a read).
   */
  take(count: number, backendWrites: boolean, out: GrantedPage[] = []): GrantedPage[] {
    const start = out.length;
    try {
      while (out.length < start + count) {
        if (this.persistent && this.persistentPool.length > 0) {
          out.push(this.persistentPool.pop()!);
          continue;
        }
        const pfn = this.spare.pop() ?? this.domain.memory.allocPages(1)[0]!;
        const gref = this.domain.grants.grantAccess(this.backendDomid, pfn, !(this.persistent || backendWrites));
        out.push({ pfn, gref, bytes: this.domain.memory.page(pfn) });
      }
    } catch (err) {
      this.give(out.splice(start));
      throw err;
    }
    return out;
  }

  /**
   * Whether `count` pages can be taken now, allocating from the domain's
   * memory as needed. False when memory runs short: the request waits for
   * pages to come back rather than fail.
   */
  ensure(count: number): boolean {
    let available = this.spare.length + (this.persistent ? this.persistentPool.length : 0);
    while (available < count) {
      try {
        this.spare.push(this.domain.memory.allocPages(1)[0]!);
      } catch {
        return false;
      }
      available++;
    }
    return true;
  }

  /** Pages whose request is answered: back to the pool, their grants ended unless persistent. */
  give(pages: readonly GrantedPage[]): void {
    for (const page of pages) {
      if (this.persistent) this.persistentPool.push(page);
      else this.end(page);
    }
  }

  /** Ends every grant (the connection is over); the pages stay ours for the next one. */
  releaseAll(): void {
    for (const page of this.persistentPool.splice(0)) this.end(page);
    this.callerPages.releaseAll();
  }

  /** A page whose grant the backend still maps goes to the domain's deferred list, which frees it once the grant ends. */
  private end(page: GrantedPage): void {
    if (this.deferred.endPage(page.gref, page.pfn)) this.spare.push(page.pfn);
  }
}
