import { createLogger } from '../../shared/log.js';
import { isRealDomid } from '../../shared/domid.js';
import type { ServerTransport, TransportHandlers } from './transport.js';

/**
 * What the daemon needs from the hypervisor to serve domains: whether a
 * domain exists, and the daemon's end of a domain's xenstore ring. The
 * platform supplies it; the daemon never touches pages or event channels
 * itself.
 */
export interface DomainBackend {
  exists(domid: number): boolean;
  /**
   * Maps the domain's xenstore page (`gfn`) and binds its event channel
   * (`port`), as INTRODUCE asks, advertising `features` in the ring. Throws
   * an XsError when that is impossible.
   */
  connect(domid: number, gfn: bigint, port: number, features: number): ServerTransport;
  /**
   * What the hypervisor says of a domain now (undefined: it is gone), with
   * the unique id that tells a domain from a later one reusing its domid.
   */
  state?(domid: number): { state: 'running' | 'paused' | 'shutdown'; uniqueId: number } | undefined;
  /** Calls `listener` whenever some domain may have shut down or died (VIRQ_DOM_EXC). */
  onDomainChange?(listener: () => void): void;
  /** Stops listening to the hypervisor. */
  close?(): void;
}

const log = createLogger('xenstored');

/**
 * The backend of a daemon that runs with no hypervisor behind it, serving
 * only its Unix socket: every real domain id may exist, and an introduced
 * domain is recorded (so that the toolstack requests behave as on Xen) but
 * its ring is never serviced.
 */
export class DetachedBackend implements DomainBackend {
  exists(domid: number): boolean {
    return isRealDomid(domid);
  }

  connect(domid: number, gfn: bigint, port: number): ServerTransport {
    log.info(`domain ${domid} introduced (page ${gfn}, port ${port}); no hypervisor attached, its ring is not serviced`);
    return new UnservicedRing(domid);
  }
}

/** The daemon's end of a ring nobody can reach: output is discarded, nothing arrives. */
class UnservicedRing implements ServerTransport {
  readonly kind = 'ring';
  readonly label: string;
  private handlers: TransportHandlers | undefined;

  constructor(domid: number) {
    this.label = `domain ${domid} (unserviced)`;
  }

  write(): boolean {
    return true;
  }

  pauseReading(): void {}
  resumeReading(): void {}

  close(): void {
    this.handlers?.onClose();
    this.handlers = undefined;
  }

  attach(handlers: TransportHandlers): void {
    this.handlers = handlers;
  }
}
