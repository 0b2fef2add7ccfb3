/**
 * The two ways a fuzzing client reaches xenstored, both byte-exact: a Unix
 * socket (acting as dom0) and a domain's xenstore ring on the embedded
 * machine (acting as that domain, unprivileged). Each sends whatever bytes
 * it is given, in the pieces it is told, and hands back what the daemon
 * sent framed by the oracle's own framer, or how the link ended: the socket
 * closed, or the ring's error indicator set.
 */
import { connect, type Socket } from 'node:net';
import type { EventDispatcher } from '../../shared/event-dispatcher.js';
import { XsRingError } from '../../shared/xs-wire.js';
import { PendingOutput, RingConnection, XENSTORE_RING_SIZE, type XenStoreRing } from '../../xenstore/ring.js';
import type { Prng } from './prng.js';
import { FrameReader, type Frame } from './xs-frames.js';

/**
 * How a link stopped carrying messages: the socket closed, the ring's error
 * indicator was set, or the daemon itself sent a header announcing an
 * oversized payload (never acceptable).
 */
export type LinkEnd = { readonly end: 'closed' } | { readonly end: 'ring-error'; readonly code: number } | { readonly end: 'garbled' };

export interface XsLink {
  readonly label: string;
  /** Sends bytes in random pieces; resolves once they are handed over (a ring may still be draining them). */
  send(bytes: Buffer, pieces: Prng): Promise<void>;
  /** The next message from the daemon, how the link ended, or undefined after `timeoutMs` of silence. */
  next(timeoutMs: number): Promise<Frame | LinkEnd | undefined>;
  close(): void;
}

/** Collects messages and the link's end, and wakes whoever waits for them. */
class Inbox {
  private readonly queue: Frame[] = [];
  private ended: LinkEnd | undefined;
  private wake: (() => void) | undefined;

  push(frames: readonly Frame[]): void {
    if (frames.length === 0) return;
    this.queue.push(...frames);
    this.wake?.();
  }

  end(how: LinkEnd): void {
    this.ended ??= how;
    this.wake?.();
  }

  clear(): void {
    this.queue.length = 0;
    this.ended = undefined;
  }

  async next(timeoutMs: number): Promise<Frame | LinkEnd | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const frame = this.queue.shift();
      if (frame) return frame;
      if (this.ended) return this.ended;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }
}

/** Splits `bytes` into 1 to 4 random pieces (or leaves it whole). */
function pieces(bytes: Buffer, rng: Prng): Buffer[] {
  const count = rng.weighted([
    [6, 1],
    [2, 2],
    [1, 4],
  ]);
  const cuts = Array.from({ length: count - 1 }, () => rng.int(0, bytes.length)).sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    out.push(bytes.subarray(from, cut));
    from = cut;
  }
  return out.filter((piece) => piece.length > 0);
}

/** A dom0 client on the daemon's Unix socket. */
export class SocketLink implements XsLink {
  private readonly inbox = new Inbox();
  private readonly reader = new FrameReader();

  private constructor(
    private readonly socket: Socket,
    readonly label: string,
  ) {
    socket.on('data', (chunk) => {
      this.inbox.push(this.reader.push(chunk));
      if (this.reader.broken) this.inbox.end({ end: 'garbled' });
    });
    socket.on('error', () => {});
    socket.on('close', () => this.inbox.end({ end: 'closed' }));
  }

  static open(path: string, label: string): Promise<SocketLink> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new SocketLink(socket, label));
      });
    });
  }

  async send(bytes: Buffer, rng: Prng): Promise<void> {
    for (const piece of pieces(bytes, rng)) {
      if (this.socket.destroyed) return;
      this.socket.write(piece);
      // Now and then let the daemon read what came so far, so that its reads end mid-message.
      if (rng.chance(0.3)) await new Promise((resolve) => setImmediate(resolve));
    }
  }

  next(timeoutMs: number): Promise<Frame | LinkEnd | undefined> {
    return this.inbox.next(timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A domain's xenstore ring as a batch holds it: the fuzzing link, and what the project's own client needs to take over. */
export interface FuzzRing {
  readonly link: RingLink;
  readonly ring: XenStoreRing;
  readonly events: EventDispatcher;
  readonly port: number;
}

/** Byte offset of the ring's index words in the page (xenstore-ring.txt). */
const RING_INDEXES = 2048;
/** Word numbers of the request consumer and producer indexes. */
const REQ_CONS_WORD = 0;
const REQ_PROD_WORD = 1;

/**
 * A domain's end of its xenstore ring, driven by hand: bytes go in as the
 * ring's free space allows, replies are taken out at every event, and the
 * error indicator ends the link until it reconnects.
 */
export class RingLink implements XsLink {
  private readonly inbox = new Inbox();
  private readonly reader = new FrameReader();
  private readonly output: PendingOutput;
  private readonly words: Int32Array;
  private failed = false;
  private closed = false;

  constructor(
    private readonly ring: XenStoreRing,
    private readonly events: EventDispatcher,
    private readonly port: number,
    readonly label: string,
  ) {
    this.output = new PendingOutput(ring.requests);
    this.words = new Int32Array(ring.page.buffer, ring.page.byteOffset + RING_INDEXES, 7);
    events.on(port, () => this.kick());
  }

  async send(bytes: Buffer, rng: Prng): Promise<void> {
    for (const piece of pieces(bytes, rng)) {
      this.output.add(Buffer.from(piece));
      this.kick();
      if (rng.chance(0.3)) await new Promise((resolve) => setImmediate(resolve));
    }
  }

  next(timeoutMs: number): Promise<Frame | LinkEnd | undefined> {
    this.kick();
    return this.inbox.next(timeoutMs);
  }

  /**
   * Moves the request producer index `distance` bytes past the consumer
   * (more than a ring: xenstored must set the error indicator) and signals.
   */
  breakIndexes(distance: number): void {
    const cons = Atomics.load(this.words, REQ_CONS_WORD);
    Atomics.store(this.words, REQ_PROD_WORD, (cons + distance) | 0);
    this.signal();
  }

  /** The distance breakIndexes uses: beyond a ring ahead, or behind. */
  static badDistance(rng: Prng): number {
    return rng.pick([XENSTORE_RING_SIZE + 1, XENSTORE_RING_SIZE + rng.int(2, 100_000), -1, -rng.int(2, 5000), 0x7fff_ffff]);
  }

  /**
   * Ring reconnection (xenstore-ring.txt): asks xenstored to start over and
   * waits until it says the ring is connected again. Nothing of the old
   * connection is owed any more.
   */
  async reconnect(timeoutMs: number): Promise<boolean> {
    this.output.clear();
    this.ring.connection = RingConnection.RECONNECT;
    this.signal();
    const deadline = Date.now() + timeoutMs;
    while (this.ring.connection !== RingConnection.CONNECTED) {
      if (Date.now() > deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    this.reader.reset();
    this.inbox.clear();
    this.failed = false;
    return this.ring.error === XsRingError.NONE;
  }

  /** Stops listening; the ring stays as it is, for whoever uses it next. */
  close(): void {
    this.closed = true;
    this.events.off(this.port);
  }

  private signal(): void {
    this.events.channels.notify(this.port);
  }

  private kick(): void {
    if (this.closed || this.failed) return;
    if (this.ring.connection !== RingConnection.CONNECTED) return;
    const error = this.ring.error;
    if (error !== XsRingError.NONE) {
      this.failed = true;
      this.inbox.end({ end: 'ring-error', code: error });
      return;
    }
    for (;;) {
      const chunk = this.ring.responses.consume();
      if (chunk === null) {
        // xenstored's own indexes are never inconsistent.
        this.failed = true;
        this.inbox.end({ end: 'garbled' });
        return;
      }
      if (chunk.length === 0) break;
      this.signal();
      this.inbox.push(this.reader.push(chunk));
      if (this.reader.broken) {
        this.failed = true;
        this.inbox.end({ end: 'garbled' });
        return;
      }
    }
    if (!this.output.drain(() => this.signal())) {
      // Only breakIndexes makes our own indexes inconsistent; xenstored notices and says so.
      this.output.clear();
    }
  }
}
