/**
 * One fuzzing xenstore client: bursts of generated requests sent over a
 * link in random pieces, every message that comes back checked by its
 * Conversation, and now and then something that breaks the protocol on
 * purpose (a payload over 4096 bytes; on a ring, indexes more than a ring
 * apart, or a message left unfinished), after which the daemon must cut
 * the client off for exactly that, and a ring must work again once the
 * domain reconnects it.
 */
import { XS_HEADER_SIZE, XsRingError, XsType, nulStrings } from '../../shared/xs-wire.js';
import type { Prng } from './prng.js';
import { Trail, type FuzzViolation } from './violation.js';
import { confine } from './xs-confine.js';
import { frameStream, type Frame } from './xs-frames.js';
import { RingLink, type LinkEnd, type XsLink } from './xs-links.js';
import { encodeRequest, type XsMessageGenerator } from './xs-messages.js';
import { Conversation, describeFrame } from './xs-oracle.js';
import type { XsWorld } from './xs-vocabulary.js';

export interface XsClientOptions {
  /** Bursts of requests the client sends before it is done. */
  readonly bursts: number;
  /** The most requests one burst holds. */
  readonly maxBurst: number;
  /** How long a reply may take before it counts as lost. */
  readonly replyTimeoutMs: number;
  /**
   * On a ring: the daemon's incomplete-message timeout, if the client may
   * leave a message unfinished to see the daemon drop it (it costs that
   * long and a sweep of the daemon's).
   */
  readonly stallAfterMs?: number;
}

/** How often the daemon looks for unfinished messages (xenstored.ts's sweep), plus slack for a loaded machine. */
const SWEEP_SLACK_MS = 1000 + 4000;

type Action = 'burst' | 'oversize' | 'break-indexes' | 'reconnect' | 'stall';

export interface XsClientStats {
  bursts: number;
  requests: number;
  frames: number;
  replies: number;
  events: number;
  /** Times the daemon cut the client off for something it did wrong on purpose. */
  cutOffs: number;
  /** Requests defused before sending (see xs-confine.ts). */
  defused: number;
}

export class XsFuzzClient {
  readonly conversation = new Conversation();
  readonly trail = new Trail();
  readonly stats: XsClientStats = { bursts: 0, requests: 0, frames: 0, replies: 0, events: 0, cutOffs: 0, defused: 0 };
  /** The tail of the stream that does not make a complete message yet: held until it does. */
  private unsent = Buffer.alloc(0);

  constructor(
    private readonly link: XsLink,
    private readonly rng: Prng,
    private readonly generator: XsMessageGenerator,
    private readonly world: XsWorld,
    private readonly options: XsClientOptions,
  ) {}

  private get ring(): RingLink | undefined {
    return this.link instanceof RingLink ? this.link : undefined;
  }

  /**
   * Runs the client's bursts. Resolves with 'cut-off' when a socket client
   * was rightly disconnected (its life is over), 'done' otherwise; throws a
   * FuzzViolation when the daemon does something the protocol does not allow.
   */
  async run(): Promise<'done' | 'cut-off'> {
    for (let i = 0; i < this.options.bursts; i++) {
      this.stats.bursts++;
      if (!(await this.act(this.pickAction()))) {
        this.link.close();
        return 'cut-off';
      }
    }
    await this.sync();
    this.link.close();
    return 'done';
  }

  /** Does one thing; returns false if the daemon rightly cut a socket client off (a ring reconnects instead). */
  private async act(action: Action): Promise<boolean> {
    switch (action) {
      case 'burst':
        return this.burst();
      case 'oversize': {
        const request = this.generator.oversized();
        this.trail.add(`sent ${request.what}`);
        await this.sendRaw(encodeRequest(request));
        return this.cutOffFor('an oversized payload', XsRingError.PROTO, this.options.replyTimeoutMs);
      }
      case 'break-indexes': {
        const distance = RingLink.badDistance(this.rng);
        await this.settle();
        this.trail.add(`moved the request producer ${distance} bytes from the consumer`);
        this.ring!.breakIndexes(distance);
        return this.cutOffFor('ring indexes more than a ring apart', XsRingError.RINGIDX, this.options.replyTimeoutMs);
      }
      case 'reconnect':
        await this.settle();
        await this.reconnect();
        return true;
      case 'stall': {
        const partial = encodeRequest({ type: XsType.WRITE, reqId: 1, txId: 0, payload: nulStrings('/fuzz/stall', 'x'), what: 'WRITE' });
        const cut = this.rng.int(1, partial.length - 1);
        this.trail.add(`left a message unfinished (${cut} of ${partial.length} bytes)`);
        await this.sendRaw(partial.subarray(0, cut));
        return this.cutOffFor('a message left unfinished', XsRingError.PROTO, this.options.stallAfterMs! + SWEEP_SLACK_MS);
      }
    }
  }

  private pickAction(): Action {
    const onRing = this.ring !== undefined;
    const stall = onRing && this.options.stallAfterMs !== undefined;
    return this.rng.weighted<Action>([
      [96, 'burst'],
      [1.5, 'oversize'],
      [onRing ? 1.5 : 0, 'break-indexes'],
      [onRing ? 1 : 0, 'reconnect'],
      // Rare: it costs the daemon's timeout and a sweep.
      [stall ? 0.2 : 0, 'stall'],
    ]);
  }

  /**
   * Generates a burst, defuses what must not go through, sends every
   * complete message and waits for their replies. A lying length field may
   * make the daemon read a header that announces an oversized payload: then
   * it must cut the client off, as for any oversized payload.
   */
  private async burst(): Promise<boolean> {
    const count = this.rng.int(1, this.options.maxBurst);
    const view = { transactions: this.conversation.knownTransactions, watches: this.conversation.knownWatches };
    const requests = Array.from({ length: count }, () => this.generator.next(view));
    this.stats.requests += count;
    const bytes = Buffer.concat([this.unsent, ...requests.map(encodeRequest)]);
    const framing = frameStream(bytes);
    const defused = confine(bytes, framing.frames, this.world, XS_HEADER_SIZE);
    this.stats.defused += defused.length;
    this.trail.add(`burst of ${count}: ${requests.map((r) => r.what).join(', ')}${defused.length ? ` (defused: ${defused.join(', ')})` : ''}`);
    this.conversation.sent(framing.frames);
    this.stats.frames += framing.frames.length;
    if (framing.oversize) {
      this.unsent = Buffer.alloc(0);
      await this.sendRaw(bytes.subarray(0, framing.oversize.offset + XS_HEADER_SIZE));
      this.trail.add(`the lengths framed a header announcing ${framing.oversize.length} bytes`);
      return this.cutOffFor('a header announcing an oversized payload', XsRingError.PROTO, this.options.replyTimeoutMs);
    }
    this.unsent = Buffer.from(bytes.subarray(framing.consumed));
    await this.sendRaw(bytes.subarray(0, framing.consumed));
    await this.settle();
    return true;
  }

  private async sendRaw(bytes: Buffer): Promise<void> {
    if (bytes.length > 0) await this.link.send(bytes, this.rng);
  }

  /** Waits until every request sent has its reply, checking each message that comes. */
  private async settle(): Promise<void> {
    while (this.conversation.owed > 0) {
      const message = await this.link.next(this.options.replyTimeoutMs);
      if (message === undefined) {
        throw this.trail.violation(`no reply within ${this.options.replyTimeoutMs} ms to ${describeFrame(this.conversation.oldestOwed!)} (${this.conversation.owed} owed)`);
      }
      if ('end' in message) throw this.unexpectedEnd(message);
      this.check(message);
    }
  }

  /**
   * After a protocol violation of our own the daemon must cut the client
   * off for it; a ring then reconnects and goes on (true), a socket client's
   * life is over (false).
   */
  private async cutOffFor(why: string, ringError: number, timeoutMs: number): Promise<boolean> {
    await this.expectCutOff(why, ringError, timeoutMs);
    if (!this.ring) return false;
    await this.reconnect();
    return true;
  }

  /**
   * Replies to what came before the violation may still arrive (not
   * necessarily all: the connection's output goes with it), then the link
   * must end, the way the protocol says.
   */
  private async expectCutOff(why: string, ringError: number, timeoutMs: number): Promise<void> {
    for (;;) {
      const message = await this.link.next(timeoutMs);
      if (message === undefined) throw this.trail.violation(`not cut off within ${timeoutMs} ms after ${why}`);
      if (!('end' in message)) {
        this.check(message);
        continue;
      }
      const expected = this.ring ? message.end === 'ring-error' && message.code === ringError : message.end === 'closed';
      if (!expected) throw this.trail.violation(`after ${why} the link ended with ${describeEnd(message)}, not ${this.ring ? `ring error ${ringError}` : 'a closed socket'}`);
      this.stats.cutOffs++;
      this.trail.add(`cut off (${describeEnd(message)}) after ${why}`);
      return;
    }
  }

  private async reconnect(): Promise<void> {
    if (!(await this.ring!.reconnect(this.options.replyTimeoutMs))) throw this.trail.violation('the ring did not come back after a reconnection');
    this.conversation.reset();
    this.unsent = Buffer.alloc(0);
    this.trail.add('reconnected the ring');
  }

  /** A well-formed request whose reply proves nothing else is left to come. */
  private async sync(): Promise<void> {
    const frame: Frame = { type: XsType.GET_DOMAIN_PATH, reqId: 0x5e5e, txId: 0, payload: nulStrings('0'), offset: 0 };
    const bytes = Buffer.concat([this.unsent, encodeRequest({ ...frame, what: 'sync' })]);
    this.unsent = Buffer.alloc(0);
    const framing = frameStream(bytes);
    if (framing.oversize) return;
    this.conversation.sent(framing.frames);
    await this.sendRaw(bytes);
    await this.settle();
  }

  private check(message: Frame): void {
    const problem = this.conversation.received(message);
    if (problem) throw this.trail.violation(problem);
    this.stats.replies = this.conversation.answered;
    this.stats.events = this.conversation.events;
  }

  private unexpectedEnd(end: LinkEnd): FuzzViolation {
    return this.trail.violation(`the link ended with ${describeEnd(end)} though the client broke no rule (${this.conversation.owed} replies owed)`);
  }

}

function describeEnd(end: LinkEnd): string {
  switch (end.end) {
    case 'closed':
      return 'the socket closed by the daemon';
    case 'ring-error':
      return `ring error indicator ${end.code}`;
    case 'garbled':
      return 'the daemon sending a header that announces an oversized payload';
  }
}
