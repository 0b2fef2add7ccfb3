import { XsError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { isConnectionLoss, type XenStoreClient } from '../xenstore/client/client.js';
import type { Watcher } from '../xenstore/client/watcher.js';

/**
 * Notices when a domain at the other end of our devices dies, as a Xen
 * toolstack daemon does (xenconsoled, xl devd): xenstored fires
 * `@releaseDomain` when some domain goes, and IS_DOMAIN_INTRODUCED tells
 * which. Only domains seen introduced are ever declared gone, so that a
 * domain still being built (its devices written before it is introduced)
 * is never mistaken for a dead one.
 *
 * IS_DOMAIN_INTRODUCED is a privileged request: where xenstored refuses it
 * (an unprivileged driver domain), this stays off, and the other end's
 * state node going away is what tells of its death.
 */
export class PeerDomains {
  private watcher: Watcher | undefined;
  /** Domains of interest, and whether each has been seen introduced. */
  private readonly seen = new Map<number, boolean>();
  private disabled = false;
  private checking: Promise<void> = Promise.resolve();

  constructor(
    private readonly xs: XenStoreClient,
    private readonly log: Logger,
    /** The domains to look at now (the other ends of attached devices). */
    private readonly peers: () => Iterable<number>,
    /** Called once for each domain found gone. */
    private readonly gone: (domid: number) => void,
  ) {}

  async start(): Promise<void> {
    this.watcher = await this.xs.watch('@releaseDomain');
    void (async () => {
      for await (const _ of this.watcher!) this.check();
    })();
  }

  async stop(): Promise<void> {
    await this.watcher?.close().catch(() => {});
    this.watcher = undefined;
  }

  /** A device now has `domid` at its other end: remember whether it is introduced. */
  track(domid: number): void {
    if (this.disabled || this.seen.get(domid)) return;
    this.seen.set(domid, false);
    this.check();
  }

  /** Resolves once the checks asked for so far are done. */
  async settled(): Promise<void> {
    await this.checking;
  }

  private check(): void {
    this.checking = this.checking.then(() => this.checkNow()).catch((err: unknown) => {
      if (!isConnectionLoss(err)) this.log.warn(`checking for dead domains: ${(err as Error).message}`);
    });
  }

  private async checkNow(): Promise<void> {
    if (this.disabled) return;
    const current = new Set(this.peers());
    for (const domid of this.seen.keys()) if (!current.has(domid)) this.seen.delete(domid);
    for (const domid of current) {
      let introduced: boolean;
      try {
        introduced = await this.xs.isDomainIntroduced(domid);
      } catch (err) {
        if (err instanceof XsError && err.errno === 'EACCES') {
          this.disabled = true;
          this.log.info('xenstored does not answer IS_DOMAIN_INTRODUCED here: a dead peer is noticed by its nodes going');
          return;
        }
        throw err;
      }
      const wasIntroduced = this.seen.get(domid) ?? false;
      if (introduced) this.seen.set(domid, true);
      else if (wasIntroduced) {
        this.seen.delete(domid);
        this.log.info(`domain ${domid} is gone (released by xenstored)`);
        this.gone(domid);
      }
    }
  }
}
