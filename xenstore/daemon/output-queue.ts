import type { RequestTicket } from './connection.js';
import { Fifo } from './fifo.js';

/** A message waiting for the transport. */
export interface Outgoing {
  /** Its place in the connection's output: messages leave in the order they were queued. */
  readonly seq: number;
  readonly frame: Buffer;
  readonly ticket: RequestTicket | undefined;
  /** When an event was queued (a monotonic clock), for the watch-event timeout. */
  readonly queuedAt: number;
  /** For an ordinary watch event: what identifies its duplicates while it waits. */
  readonly dedupeKey: string | undefined;
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
  /** Dedupe keys of the ordinary events waiting (xenstored sends only one of identical events). */
  private readonly waitingEvents = new Set<string>();
  private nextSeq = 0;
  private bytes = 0;

  get length(): number {
    return this.replies.length + this.events.length;
  }

  /** Bytes of the frames waiting. */
  get queuedBytes(): number {
    return this.bytes;
  }

  addReply(frame: Buffer, ticket: RequestTicket | undefined): Outgoing {
    const item: Outgoing = { seq: this.nextSeq++, frame, ticket, queuedAt: 0, dedupeKey: undefined };
    this.replies.push(item);
    this.bytes += frame.length;
    return item;
  }

  /**
   * Queues a watch event queued at `now`; an ordinary one only if no
   * identical one is waiting (special events are exempt). Returns the item,
   * or undefined for a duplicate.
   */
  addEvent(frame: Buffer, ticket: RequestTicket | undefined, special: boolean, now: number): Outgoing | undefined {
    let dedupeKey: string | undefined;
    if (!special) {
      dedupeKey = frame.toString('latin1');
      if (this.waitingEvents.has(dedupeKey)) return undefined;
      this.waitingEvents.add(dedupeKey);
    }
    const item: Outgoing = { seq: this.nextSeq++, frame, ticket, queuedAt: now, dedupeKey };
    this.events.push(item);
    this.bytes += frame.length;
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
    if (item.dedupeKey !== undefined) this.waitingEvents.delete(item.dedupeKey);
    this.bytes -= item.frame.length;
  }
}
