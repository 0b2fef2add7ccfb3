import { createLogger } from '../../shared/log.js';
import { XsRingError, XsServerFeature } from '../../shared/xs-wire.js';
import { PendingOutput, RingConnection, type XenStoreRing } from '../ring.js';
import type { ServerTransport, TransportError, TransportHandlers } from './transport.js';

const log = createLogger('xenstored');

/** What each fault means, for the log. */
const FAULTS: Record<TransportError, string> = {
  comm: 'a communication error',
  ringidx: 'ring indexes out of range (a producer more than a ring ahead of its consumer)',
  proto: 'a protocol error',
};

const ERROR_CODES: Record<TransportError, number> = {
  comm: XsRingError.COMM,
  ringidx: XsRingError.RINGIDX,
  proto: XsRingError.PROTO,
};

/**
 * The daemon's end of a domain's xenstore ring. It consumes requests and
 * produces replies as the ring's free space allows, signalling the domain
 * after each, checks the domain's indexes, reports errors through the
 * ring's error field, and honours the domain's reconnection requests.
 */
export class RingServerTransport implements ServerTransport {
  readonly kind = 'ring';
  private handlers: TransportHandlers | undefined;
  private readonly output: PendingOutput;
  private readingPaused = false;
  /** Set after an error: nothing more is read or written until the domain reconnects. */
  private ignored = false;
  private released = false;
  /** Since when output has waited for room with the domain's consumer index standing still. */
  private unreadSince: number | undefined;
  /** The domain's response consumer index when unreadSince was last set. */
  private consumerSeen = 0;

  constructor(
    readonly ring: XenStoreRing,
    readonly label: string,
    private readonly notify: () => void,
    private readonly onRelease: () => void,
    features: number,
  ) {
    this.output = new PendingOutput(ring.responses);
    ring.advertise(features);
    if (ring.connection === RingConnection.RECONNECT) {
      // A domain that asked to reconnect before we got here finds a fresh ring.
      ring.reset();
      ring.connection = RingConnection.CONNECTED;
    }
  }

  attach(handlers: TransportHandlers): void {
    this.handlers = handlers;
  }

  /** The domain signalled its event channel: look at the ring. */
  kick(): void {
    if (this.released) return;
    if (this.ring.connection === RingConnection.RECONNECT) {
      this.reconnect();
      return;
    }
    if (this.ignored) return;
    this.pushOutput();
    this.pullInput();
  }

  write(bytes: Buffer): boolean {
    if (this.ignored || this.released) return true;
    this.output.add(bytes);
    this.pushOutput();
    return this.output.empty;
  }

  pauseReading(): void {
    this.readingPaused = true;
  }

  resumeReading(): void {
    this.readingPaused = false;
    this.pullInput();
  }

  close(error?: TransportError): void {
    if (error && this.ring.serverFeatures & XsServerFeature.ERROR) this.ring.error = ERROR_CODES[error];
    this.ignored = true;
    this.output.clear();
    this.unreadSince = undefined;
    if (!this.released) this.notify();
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.ignored = true;
    this.handlers = undefined;
    this.onRelease();
  }

  unreadOutputSince(): number | undefined {
    if (!this.ignored && !this.released) this.pushOutput();
    return this.unreadSince;
  }

  private pullInput(): void {
    while (!this.readingPaused && !this.ignored && this.handlers) {
      const chunk = this.ring.requests.consume();
      if (chunk === null) {
        this.fail('ringidx');
        return;
      }
      if (chunk.length === 0) return;
      this.notify();
      this.handlers.onData(chunk);
    }
  }

  private pushOutput(): void {
    if (this.output.empty || this.ignored) return;
    if (!this.output.drain(() => this.notify())) {
      this.fail('ringidx');
      return;
    }
    this.noteReading();
    if (this.output.empty) this.handlers?.onWritable();
  }

  /** Starts the unread-output clock when output is left waiting, and restarts it whenever the domain reads. */
  private noteReading(): void {
    if (this.output.empty) {
      this.unreadSince = undefined;
      return;
    }
    const consumer = this.ring.responses.cons;
    if (this.unreadSince === undefined || consumer !== this.consumerSeen) {
      this.unreadSince = Date.now();
      this.consumerSeen = consumer;
    }
  }

  /** The domain broke the ring's rules: its connection is ignored, and told why. */
  private fail(error: TransportError): void {
    log.warn(`${this.label}: ${FAULTS[error]}: ignored until the domain reconnects`);
    if (this.handlers) this.handlers.onFault(error);
    else this.close(error);
  }

  /**
   * Ring reconnection (xenstore-ring.txt): drop partial packets, empty both
   * queues, discard requests, watches and transactions (the daemon does that
   * in onReset, starting a fresh connection), then say the ring is connected.
   */
  private reconnect(): void {
    this.ring.reset();
    this.ring.error = XsRingError.NONE;
    this.output.clear();
    this.unreadSince = undefined;
    this.ignored = false;
    this.readingPaused = false;
    this.handlers?.onReset?.();
    this.ring.connection = RingConnection.CONNECTED;
    this.notify();
  }
}
