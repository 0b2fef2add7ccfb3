import { createLogger } from '../../shared/log.js';
import { XsFrameDecoder, XsType, encodeMessage, type XsHeader, type XsMessage } from '../../shared/xs-wire.js';
import type { Transaction } from '../store/transaction.js';
import type { DomainRecord } from './domains.js';
import type { ServerTransport, TransportError } from './transport.js';
import { OutputQueue, frameOf, type Outgoing } from './output-queue.js';
import { ConnectionWatches } from './watches.js';

const log = createLogger('xenstored');

/**
 * Ties a request to everything it caused to be queued (its reply, and the
 * watch events an unprivileged domain's change fired for others): the
 * request stays outstanding for its domain until all of them are delivered
 * or dropped, so that a domain cannot make others' queues grow without
 * limit (XSA-326).
 */
export class RequestTicket {
  private refs = 0;

  constructor(private readonly release: () => void) {}

  hold(): void {
    this.refs++;
  }

  drop(): void {
    if (--this.refs === 0) this.release();
  }
}

export interface ConnectionHooks {
  /** A complete message arrived and may be processed now. */
  process(conn: Connection, msg: XsMessage): void;
  /** Whether the connection may process another request now (quotas, flow control). */
  mayProcess(conn: Connection): boolean;
  /** The peer sent a header announcing an oversized payload. */
  oversize(conn: Connection, header: XsHeader): void;
  /** Memory held by the connection changed by `delta` bytes. */
  memory(conn: Connection, delta: number): void;
  /** The connection's watches and transactions must go (it was closed, ignored or reset). */
  dropped(conn: Connection): void;
  /** The connection is gone for good. */
  closed(conn: Connection): void;
}

/**
 * One client of the daemon: a socket or a domain's ring. It parses incoming
 * messages, queues outgoing ones, and holds the client's watches and
 * transactions. Requests are processed one at a time, in order.
 *
 * A socket connection that misbehaves is closed. A ring connection is
 * ignored instead, as xenstored does: the domain stays introduced, told why
 * through the ring's error field, and may start over with a ring reconnection.
 */
export class Connection {
  readonly watches = new ConnectionWatches<Connection>();
  readonly transactions = new Map<number, Transaction>();
  private nextTransactionId = 1;
  private inbox: XsMessage[] = [];
  private readonly output = new OutputQueue();
  private writable = true;
  private readingPaused = false;
  private pumping = false;
  private flushing = false;
  private closedFlag = false;
  private ignoredFlag = false;
  private decoder: XsFrameDecoder;
  /** Since when a message has been partly received, if one is. */
  private partialSince: number | undefined;
  /**
   * When the daemon last saw the domain paused, suspended or dying while
   * its timeouts ran: time before it does not count against the domain.
   */
  heldAt: number | undefined;

  constructor(
    readonly id: number,
    readonly transport: ServerTransport,
    readonly domain: DomainRecord,
    private readonly hooks: ConnectionHooks,
  ) {
    this.decoder = this.newDecoder();
    transport.attach({
      onData: (chunk) => this.onData(chunk),
      onWritable: () => {
        this.writable = true;
        this.flush();
      },
      onClose: () => this.teardown(),
      onFault: (error) => this.close(error),
      onReset: () => this.reset(),
    });
  }

  get domid(): number {
    return this.domain.domid;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Not served until the domain reconnects its ring. */
  get ignored(): boolean {
    return this.ignoredFlag;
  }

  /**
   * What the output queued for the peer and not yet accepted by the
   * transport costs the daemon, by queuedCost: its frames and their upkeep.
   */
  get queuedBytes(): number {
    return this.output.queuedBytes;
  }

  /** Replies and watch events waiting to be written to the peer. */
  get queuedMessages(): number {
    return this.output.length;
  }

  /** When the message being received started arriving, if one is only partly here. */
  get partialMessageSince(): number | undefined {
    return this.partialSince;
  }

  /** Picks an unused transaction id (never 0, which means "no transaction"). */
  allocateTransactionId(): number {
    for (;;) {
      const id = this.nextTransactionId;
      this.nextTransactionId = this.nextTransactionId >= 0xffffffff ? 1 : this.nextTransactionId + 1;
      if (!this.transactions.has(id)) return id;
    }
  }

  /** Sends a reply (or error) to a request, or queues it until the transport takes it. */
  reply(frame: Buffer, ticket: RequestTicket | undefined): void {
    if (this.closedFlag || this.ignoredFlag) return;
    if (this.sendsAtOnce()) {
      this.writable = this.transport.write(frame);
      return;
    }
    this.queued(this.output.addReply(frame, ticket));
  }

  /**
   * Sends a watch event with this payload, or queues it unless an identical
   * one is still waiting to be sent (xenstored drops such duplicates; special
   * events are exempt). `now` is read from a monotonic clock. Returns
   * whether it was sent or queued.
   */
  event(payload: Buffer, ticket: RequestTicket | undefined, special: boolean, now: number): boolean {
    if (this.closedFlag || this.ignoredFlag) return true;
    if (this.sendsAtOnce()) {
      this.writable = this.transport.write(encodeMessage(XsType.WATCH_EVENT, 0, 0, payload));
      return true;
    }
    const item = this.output.addEvent(payload, ticket, special, now);
    if (!item) return false;
    this.queued(item);
    return true;
  }

  /**
   * Whether a message may go straight to the transport: nothing waits before
   * it. It is then never queued, and costs neither a copy nor accounting.
   */
  private sendsAtOnce(): boolean {
    return this.writable && !this.flushing && this.output.length === 0;
  }

  private queued(item: Outgoing): void {
    item.ticket?.hold();
    this.hooks.memory(this, item.cost);
    this.flush();
  }

  /**
   * Drops watch events that waited longer than `timeoutMs` (xenstored's
   * watch-event timeout); `now` is read from the clock events were queued by.
   */
  expireEvents(now: number, timeoutMs: number): number {
    let bytes = 0;
    const tickets: RequestTicket[] = [];
    const count = this.output.expire(now - timeoutMs, (item) => {
      bytes += item.cost;
      if (item.ticket) tickets.push(item.ticket);
    });
    // One accounting update for the lot: a sweep may drop a great many.
    if (bytes > 0) this.hooks.memory(this, -bytes);
    for (const ticket of tickets) ticket.drop();
    return count;
  }

  private flush(): void {
    // Releasing an item can wake requests that queue more output; the
    // guard keeps that output behind what is being written now.
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.writable && !this.closedFlag && !this.ignoredFlag) {
        const item = this.output.shift();
        if (!item) break;
        this.writable = this.transport.write(frameOf(item));
        this.release(item);
      }
    } finally {
      this.flushing = false;
    }
    this.pump();
  }

  /** What an item held goes, once it is sent or dropped (it has left the queue already). */
  private release(item: Outgoing): void {
    this.hooks.memory(this, -item.cost);
    item.ticket?.drop();
  }

  private onData(chunk: Buffer): void {
    if (this.closedFlag || this.ignoredFlag) return;
    this.decoder.push(chunk);
    if (this.decoder.bufferedBytes === 0) this.partialSince = undefined;
    else this.partialSince ??= Date.now();
  }

  private receive(msg: XsMessage): void {
    this.inbox.push(msg);
    this.pump();
  }

  /**
   * Processes queued requests while the daemon allows it; otherwise stops
   * reading from the transport until `pump` is called again.
   */
  pump(): void {
    if (this.pumping || this.closedFlag || this.ignoredFlag) return;
    this.pumping = true;
    try {
      while (this.inbox.length > 0 && !this.closedFlag && !this.ignoredFlag) {
        if (!this.hooks.mayProcess(this)) break;
        const msg = this.inbox.shift()!;
        try {
          this.hooks.process(this, msg);
        } catch (err) {
          // A fault here must cost this client its connection, never the daemon.
          log.error(`connection ${this.id} (d${this.domid}) dropped after an internal error: ${(err as Error)?.stack ?? err}`);
          this.close('comm');
        }
      }
    } finally {
      this.pumping = false;
    }
    if (this.closedFlag || this.ignoredFlag) return;
    const blocked = this.inbox.length > 0;
    if (blocked && !this.readingPaused) {
      this.readingPaused = true;
      this.transport.pauseReading();
    } else if (!blocked && this.readingPaused) {
      this.readingPaused = false;
      this.transport.resumeReading();
    }
  }

  /**
   * Ends service to the peer, telling a ring peer why when it misbehaved: a
   * socket connection is gone, a ring connection is ignored until its
   * domain reconnects.
   */
  close(error?: TransportError): void {
    if (this.closedFlag || this.ignoredFlag) return;
    this.transport.close(error);
    if (this.transport.kind === 'socket') {
      this.teardown();
      return;
    }
    this.ignoredFlag = true;
    this.dropState();
  }

  /** Gone for good: the daemon stops, or the domain was released or died. */
  destroy(): void {
    if (!this.closedFlag) this.transport.close();
    this.teardown();
    this.transport.release?.();
  }

  /** Ring reconnection: a fresh connection on the same ring. */
  private reset(): void {
    if (this.closedFlag) return;
    this.dropState();
    this.ignoredFlag = false;
    this.writable = true;
    this.readingPaused = false;
  }

  private dropState(): void {
    this.decoder.stop();
    this.decoder = this.newDecoder();
    this.partialSince = undefined;
    this.inbox = [];
    for (const item of this.output.takeAll()) this.release(item);
    this.hooks.dropped(this);
  }

  private teardown(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.dropState();
    this.hooks.closed(this);
  }

  private newDecoder(): XsFrameDecoder {
    return new XsFrameDecoder(
      (msg) => this.receive(msg),
      (header) => this.hooks.oversize(this, header),
    );
  }
}
