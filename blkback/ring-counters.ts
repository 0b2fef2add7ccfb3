/**
 * One ring's counters in shared memory: written by the ring thread that
 * serves the ring, read by the device's thread (and from there by the
 * toolstack) without asking the ring thread anything.
 *
 * Layout, in 32-bit words of a SharedArrayBuffer:
 * - word 0: a sequence number, odd while the ring thread is updating;
 * - word 1: requests in flight (at most a ring's worth: 32 bits suffice);
 * - then each 64-bit counter as two words, low then high: by operation,
 *   bytes, errors, the latency sum and the histogram's buckets.
 *
 * Why this is safe to read from another thread: every access to the
 * buffer, the writer's and the readers', goes through Atomics on a
 * Uint32Array. Those accesses never tear and are sequentially consistent
 * (ECMAScript's memory model), so the sequence number works as a seqlock:
 * the one writer makes it odd, updates, makes it even; a reader that finds
 * the same even number before and after reading every word has read no
 * update half done, so every 64-bit counter is whole (a carry into its high
 * word and its low word are seen together) and the counters agree with one
 * another (the histogram adds up to the requests answered). Plain stores,
 * or a Float64Array, would be cheaper but are allowed to tear and to be
 * seen out of order by another thread. The writer reads its own words
 * with plain loads: a thread always sees its own stores.
 *
 * Linux's oo_req (requests that waited for a free slot) has no counterpart:
 * this backend never runs out of request slots, its queue lets requests wait.
 */
import { BlkifOp, BlkifStatus } from '../shared/blkif.js';
import { LATENCY_BUCKETS_US, type VbdCounters } from '../shared/vbd-stats.js';

const SEQUENCE = 0;
const IN_FLIGHT = 1;
/** The 64-bit counters, by their index among them. */
const READS = 0;
const WRITES = 1;
const FLUSHES = 2;
const DISCARDS = 3;
const BYTES_READ = 4;
const BYTES_WRITTEN = 5;
const ERRORS = 6;
const LATENCY_SUM_US = 7;
const FIRST_BUCKET = 8;
/** The histogram's buckets: one per bound, and one for the rest. */
const BUCKETS = LATENCY_BUCKETS_US.length + 1;
const COUNTERS = FIRST_BUCKET + BUCKETS;
const FIRST_COUNTER_WORD = 2;
const WORDS = FIRST_COUNTER_WORD + 2 * COUNTERS;

/** Bytes of a ring's counters: the size of the SharedArrayBuffer a ring is given. */
export const RING_COUNTERS_BYTES = WORDS * Uint32Array.BYTES_PER_ELEMENT;

const TWO_TO_32 = 2 ** 32;

/**
 * Copies a reader makes, spinning, while the writer is in the middle of an
 * update, before it starts sleeping between them: an update is a few dozen
 * stores, and only a ring thread the system preempted half way through one
 * keeps the sequence odd for longer (then spinning would only keep it off
 * the core it needs).
 */
const SPIN_TRIES = 100;
/** How long a reader sleeps between copies once it has spun for nothing. */
const SLEEP_MS = 1;
/**
 * How long the sequence may stay odd and unchanged before the reader takes
 * what it read: longer than any preemption, so only a ring thread that died
 * half way through an update (terminated; nothing moves any more) leaves
 * it so, and then the copy is off by that one request at most.
 */
const STUCK_LIMIT_MS = 1000;

/** A buffer to sleep on: nobody ever wakes it. */
const nap = new Int32Array(new SharedArrayBuffer(4));

/** The bounds as a typed array: found without allocating on the hot path. */
const BOUNDS_US = Float64Array.from(LATENCY_BUCKETS_US);

/** The histogram bucket of a latency: the first whose bound it does not exceed, else the last. */
export function latencyBucket(latencyUs: number): number {
  let i = 0;
  while (i < BOUNDS_US.length && latencyUs > BOUNDS_US[i]!) i++;
  return i;
}

/**
 * The ring thread's side: a few Atomics stores per request, no allocation.
 * One ring thread writes a ring's counters; nobody else does.
 */
export class RingCounterWriter {
  private readonly words: Uint32Array;

  constructor(buffer: SharedArrayBuffer) {
    if (buffer.byteLength < RING_COUNTERS_BYTES) throw new RangeError(`ring counters need ${RING_COUNTERS_BYTES} bytes, not ${buffer.byteLength}`);
    this.words = new Uint32Array(buffer, 0, WORDS);
  }

  /** Requests taken off the ring and not yet answered. */
  inFlight(count: number): void {
    Atomics.store(this.words, IN_FLIGHT, count);
  }

  /**
   * A request answered: `operation` as the response names it (an indirect
   * request's inner one), its data's bytes (counted only when it succeeded),
   * and its time from being taken off the ring to its response.
   */
  answered(operation: number, status: number, bytes: number, latencyUs: number, inFlight: number): void {
    const { words } = this;
    Atomics.store(words, SEQUENCE, words[SEQUENCE]! + 1);
    switch (operation) {
      case BlkifOp.READ:
        this.add(READS, 1);
        if (status === BlkifStatus.OKAY) this.add(BYTES_READ, bytes);
        break;
      case BlkifOp.WRITE:
        this.add(WRITES, 1);
        if (status === BlkifStatus.OKAY) this.add(BYTES_WRITTEN, bytes);
        break;
      case BlkifOp.WRITE_BARRIER:
      case BlkifOp.FLUSH_DISKCACHE:
        this.add(FLUSHES, 1);
        // A barrier may carry a write.
        if (status === BlkifStatus.OKAY && bytes > 0) this.add(BYTES_WRITTEN, bytes);
        break;
      case BlkifOp.DISCARD:
        this.add(DISCARDS, 1);
        break;
      default:
        // An operation blkif.h does not define: only its error is counted.
        break;
    }
    if (status !== BlkifStatus.OKAY) this.add(ERRORS, 1);
    this.add(LATENCY_SUM_US, latencyUs);
    this.add(FIRST_BUCKET + latencyBucket(latencyUs), 1);
    Atomics.store(words, IN_FLIGHT, inFlight);
    Atomics.store(words, SEQUENCE, words[SEQUENCE]! + 1);
  }

  /** Adds a non-negative integer to a 64-bit counter, carrying into its high word. */
  private add(counter: number, amount: number): void {
    const { words } = this;
    const at = FIRST_COUNTER_WORD + 2 * counter;
    const low = words[at]! + amount;
    if (low < TWO_TO_32) {
      Atomics.store(words, at, low);
      return;
    }
    Atomics.store(words, at, low % TWO_TO_32);
    Atomics.store(words, at + 1, words[at + 1]! + Math.floor(low / TWO_TO_32));
  }
}

/**
 * A consistent copy of a ring's counters, read from any thread. `writerAlive`
 * false (its ring thread is known dead) takes what is there at once.
 */
export function readRingCounters(buffer: SharedArrayBuffer, writerAlive = true): VbdCounters {
  const words = new Uint32Array(buffer, 0, WORDS);
  const copy = new Uint32Array(WORDS);
  let tries = 0;
  let stuckSince = 0;
  let stuckAt = -1;
  for (;;) {
    const before = Atomics.load(words, SEQUENCE);
    for (let i = 1; i < WORDS; i++) copy[i] = Atomics.load(words, i);
    const after = Atomics.load(words, SEQUENCE);
    if ((before === after && before % 2 === 0) || !writerAlive) break;
    if (++tries < SPIN_TRIES) continue;
    const now = performance.now();
    if (after !== stuckAt) {
      stuckAt = after;
      stuckSince = now;
    } else if (now - stuckSince >= STUCK_LIMIT_MS) break;
    Atomics.wait(nap, 0, 0, SLEEP_MS);
  }
  const counter = (index: number) => copy[FIRST_COUNTER_WORD + 2 * index]! + copy[FIRST_COUNTER_WORD + 2 * index + 1]! * TWO_TO_32;
  const latencyCounts: number[] = [];
  for (let i = 0; i < BUCKETS; i++) latencyCounts.push(counter(FIRST_BUCKET + i));
  return {
    readRequests: counter(READS),
    writeRequests: counter(WRITES),
    flushRequests: counter(FLUSHES),
    discardRequests: counter(DISCARDS),
    bytesRead: counter(BYTES_READ),
    bytesWritten: counter(BYTES_WRITTEN),
    errors: counter(ERRORS),
    inFlight: copy[IN_FLIGHT]!,
    latencyCounts,
    latencySumUs: counter(LATENCY_SUM_US),
  };
}

/** Counters of nothing yet. */
export function zeroCounters(): VbdCounters {
  return {
    readRequests: 0,
    writeRequests: 0,
    flushRequests: 0,
    discardRequests: 0,
    bytesRead: 0,
    bytesWritten: 0,
    errors: 0,
    inFlight: 0,
    latencyCounts: new Array<number>(BUCKETS).fill(0),
    latencySumUs: 0,
  };
}

/** The sum of two sets of counters (a device's rings, or its connections one after another). */
export function addCounters(a: VbdCounters, b: VbdCounters): VbdCounters {
  return {
    readRequests: a.readRequests + b.readRequests,
    writeRequests: a.writeRequests + b.writeRequests,
    flushRequests: a.flushRequests + b.flushRequests,
    discardRequests: a.discardRequests + b.discardRequests,
    bytesRead: a.bytesRead + b.bytesRead,
    bytesWritten: a.bytesWritten + b.bytesWritten,
    errors: a.errors + b.errors,
    inFlight: a.inFlight + b.inFlight,
    latencyCounts: a.latencyCounts.map((n, i) => n + (b.latencyCounts[i] ?? 0)),
    latencySumUs: a.latencySumUs + b.latencySumUs,
  };
}

/** Requests answered: every one lands in exactly one bucket of the histogram. */
export function answeredRequests(counters: VbdCounters): number {
  return counters.latencyCounts.reduce((sum, n) => sum + n, 0);
}
