import { XsFrameDecoder } from '../../shared/xs-wire.js';
import { XsServerFeature } from '../../shared/xs-wire.js';
import type { EventDispatcher } from '../../shared/event-dispatcher.js';
import type { DomainInterface } from '../../shared/platform.js';
import { PendingOutput, RingConnection, XenStoreRing } from '../ring.js';
import type { ClientTransport, ClientTransportHandlers } from './transport.js';

/** Raised when xenstored sets the ring's error indicator or the ring's indexes make no sense. */
export class RingError extends Error {
  constructor(message: string, readonly code: number) {
    super(message);
    this.name = 'RingError';
  }
}

/**
 * A domain's end of its xenstore ring, used the way Linux's xenbus comms use
 * it: requests go in as the ring's free space allows (a 4 KiB request
 * crosses a 1 KiB ring in pieces), replies come out as they arrive, the
 * daemon is signalled after each step, wrap-around of the free-running
 * indexes is harmless, and a ring error is reported, not ignored.
 */
export class RingClientTransport implements ClientTransport {
  private handlers: ClientTransportHandlers | undefined;
  private decoder = this.newDecoder();
  private readonly pending: PendingOutput;
  private reading = true;
  private closed = false;
  private reconnecting: (() => void) | undefined;

  constructor(
    readonly ring: XenStoreRing,
    private readonly events: EventDispatcher,
    /** The domain's end of its xenstore event channel. */
    readonly port: number,
  ) {
    this.pending = new PendingOutput(ring.requests);
  }

  /**
   * Opens a domain's xenstore ring from what it was told at boot: the page
   * of its memory holding the ring and its end of the event channel, which
   * it starts listening to.
   */
  static open(domain: DomainInterface, events: EventDispatcher, storePfn: number, storePort: number): RingClientTransport {
    events.channels.listen(storePort);
    return new RingClientTransport(new XenStoreRing(domain.memory.page(storePfn)), events, storePort);
  }

  start(handlers: ClientTransportHandlers): void {
    this.handlers = handlers;
    this.events.on(this.port, () => this.kick());
    this.kick();
  }

  send(frame: Buffer): void {
    if (this.closed) return;
    this.pending.add(frame);
    this.pushRequests();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.events.off(this.port);
    this.handlers?.closed();
  }

  /** Signals xenstored through the ring's event channel. */
  signal(): void {
    this.events.channels.notify(this.port);
  }

  /**
   * Stops looking at the ring at all, replies and error indicator alike (a
   * domain that does not read its ring), for tests of the daemon.
   */
  stopReading(): void {
    this.reading = false;
  }

  startReading(): void {
    this.reading = true;
    this.kick();
  }

  /**
   * Asks the daemon to reset the ring (xenstore-ring.txt, ring reconnection)
   * and resolves once it is connected again. Requests and watches of the old
   * connection are gone; the caller sets up what it needs anew.
   */
  reconnect(): Promise<void> {
    if (!(this.ring.serverFeatures & XsServerFeature.RECONNECTION)) {
      return Promise.reject(new Error('xenstored does not offer ring reconnection'));
    }
    if (this.closed) {
      // A ring error closed us; reconnection is how a domain gets service back.
      this.closed = false;
      this.events.on(this.port, () => this.kick());
    }
    this.pending.clear();
    this.decoder = this.newDecoder();
    const done = new Promise<void>((resolve) => (this.reconnecting = resolve));
    this.ring.connection = RingConnection.RECONNECT;
    this.signal();
    return done;
  }

  private kick(): void {
    if (this.closed || !this.reading) return;
    if (this.reconnecting) {
      if (this.ring.connection !== RingConnection.CONNECTED) return;
      const resolve = this.reconnecting;
      this.reconnecting = undefined;
      resolve();
    }
    const error = this.ring.error;
    if (error !== 0 && !this.reconnecting) {
      this.fail(new RingError(`xenstored reported error ${error} on the ring`, error));
      return;
    }
    this.pullReplies();
    this.pushRequests();
  }

  private pullReplies(): void {
    while (!this.closed) {
      const chunk = this.ring.responses.consume();
      if (chunk === null) {
        this.fail(new RingError('inconsistent indexes on the reply ring', -1));
        return;
      }
      if (chunk.length === 0) return;
      this.signal();
      this.decoder.push(chunk);
    }
  }

  private pushRequests(): void {
    if (this.closed || this.reconnecting) return;
    if (!this.pending.drain(() => this.signal())) this.fail(new RingError('inconsistent indexes on the request ring', -1));
  }

  /**
   * The ring broke. If xenstored offers reconnection the client is told the
   * link may be repaired; otherwise it is closed.
   */
  private fail(error: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.events.off(this.port);
    if (this.ring.serverFeatures & XsServerFeature.RECONNECTION && this.handlers?.broken) this.handlers.broken(error);
    else this.handlers?.closed(error);
  }

  private newDecoder(): XsFrameDecoder {
    return new XsFrameDecoder(
      (msg) => this.handlers?.message(msg),
      (header) => this.fail(new RingError(`xenstored sent an oversized payload (${header.len} bytes)`, -1)),
    );
  }
}
