/**
 * The xenstore ring of docs/misc/xenstore-ring.txt and xs_wire.h's struct
 * xenstore_domain_interface, in one shared page: two 1024-byte byte queues
 * with free-running 32-bit indexes, the server feature bits, the connection
 * state and the error indicator. The daemon and the guest both use it, from
 * opposite ends.
 */

/** XENSTORE_RING_SIZE: bytes in each direction. */
export const XENSTORE_RING_SIZE = 1024;

/** Byte offsets in the page (xenstore-ring.txt). */
const REQ_DATA = 0;
const RSP_DATA = 1024;
const INDEXES = 2048;

/** Word indexes from INDEXES. */
const Word = {
  REQ_CONS: 0,
  REQ_PROD: 1,
  RSP_CONS: 2,
  RSP_PROD: 3,
  SERVER_FEATURES: 4,
  CONNECTION: 5,
  ERROR: 6,
} as const;

/** The connection field (xs_wire.h XENSTORE_CONNECTED / XENSTORE_RECONNECT). */
export const RingConnection = { CONNECTED: 0, RECONNECT: 1 } as const;

/** One direction of the ring. */
export class ByteQueue {
  constructor(
    private readonly page: Uint8Array,
    private readonly words: Int32Array,
    private readonly dataOffset: number,
    private readonly consWord: number,
    private readonly prodWord: number,
  ) {}

  get cons(): number {
    return Atomics.load(this.words, this.consWord) >>> 0;
  }

  get prod(): number {
    return Atomics.load(this.words, this.prodWord) >>> 0;
  }

  /** Bytes waiting, or -1 if the indexes are inconsistent (producer more than a ring ahead). */
  filled(): number {
    const used = (this.prod - this.cons) >>> 0;
    return used > XENSTORE_RING_SIZE ? -1 : used;
  }

  /**
   * Copies in as much of `bytes` as there is room for and publishes it;
   * returns how many bytes went in, or -1 if the indexes are inconsistent.
   */
  produce(bytes: Uint8Array): number {
    const cons = this.cons;
    const prod = this.prod;
    const used = (prod - cons) >>> 0;
    if (used > XENSTORE_RING_SIZE) return -1;
    const count = Math.min(bytes.length, XENSTORE_RING_SIZE - used);
    for (let done = 0; done < count; ) {
      const at = (prod + done) % XENSTORE_RING_SIZE;
      const chunk = Math.min(count - done, XENSTORE_RING_SIZE - at);
      this.page.set(bytes.subarray(done, done + chunk), this.dataOffset + at);
      done += chunk;
    }
    // The data must be in place before the index says so (Atomics are sequentially consistent).
    Atomics.store(this.words, this.prodWord, (prod + count) | 0);
    return count;
  }

  /**
   * Takes up to `max` waiting bytes (a copy) and frees their space; returns
   * null if the indexes are inconsistent.
   */
  consume(max = XENSTORE_RING_SIZE): Buffer | null {
    const cons = this.cons;
    const prod = this.prod;
    const used = (prod - cons) >>> 0;
    if (used > XENSTORE_RING_SIZE) return null;
    const count = Math.min(used, max);
    const out = Buffer.allocUnsafe(count);
    for (let done = 0; done < count; ) {
      const at = (cons + done) % XENSTORE_RING_SIZE;
      const chunk = Math.min(count - done, XENSTORE_RING_SIZE - at);
      out.set(this.page.subarray(this.dataOffset + at, this.dataOffset + at + chunk), done);
      done += chunk;
    }
    Atomics.store(this.words, this.consWord, (cons + count) | 0);
    return out;
  }

  /** Empties the queue (ring reconnection). */
  reset(): void {
    Atomics.store(this.words, this.consWord, 0);
    Atomics.store(this.words, this.prodWord, 0);
  }
}

/** A xenstore ring page, seen from either end. */
export class XenStoreRing {
  private readonly words: Int32Array;
  /** Guest to daemon. */
  readonly requests: ByteQueue;
  /** Daemon to guest: replies and watch events. */
  readonly responses: ByteQueue;

  constructor(readonly page: Uint8Array) {
    if (page.byteOffset % 4 !== 0 || page.length < INDEXES + 7 * 4) throw new Error('a xenstore ring needs an aligned page');
    this.words = new Int32Array(page.buffer, page.byteOffset + INDEXES, 7);
    this.requests = new ByteQueue(page, this.words, REQ_DATA, Word.REQ_CONS, Word.REQ_PROD);
    this.responses = new ByteQueue(page, this.words, RSP_DATA, Word.RSP_CONS, Word.RSP_PROD);
  }

  get serverFeatures(): number {
    return Atomics.load(this.words, Word.SERVER_FEATURES) >>> 0;
  }

  /** Servers only ever add feature bits (xenstore-ring.txt). */
  advertise(features: number): void {
    Atomics.or(this.words, Word.SERVER_FEATURES, features);
  }

  get connection(): number {
    return Atomics.load(this.words, Word.CONNECTION);
  }

  set connection(value: number) {
    Atomics.store(this.words, Word.CONNECTION, value);
  }

  get error(): number {
    return Atomics.load(this.words, Word.ERROR);
  }

  set error(value: number) {
    Atomics.store(this.words, Word.ERROR, value);
  }

  /** Empties both queues, as a reconnection does. */
  reset(): void {
    this.requests.reset();
    this.responses.reset();
  }
}

/**
 * Messages waiting to go into one of the ring's queues, fed in as the
 * other end frees space: a message longer than the free space goes in
 * pieces, and the other end is signalled after each.
 */
export class PendingOutput {
  private readonly chunks: Buffer[] = [];
  private offset = 0;

  constructor(private readonly queue: ByteQueue) {}

  get empty(): boolean {
    return this.chunks.length === 0;
  }

  add(bytes: Buffer): void {
    this.chunks.push(bytes);
  }

  clear(): void {
    this.chunks.length = 0;
    this.offset = 0;
  }

  /**
   * Moves as much as fits into the queue, calling `signal` after each
   * piece. Returns false if the queue's indexes are inconsistent.
   */
  drain(signal: () => void): boolean {
    while (this.chunks.length > 0) {
      const head = this.chunks[0]!;
      const written = this.queue.produce(head.subarray(this.offset));
      if (written < 0) return false;
      if (written === 0) return true;
      signal();
      this.offset += written;
      if (this.offset < head.length) return true;
      this.chunks.shift();
      this.offset = 0;
    }
    return true;
  }
}
