import { XS_HEADER_SIZE, XsType, encodeMessage } from '../../shared/xs-wire.js';
import type { RequestTicket } from './connection.js';
import { Fifo } from './fifo.js';

/**
 * What a waiting message costs beyond its frame's bytes: its record, the
 * header of the string holding it, its slots in the FIFO and the dedupe set,
 * and the slack the heap keeps around them. Measured on Node 20 (x64) by
 * queuing 200,000 replies or events with frames of 30 to 1,000 bytes: the
 * live heap grows by 110 to 120 bytes a message beyond its frame, the
 * process (RSS) by 320 to 400. The RSS figure for the small messages a
 * flood is made of is what is charged.
 */
export const QUEUED_ITEM_OVERHEAD = 320;

/** What a message of `frameBytes` costs while it waits. */
export function queuedCost(frameBytes: number): number {
  return frameBytes + QUEUED_ITEM_OVERHEAD;
}

/**
 * A message waiting for the transport. It is held as a latin1 string, which
 * keeps each byte as one character: a string costs less than half what a
 * buffer of its own does to hold (no ArrayBuffer, no backing store), and
 * cannot be a slice of a larger allocation.
 */
export interface Outgoing {
  /** Its place in the connection's output: messages leave in the order they were queued. */
  readonly seq: number;
  /**
   * A reply's whole frame; or a watch event's payload (path and token, each
   * NUL-terminated), framed when it is sent, which is also the key its
   * duplicates are recognised by.
   */
  readonly text: string;
  readonly isEvent: boolean;
  /** Whether the event takes part in dedupe (special events do not). */
  readonly deduped: boolean;
  readonly ticket: RequestTicket | undefined;
  /** When an event was queued (a monotonic clock), for the watch-event timeout. */
  readonly queuedAt: number;
  /** What it is charged while it waits (queuedCost of its frame). */
  readonly cost: number;
}

/** The frame to hand the transport for a waiting message. */
export function frameOf(item: Outgoing): Buffer {
  const bytes = Buffer.from(item.text, 'latin1');
  return item.isEvent ? encodeMessage(XsType.WATCH_EVENT, 0, 0, bytes) : bytes;
}

/**
 * The output of one connection that the transport has not taken yet: replies
 * and watch events, sent in the order they were queued, each costing O(1) to
 * add, to send and to expire however long the queue grows.
 *
 * Replies and events wait in two FIFOs, each item numbered in queue order;
 * the next to send is the lower-numbered of the two heads. Only events
 * expire, and they are queued in time order, so the expired ones are always
 * at the head of theirs: expiring looks at those and one more, never at the
 * rest of the queue.
 */
export class OutputQueue {
  private readonly replies = new Fifo<Outgoing>();
  private readonly events = new Fifo<Outgoing>();
  /** Payloads of the ordinary events waiting (xenstored sends only one of identical events). */
  private readonly waitingEvents = new Set<string>();
  private nextSeq = 0;
  private bytes = 0;

  get length(): number {
    return this.replies.length + this.events.length;
  }

  /** What the waiting messages cost, by queuedCost. */
  get queuedBytes(): number {
    return this.bytes;
  }

  addReply(frame: Buffer, ticket: RequestTicket | undefined): Outgoing {
    const cost = queuedCost(frame.length);
    const text = frame.toString('latin1');
    const item: Outgoing = { seq: this.nextSeq++, text, isEvent: false, deduped: false, ticket, queuedAt: 0, cost };
    this.replies.push(item);
    this.bytes += cost;
    return item;
  }

  /**
   * Queues a watch event's payload, queued at `now`; an ordinary one only if
   * no identical one is waiting (special events are exempt). Returns the
   * item, or undefined for a duplicate.
   */
  addEvent(payload: Buffer, ticket: RequestTicket | undefined, special: boolean, now: number): Outgoing | undefined {
    const text = payload.toString('latin1');
    if (!special) {
      if (this.waitingEvents.has(text)) return undefined;
      this.waitingEvents.add(text);
    }
    const cost = queuedCost(XS_HEADER_SIZE + payload.length);
    const item: Outgoing = { seq: this.nextSeq++, text, isEvent: true, deduped: !special, ticket, queuedAt: now, cost };
    this.events.push(item);
    this.bytes += cost;
    return item;
  }

  /** Takes out the message to send next. */
  shift(): Outgoing | undefined {
    const reply = this.replies.peek();
    const event = this.events.peek();
    if (reply === undefined && event === undefined) return undefined;
    const item = event === undefined || (reply !== undefined && reply.seq < event.seq) ? this.replies.shift()! : this.events.shift()!;
    this.forget(item);
    return item;
  }

  /** Takes out the events queued at or before `cutoff`, oldest first, handing each to `dropped`. */
  expire(cutoff: number, dropped: (item: Outgoing) => void): number {
    let count = 0;
    for (let head = this.events.peek(); head !== undefined && head.queuedAt <= cutoff; head = this.events.peek()) {
      this.events.shift();
      this.forget(head);
      dropped(head);
      count++;
    }
    return count;
  }

  /** Takes out everything (the connection is dropped; the order no longer matters). */
  takeAll(): Outgoing[] {
    const all = this.replies.takeAll().concat(this.events.takeAll());
    this.waitingEvents.clear();
    this.bytes = 0;
    return all;
  }

  private forget(item: Outgoing): void {
    if (item.deduped) this.waitingEvents.delete(item.text);
    this.bytes -= item.cost;
  }
}
