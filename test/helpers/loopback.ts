import { XsFrameDecoder } from '../../shared/xs-wire.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import type { ClientTransport, ClientTransportHandlers } from '../../xenstore/client/transport.js';
import type { DomainBackend } from '../../xenstore/daemon/domain-backend.js';
import type { ServerTransport, TransportError, TransportHandlers } from '../../xenstore/daemon/transport.js';
import { isRealDomid } from '../../xenstore/store/domid.js';

/** Bytes a loopback link holds unread before the daemon must wait: the size of a xenstore ring. */
export const LOOPBACK_CAPACITY = 1024;

/**
 * An in-process link standing in for a domain's xenstore ring in tests:
 * bytes travel asynchronously, and a peer that stops reading makes the
 * daemon's side report itself full, as a ring nobody consumes would.
 */
export class LoopbackLink {
  readonly server: ServerTransport;
  readonly client: ClientTransport & { stopReading(): void; startReading(): void; closedWith?: TransportError | 'closed' };
  private serverHandlers: TransportHandlers | undefined;
  private clientHandlers: ClientTransportHandlers | undefined;
  private toClient: Buffer[] = [];
  private toClientBytes = 0;
  private clientReading = true;
  private serverPaused = false;
  private toServer: Buffer[] = [];
  private closed = false;

  constructor(label: string) {
    const link = this;
    const decoder = new XsFrameDecoder(
      (msg) => link.clientHandlers?.message(msg),
      () => link.client.close(),
    );
    this.server = {
      kind: 'ring',
      label,
      write(bytes: Buffer): boolean {
        if (link.closed) return true;
        link.toClient.push(bytes);
        link.toClientBytes += bytes.length;
        link.scheduleToClient(decoder);
        return link.toClientBytes < LOOPBACK_CAPACITY;
      },
      pauseReading(): void {
        link.serverPaused = true;
      },
      resumeReading(): void {
        link.serverPaused = false;
        link.scheduleToServer();
      },
      close(error?: TransportError): void {
        link.client.closedWith = error ?? 'closed';
        link.shut();
      },
      attach(handlers: TransportHandlers): void {
        link.serverHandlers = handlers;
      },
    };
    this.client = {
      send(frame: Buffer): void {
        if (link.closed) return;
        link.toServer.push(frame);
        link.scheduleToServer();
      },
      start(handlers: ClientTransportHandlers): void {
        link.clientHandlers = handlers;
      },
      close(): void {
        link.shut();
      },
      stopReading(): void {
        link.clientReading = false;
      },
      startReading(): void {
        link.clientReading = true;
        link.scheduleToClient(decoder);
      },
    };
  }

  private scheduleToClient(decoder: XsFrameDecoder): void {
    setImmediate(() => {
      if (!this.clientReading || this.closed || this.toClient.length === 0) return;
      const chunks = this.toClient.splice(0);
      const wasFull = this.toClientBytes >= LOOPBACK_CAPACITY;
      this.toClientBytes = 0;
      for (const chunk of chunks) decoder.push(chunk);
      if (wasFull) this.serverHandlers?.onWritable();
    });
  }

  private scheduleToServer(): void {
    setImmediate(() => {
      while (!this.serverPaused && !this.closed && this.toServer.length > 0) {
        this.serverHandlers?.onData(this.toServer.shift()!);
      }
    });
  }

  private shut(): void {
    if (this.closed) return;
    this.closed = true;
    this.serverHandlers?.onClose();
    this.clientHandlers?.closed();
  }
}

/**
 * A hypervisor stand-in for tests: domains exist unless declared dead, and
 * INTRODUCE connects the daemon to a loopback link whose other end the test
 * drives as that domain.
 */
export class LoopbackBackend implements DomainBackend {
  readonly links = new Map<number, LoopbackLink>();
  readonly dead = new Set<number>();

  exists(domid: number): boolean {
    return isRealDomid(domid) && !this.dead.has(domid);
  }

  connect(domid: number): ServerTransport {
    const link = new LoopbackLink(`domain ${domid} ring`);
    this.links.set(domid, link);
    return link.server;
  }

  /** A client acting as the introduced domain. */
  clientFor(domid: number): XenStoreClient {
    const link = this.links.get(domid);
    if (!link) throw new Error(`domain ${domid} was not introduced`);
    return new XenStoreClient(link.client);
  }
}
