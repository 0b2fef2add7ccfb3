/**
 * What a xenstore client may expect back, whatever it sent: one reply per
 * complete request, in order, with the request's req_id and tx_id, of the
 * request's type (its payload shaped as that type's reply is) or ERROR
 * with one of xs_wire.h's errno names; and watch events only for watches
 * the client has, for paths at or below the watched one. A Conversation
 * follows one client's requests and checks everything that comes back;
 * each check returns what is wrong, or undefined.
 */
import { XsType, isXsErrorName, splitNulStrings } from '../../shared/xs-wire.js';
import type { Frame } from './xs-frames.js';

/** Requests whose only successful reply is "OK". */
const OK_REPLIES = new Set<number>([
  XsType.WRITE,
  XsType.MKDIR,
  XsType.RM,
  XsType.SET_PERMS,
  XsType.WATCH,
  XsType.UNWATCH,
  XsType.TRANSACTION_END,
  XsType.INTRODUCE,
  XsType.RELEASE,
  XsType.RESUME,
  XsType.SET_TARGET,
  XsType.RESET_WATCHES,
  XsType.SET_FEATURE,
  XsType.SET_QUOTA,
]);

/** The shape of a successful reply, for the types whose replies have one. */
const REPLY_SHAPES = new Map<number, RegExp>([
  [XsType.TRANSACTION_START, /^[1-9][0-9]*\0$/],
  [XsType.GET_DOMAIN_PATH, /^\/local\/domain\/[0-9]+\0$/],
  [XsType.IS_DOMAIN_INTRODUCED, /^[TF]\0$/],
  [XsType.GET_PERMS, /^([nrwb][0-9]+\0)+$/],
  [XsType.DIRECTORY, /^([A-Za-z0-9_@-]+\0)*$/],
  [XsType.GET_FEATURE, /^[0-9]+\0$/],
]);

const OK_PAYLOAD = 'OK\0';

/** A printable glimpse of a payload for reports. */
export function glimpse(payload: Buffer, max = 60): string {
  const text = payload.toString('latin1', 0, Math.min(payload.length, max)).replace(/[^\x20-\x7e]/g, (c) => (c === '\0' ? '\\0' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
  return payload.length > max ? `${text}... (${payload.length} bytes)` : text;
}

export function describeFrame(frame: Frame): string {
  return `type ${frame.type} req ${frame.reqId} tx ${frame.txId} "${glimpse(frame.payload)}"`;
}

/** Why `reply` is not an acceptable answer to `request`, or undefined. */
export function replyProblem(request: Frame, reply: Frame): string | undefined {
  if (reply.reqId !== request.reqId) return `reply req_id ${reply.reqId} to request req_id ${request.reqId}`;
  if (reply.txId !== request.txId) return `reply tx_id ${reply.txId} to request tx_id ${request.txId}`;
  const text = reply.payload.toString('latin1');
  if (reply.type === XsType.ERROR) {
    const name = text.endsWith('\0') ? text.slice(0, -1) : undefined;
    if (name === undefined || !isXsErrorName(name)) return `ERROR reply "${glimpse(reply.payload)}" is not an errno name of xs_wire.h`;
    return undefined;
  }
  if (reply.type !== request.type) return `reply of type ${reply.type} to a request of type ${request.type}`;
  if (OK_REPLIES.has(request.type) && text !== OK_PAYLOAD) return `reply "${glimpse(reply.payload)}" where only OK can succeed`;
  const shape = REPLY_SHAPES.get(request.type);
  if (shape && !shape.test(text)) return `reply "${glimpse(reply.payload)}" is not shaped as a type ${request.type} reply`;
  return undefined;
}

/** The first error name of a reply, or undefined if it succeeded. */
function errorOf(reply: Frame): string | undefined {
  return reply.type === XsType.ERROR ? reply.payload.toString('latin1').replace(/\0$/, '') : undefined;
}

/** Whether an event path is the watched path or below it (relative or absolute as the watch was given). */
function within(eventPath: string, watched: string): boolean {
  if (eventPath === watched) return true;
  return eventPath.startsWith(watched === '/' ? '/' : `${watched}/`);
}

/** One client's requests, and the state its replies imply. */
export class Conversation {
  private readonly waiting: Frame[] = [];
  /** Watches the daemon confirmed and has not removed: token, and the path as the client gave it. */
  private readonly watches: { path: string; token: string }[] = [];
  /** Transactions the daemon opened for the client and that have not ended. */
  private readonly transactions: number[] = [];
  answered = 0;
  events = 0;

  /** Replies still owed. */
  get owed(): number {
    return this.waiting.length;
  }

  /** The oldest request still owed a reply. */
  get oldestOwed(): Frame | undefined {
    return this.waiting[0];
  }

  get knownWatches(): readonly { path: string; token: string }[] {
    return this.watches;
  }

  get knownTransactions(): readonly number[] {
    return this.transactions;
  }

  sent(frames: readonly Frame[]): void {
    this.waiting.push(...frames);
  }

  /** Checks a message from the daemon; returns what is wrong with it, or undefined. */
  received(message: Frame): string | undefined {
    if (message.type === XsType.WATCH_EVENT) return this.event(message);
    const request = this.waiting.shift();
    if (!request) return `an unsolicited reply: ${describeFrame(message)}`;
    const problem = replyProblem(request, message);
    if (problem) return `${problem} (request ${describeFrame(request)}, reply ${describeFrame(message)})`;
    this.answered++;
    this.learn(request, message);
    return undefined;
  }

  /** The connection starts over (ring reconnection): nothing is owed, no watch or transaction is left. */
  reset(): void {
    this.waiting.length = 0;
    this.watches.length = 0;
    this.transactions.length = 0;
  }

  private event(message: Frame): string | undefined {
    this.events++;
    if (message.reqId !== 0 || message.txId !== 0) return `a watch event with req_id ${message.reqId} tx_id ${message.txId}`;
    const { strings, trailing } = splitNulStrings(message.payload);
    if (strings.length !== 2 || trailing !== 0) return `a watch event "${glimpse(message.payload)}" is not a path and a token`;
    const [path, token] = strings as [string, string];
    if (!this.watches.some((w) => w.token === token && within(path, w.path))) {
      return `a watch event for ${path} with token "${glimpse(Buffer.from(token, 'latin1'))}", which no watch of this client matches`;
    }
    return undefined;
  }

  /** What a successful (or failed) reply says about the client's watches and transactions. */
  private learn(request: Frame, reply: Frame): void {
    const error = errorOf(reply);
    const args = splitNulStrings(request.payload).strings;
    switch (request.type) {
      case XsType.WATCH:
        if (error === undefined) this.watches.push({ path: args[0]!, token: args[1]! });
        break;
      case XsType.UNWATCH:
        if (error === undefined) {
          // A watch given the other way (relative, absolute) is kept: its events are then let through, never refused wrongly.
          const index = this.watches.findIndex((w) => w.token === args[1] && w.path === args[0]);
          if (index >= 0) this.watches.splice(index, 1);
        }
        break;
      case XsType.RESET_WATCHES:
        if (error === undefined) {
          this.watches.length = 0;
          this.transactions.length = 0;
        }
        break;
      case XsType.TRANSACTION_START:
        if (error === undefined) this.transactions.push(Number(reply.payload.toString('latin1', 0, reply.payload.length - 1)));
        break;
      case XsType.TRANSACTION_END:
        // Whatever the commit's outcome, the transaction is gone unless it was never there or the argument was bad.
        if (error !== 'ENOENT' && error !== 'EINVAL') {
          const index = this.transactions.indexOf(request.txId);
          if (index >= 0) this.transactions.splice(index, 1);
        }
        break;
    }
  }
}
