import type { Logger } from '../shared/log.js';
import type { GuestMemory, GrantTable, SharedPages } from '../shared/platform.js';

/** The first retry after a grant could not be ended. */
export const DEFERRED_FIRST_RETRY_MS = 50;
/** Retries back off to at most this. Linux retries its deferred list every second (gnttab_handle_deferred, HZ). */
export const DEFERRED_MAX_RETRY_MS = 1000;
/** A grant held this long is worth a warning: the other end has kept a page mapped long after it was asked to let go. */
export const DEFERRED_WARN_AFTER_MS = 60_000;

export interface DeferredReleaseOptions {
  readonly firstRetryMs?: number;
  readonly maxRetryMs?: number;
  readonly warnAfterMs?: number;
}

/** Something whose grants could not all be ended yet, with when it was first deferred. */
interface Held {
  /** Tries once more; what is still granted, or undefined once released (and freed). */
  readonly retry: () => Held['what'] | undefined;
  what: SharedPages;
  readonly since: number;
  warned: boolean;
}

/**
 * Grants of a domain's pages that the other end still had mapped when they
 * were to be ended. Such a page cannot be taken back (the other end could
 * still read or write it), so it stays granted and allocated until the
 * other end unmaps it. Retried from a timer that backs off, and at once
 * when asked (a device whose other end changed state may have let go);
 * each page is freed once its grant is ended. Linux keeps the same list in
 * gnttab_end_foreign_access's deferred queue.
 *
 * One per domain (kernel): every driver's leftovers go here, and stop()
 * is called when the kernel goes away.
 */
export class DeferredRelease {
  private readonly held: Held[] = [];
  private timer: NodeJS.Timeout | undefined;
  private delay: number;
  private stopped = false;
  private readonly firstRetryMs: number;
  private readonly maxRetryMs: number;
  private readonly warnAfterMs: number;

  constructor(
    private readonly grants: GrantTable,
    private readonly memory: GuestMemory,
    private readonly log: Logger,
    options: DeferredReleaseOptions = {},
  ) {
    this.firstRetryMs = options.firstRetryMs ?? DEFERRED_FIRST_RETRY_MS;
    this.maxRetryMs = options.maxRetryMs ?? DEFERRED_MAX_RETRY_MS;
    this.warnAfterMs = options.warnAfterMs ?? DEFERRED_WARN_AFTER_MS;
    this.delay = this.firstRetryMs;
  }

  /** Grants still held because the other end has their pages mapped. */
  get pending(): number {
    return this.held.reduce((sum, held) => sum + held.what.grefs.length, 0);
  }

  /** Ends the grants of shared pages (a ring) and frees them; what the other end still maps is released later. */
  releaseShared(shared: SharedPages): void {
    const left = this.grants.unshare(shared);
    if (left) this.hold(left, () => this.grants.unshare(left));
  }

  /**
   * Ends the grant of one page. True if it ended now: the page is the
   * caller's again. False: the other end still maps it, and the page is
   * taken over, to be freed once the grant ends.
   */
  endPage(gref: number, pfn: number): boolean {
    if (this.grants.endAccess(gref)) return true;
    const what: SharedPages = { grefs: [gref], pages: [this.memory.page(pfn)] };
    this.hold(what, () => {
      if (!this.grants.endAccess(gref)) return what;
      this.memory.freePages([pfn]);
      return undefined;
    });
    return false;
  }

  /**
   * Ends the grant of a page that stays its owner's whatever happens (a
   * caller's buffer): true if it ended now; false if the other end still
   * maps it, and it is ended once it lets go, the page left alone.
   */
  endGrant(gref: number): boolean {
    if (this.grants.endAccess(gref)) return true;
    const what: SharedPages = { grefs: [gref], pages: [] };
    this.hold(what, () => (this.grants.endAccess(gref) ? undefined : what));
    return false;
  }

  /** Tries everything held now (the other end changed state, and may have let go). */
  retry(): void {
    const before = this.pending;
    const now = Date.now();
    for (const held of this.held.splice(0)) {
      const left = held.retry();
      if (!left) continue;
      held.what = left;
      this.held.push(held);
      if (!held.warned && now - held.since >= this.warnAfterMs) {
        held.warned = true;
        this.log.warn(`grants ${left.grefs.join(',')} are still mapped by the other end after ${Math.round((now - held.since) / 1000)} s; their pages stay allocated`);
      }
    }
    // Progress means the other end is letting go: look again soon.
    this.delay = this.pending < before ? this.firstRetryMs : Math.min(this.delay * 2, this.maxRetryMs);
    this.schedule();
  }

  /** The kernel is going away: one last try, no more timer; what is still held is reported. */
  stop(): void {
    if (this.held.length > 0) this.retry();
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const pending = this.pending;
    if (pending > 0) this.log.warn(`${pending} grant(s) still mapped by other domains as this kernel goes away; their pages stay allocated`);
  }

  private hold(what: SharedPages, retry: Held['retry']): void {
    this.held.push({ what, retry, since: Date.now(), warned: false });
    if (!this.timer) this.delay = this.firstRetryMs;
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped || this.held.length === 0) {
      clearTimeout(this.timer);
      this.timer = undefined;
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.retry();
    }, this.delay);
    // Pages waiting for another domain must not keep this worker alive.
    this.timer.unref();
  }
}
