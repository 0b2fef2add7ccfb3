import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { XsError } from '../shared/errors.js';
import { createLogger, type Logger } from '../shared/log.js';
import type { PlatformLink } from '../shared/platform.js';
import type { VbdCounters } from '../shared/vbd-stats.js';
import type { XsErrorName } from '../shared/xs-wire.js';
import type { GrantAccess } from './io-pool.js';
import { answeredRequests, readRingCounters, RING_COUNTERS_BYTES } from './ring-counters.js';
import type { FromRingThread, IoEngine, IoEngineChoice, RingSpec, RingThreadData } from './ring-messages.js';

/**
 * Ring threads per driver domain: one per core, up to four (the most
 * queues a frontend is offered, BLKBACK_MAX_QUEUES), so that the queues of
 * one device run in parallel and a thousand devices do not cost a thousand
 * threads. Each ring belongs to exactly one of them for its whole life.
 */
export const DEFAULT_RING_THREADS = Math.max(1, Math.min(4, availableParallelism()));

/** Node options that load modules before the program (instrumentation, test harnesses' module hooks). */
const PRELOAD_OPTIONS = /^--(import|require|loader|experimental-loader)(=|$)|^-r$/;

/**
 * The process's Node options without its preloads: a ring thread runs the
 * data path and nothing else, and module hooks (a test harness's, an
 * instrumentation's) made starting one take seconds, since each of its
 * imports went through the hooks' thread.
 */
export function withoutPreloads(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const option = execArgv[i]!;
    if (!PRELOAD_OPTIONS.test(option)) kept.push(option);
    // The option's value as the next argument (`--import x`, `-r x`).
    else if (!option.includes('=')) i++;
  }
  return kept;
}

/** A ring being served by a ring thread. */
export interface RingLease {
  /** Requests answered so far. */
  readonly served: number;
  /** The ring's counters now (still readable once the ring stopped, or its thread died). */
  counters(): VbdCounters;
  /** Stops taking requests, answers those taken, and lets go of the ring and its event channel. */
  stop(): Promise<void>;
}

/** What a device asks for: everything of a RingSpec but the parts the threads fill in. */
export type RingRequest = Omit<RingSpec, 'id' | 'counters'>;

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

/** One ring thread, as its parent sees it. */
class RingThread {
  readonly worker: Worker;
  /** Rings attached, by id, with what to call if the frontend breaks one. */
  readonly rings = new Map<number, { device: string; broken(why: string): void }>();
  private readonly waiters = new Map<number, Waiter>();
  readonly ready: Promise<{ engine: IoEngine; reason?: string }>;
  private gone: Error | undefined;

  constructor(
    data: RingThreadData,
    private readonly log: Logger,
    private readonly onGone: (thread: RingThread) => void,
  ) {
    this.worker = new Worker(new URL('./ring-worker.js', import.meta.url), { workerData: data, execArgv: withoutPreloads(process.execArgv) });
    this.worker.unref();
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('message', (message: FromRingThread) => {
        switch (message.type) {
          case 'ready':
            resolve(message.reason === undefined ? { engine: message.engine } : { engine: message.engine, reason: message.reason });
            break;
          case 'unusable':
            reject(new XsError('EINVAL', `the block backend's I/O engine cannot run: ${message.reason}`));
            break;
          default:
            this.received(message);
        }
      });
      this.worker.on('error', (err) => this.lost(err, reject));
      this.worker.on('exit', (code) => this.lost(new Error(`the ring thread exited (code ${code})`), reject));
    });
    // A thread that never came up is reported to whoever waits for it, not as an unhandled rejection.
    this.ready.catch(() => {});
  }

  /** Whether the thread is dead (it is replaced for the next rings). */
  get dead(): boolean {
    return this.gone !== undefined;
  }

  /** Rings of `device` here. */
  ringsOf(device: string): number {
    let count = 0;
    for (const ring of this.rings.values()) if (ring.device === device) count++;
    return count;
  }

  /** Sends a request about ring `id` and waits for its answer. */
  ask(id: number, message: { type: 'attach'; spec: RingSpec } | { type: 'stop'; id: number }): Promise<void> {
    if (this.gone) return Promise.reject(this.gone);
    return new Promise<void>((resolve, reject) => {
      this.waiters.set(id, { resolve, reject });
      // Referenced while anything is asked of it, so that a waiting parent is kept alive.
      this.worker.ref();
      this.worker.postMessage(message);
    });
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }

  private received(message: FromRingThread): void {
    switch (message.type) {
      case 'attached':
      case 'stopped':
        this.answer(message.id);
        break;
      case 'failed':
        this.answer(message.id, new XsError(message.errno as XsErrorName, message.message));
        break;
      case 'broken':
        this.rings.get(message.id)?.broken(message.why);
        break;
      case 'log':
        createLogger(message.component)[message.level](message.message);
        break;
      default:
        break;
    }
  }

  private answer(id: number, err?: Error): void {
    const waiter = this.waiters.get(id);
    if (!waiter) return;
    this.waiters.delete(id);
    if (this.waiters.size === 0) this.worker.unref();
    if (err) waiter.reject(err);
    else waiter.resolve();
  }

  /** The thread died: every ring it served is broken, everyone waiting on it is told. */
  private lost(err: Error, rejectReady: (err: Error) => void): void {
    if (this.gone) return;
    this.gone = err;
    rejectReady(err);
    if (this.rings.size > 0) this.log.error(`a ring thread serving ${this.rings.size} ring(s) died: ${err.message}`);
    for (const ring of this.rings.values()) ring.broken(`the ring thread serving it died: ${err.message}`);
    this.rings.clear();
    for (const waiter of this.waiters.values()) waiter.reject(err);
    this.waiters.clear();
    this.onGone(this);
  }
}

/**
 * The ring threads of a driver domain's block backend. A device's queues
 * are spread over different threads; each ring, once attached, is served
 * by its thread alone until it is stopped.
 */
export class RingThreads {
  private readonly threads: RingThread[] = [];
  private nextId = 1;
  private closed = false;
  private readonly log = createLogger('blkback');

  constructor(
    link: PlatformLink,
    domid: number,
    private readonly count: number,
    engine: IoEngineChoice,
    grantAccess: GrantAccess,
    /** The thread whose death releases the rings' mappings (the domain's kernel). */
    holder: number,
  ) {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`ring threads must be a positive integer, not ${count}`);
    this.data = { link: { ...link, holder }, domid, engine, grantAccess };
  }

  private readonly data: RingThreadData;

  /**
   * Starts every thread now, so that starting one (a worker, its platform
   * attachment, its engine) is never on the way of a frontend connecting.
   */
  start(): void {
    while (this.threads.length < this.count) this.spawn();
  }

  /** The engine the threads run (starting one if none runs yet), with why it is not io_uring where it is not. */
  async engine(): Promise<{ engine: IoEngine; reason?: string }> {
    return this.pick('').ready;
  }

  /**
   * Hands a ring to a thread: resolves once the thread has mapped it and
   * bound its event channel; rejects with an XsError (ENOENT: the frontend
   * is gone; EINVAL: what it published cannot be mapped or bound).
   */
  async attach(request: RingRequest, broken: (why: string) => void): Promise<RingLease> {
    if (this.closed) throw new XsError('EIO', 'the block backend is closing');
    const thread = this.pick(request.name);
    const id = this.nextId++;
    const counters = new SharedArrayBuffer(RING_COUNTERS_BYTES);
    // Counted at once, so that the device's next queue, picked before this one is up, goes elsewhere.
    thread.rings.set(id, { device: request.name, broken });
    try {
      await thread.ready;
      await thread.ask(id, { type: 'attach', spec: { ...request, id, counters } });
    } catch (err) {
      thread.rings.delete(id);
      throw err;
    }
    let stopping: Promise<void> | undefined;
    return {
      get served() {
        return answeredRequests(readRingCounters(counters, !thread.dead));
      },
      counters: () => readRingCounters(counters, !thread.dead),
      stop: () =>
        (stopping ??= thread.ask(id, { type: 'stop', id }).then(
          () => void thread.rings.delete(id),
          // A thread that died took the ring with it: nothing is left to stop.
          () => void thread.rings.delete(id),
        )),
    };
  }

  /** Rings each live thread serves, in the order the threads started. */
  load(): number[] {
    return this.threads.map((thread) => thread.rings.size);
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.threads.splice(0).map((thread) => thread.terminate()));
  }

  /** The thread with the fewest of the device's rings, then the fewest rings; started if there are fewer than `count`. */
  private pick(device: string): RingThread {
    if (this.threads.length < this.count && this.threads.every((t) => t.rings.size > 0 || t.ringsOf(device) > 0)) return this.spawn();
    let best = this.threads[0]!;
    for (const thread of this.threads) {
      const fewerOfDevice = thread.ringsOf(device) - best.ringsOf(device);
      if (fewerOfDevice < 0 || (fewerOfDevice === 0 && thread.rings.size < best.rings.size)) best = thread;
    }
    if (best.ringsOf(device) > 0 && this.threads.length < this.count) return this.spawn();
    return best;
  }

  private spawn(): RingThread {
    const thread = new RingThread(this.data, this.log, (dead) => {
      const at = this.threads.indexOf(dead);
      if (at >= 0) this.threads.splice(at, 1);
    });
    this.threads.push(thread);
    return thread;
  }
}
