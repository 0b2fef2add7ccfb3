import { XsError } from '../../shared/errors.js';
import { EventDispatcher } from '../../shared/event-dispatcher.js';
import { createLogger } from '../../shared/log.js';
import { GNTTAB_RESERVED_XENSTORE, PlatformError, VIRQ_DOM_EXC, type DomainInterface, type GrantMapping, type Platform } from '../../shared/platform.js';
import { XenStoreRing } from '../ring.js';
import type { DomainBackend } from './domain-backend.js';
import { RingServerTransport } from './ring-transport.js';
import type { ServerTransport } from './transport.js';

const log = createLogger('xenstored');

/**
 * xenstored's view of the hypervisor on a platform: it maps each introduced
 * domain's xenstore page through the reserved grant entry, binds its event
 * channel, and listens for VIRQ_DOM_EXC to learn of domains that shut down
 * or die. One event channel handle serves every ring, as in xenstored.
 */
export class PlatformDomainBackend implements DomainBackend {
  private readonly self: DomainInterface;
  private readonly events: EventDispatcher;
  private virqPort: number | undefined;
  private readonly listeners: (() => void)[] = [];

  constructor(
    private readonly platform: Platform,
    /** The domain xenstored runs in (and serves first). */
    readonly storeDomid = 0,
    /**
     * Its own domain's xenstore page, where that is not one of its pages by
     * number: on Xen, the page dom0's kernel shares at /proc/xen/xsd_kva.
     */
    private readonly ownPage?: () => Uint8Array,
  ) {
    this.self = platform.domain(storeDomid);
    this.events = new EventDispatcher(this.self.openEventChannels());
  }

  exists(domid: number): boolean {
    const state = this.platform.domainInfo(domid)?.state;
    return state !== undefined && state !== 'dying' && state !== 'dead';
  }

  state(domid: number): { state: 'running' | 'paused' | 'shutdown'; uniqueId: number } | undefined {
    const info = this.platform.domainInfo(domid);
    if (info?.state === 'running' || info?.state === 'paused' || info?.state === 'shutdown') return { state: info.state, uniqueId: info.uniqueId };
    return undefined;
  }

  connect(domid: number, gfn: bigint, port: number, features: number): ServerTransport {
    let mapping: GrantMapping | undefined;
    let page: Uint8Array;
    try {
      // Its own page xenstored simply has; another domain's it maps through
      // the grant entry the toolstack reserved for it.
      if (domid === this.storeDomid) page = this.ownPage ? this.ownPage() : this.self.memory.page(Number(gfn));
      else {
        mapping = this.self.grants.map(domid, [GNTTAB_RESERVED_XENSTORE], true);
        page = mapping.pages[0]!;
      }
    } catch (err) {
      throw asXsError(err, `cannot map the xenstore page of domain ${domid}`);
    }
    let localPort: number;
    try {
      localPort = this.events.channels.bindInterdomain(domid, port);
    } catch (err) {
      mapping?.unmap();
      throw asXsError(err, `cannot bind event channel ${port} of domain ${domid}`);
    }
    const transport = new RingServerTransport(
      new XenStoreRing(page),
      `domain ${domid} ring`,
      () => this.notify(localPort),
      () => {
        this.events.off(localPort);
        try {
          this.events.channels.unbind(localPort);
        } catch {
          // The domain died and took the channel with it.
        }
        mapping?.unmap();
      },
      features,
    );
    this.events.on(localPort, () => transport.kick());
    queueMicrotask(() => {
      transport.kick();
      // As xenstored's dom0_init(): dom0's kernel, whose ring was set up
      // before any daemon ran, learns from this event that xenstored is up.
      if (domid === this.storeDomid && this.ownPage) this.notify(localPort);
    });
    return transport;
  }

  onDomainChange(listener: () => void): void {
    if (this.virqPort === undefined) {
      this.virqPort = this.events.channels.bindVirq(VIRQ_DOM_EXC);
      this.events.on(this.virqPort, () => {
        for (const l of this.listeners) l();
      });
    }
    this.listeners.push(listener);
  }

  close(): void {
    this.events.channels.close();
  }

  private notify(port: number): void {
    try {
      this.events.channels.notify(port);
    } catch (err) {
      log.debug(`notify on port ${port} failed: ${(err as Error).message}`);
    }
  }
}

function asXsError(err: unknown, what: string): XsError {
  if (err instanceof PlatformError) return new XsError(err.errno === 'ESRCH' ? 'ENOENT' : 'EINVAL', `${what}: ${err.message}`);
  return new XsError('EINVAL', `${what}: ${String(err)}`);
}
