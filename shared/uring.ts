import { constants } from 'node:os';
import { isArrayBuffer, isUint8Array } from 'node:util/types';
import { uringAddon, type NativeRing } from './uring-addon.js';

/**
 * io_uring for the block backend: the worker that owns a ring submits its
 * disk I/O asynchronously and reaps completions on its own event loop.
 * Operations that do not fit the SQ, or that would take the CQ past its
 * size, wait in a backlog and go to the kernel as earlier ones complete.
 */

/** One finished operation: its tag, and the byte count or -errno the kernel returned (res of the CQE). */
export type CompletionListener = (tags: readonly number[], results: readonly number[]) => void;

export interface Uring {
  /** Submission slots (the SQ size it was opened with, rounded up to a power of two by the kernel). */
  readonly entries: number;
  /** Operations submitted or queued and not yet completed. */
  readonly inFlight: number;
  readv(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void; // IORING_OP_READV
  writev(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void; // IORING_OP_WRITEV
  fdatasync(fd: number, tag: number): void; // IORING_OP_FSYNC with IORING_FSYNC_DATASYNC
  fallocate(fd: number, mode: number, offset: number, length: number, tag: number): void; // IORING_OP_FALLOCATE (punch hole, zero range)
  /** Hands everything queued since the last call to the kernel in one io_uring_enter. */
  submit(): void;
  /**
   * Receives completions in batches on this thread's event loop: tags[i]
   * finished with results[i]. One listener; a later call replaces it.
   * Batches that arrived while there was none are delivered to it.
   */
  onCompletions(listener: CompletionListener): void;
  /**
   * Closes the ring. Operations still in flight are waited for (bounded)
   * before the ring is torn down, so that the kernel never writes into
   * memory that was given back; their results are not reported, and
   * operations still in the backlog are dropped. If the wait runs out it
   * throws (code ETIMEDOUT), the ring closed and the buffers kept.
   */
  close(): void;
}

/** IORING_MAX_ENTRIES (io_uring/io_uring.c, io_uring_setup(2)): the largest SQ the kernel sets up. */
export const URING_MAX_ENTRIES = 32768;
/** IOV_MAX (limits.h; the kernel's UIO_MAXIOV): the most views one readv or writev takes. */
export const URING_MAX_VIEWS = 1024;
/** Tags are non-negative integers below 2^31. */
export const URING_MAX_TAG = 0x7fffffff;
/** fd numbers are ints. */
const MAX_FD = 0x7fffffff;
/** fallocate's mode is an int of FALLOC_FL_* bits. */
const MAX_MODE = 0x7fffffff;
/** How long to wait before entering the kernel again after it could not take SQEs (EAGAIN, EBUSY). */
const SUBMIT_RETRY_MS = 1;

/**
 * Opens a ring of `entries` slots, or says why io_uring cannot be used here
 * (no addon built, ENOSYS on an old kernel, EPERM from a seccomp filter or
 * io_uring_disabled, a needed opcode missing from io_uring_get_probe).
 */
export function openUring(entries: number): { uring: Uring } | { reason: string } {
  checkInteger('entries', entries, URING_MAX_ENTRIES);
  if (entries < 1) throw new RangeError('entries must be at least 1');
  let addon;
  try {
    addon = uringAddon();
  } catch (err) {
    return { reason: (err as Error).message };
  }
  let ring: IoUring | undefined;
  try {
    ring = new IoUring((onCompletions) => new addon.Ring(entries, onCompletions));
  } catch (err) {
    return { reason: whyNot(err as NodeJS.ErrnoException) };
  }
  return { uring: ring };
}

/** The errno name of a negative result (-9 is EBADF); `errno N` for one Node does not know. */
export function uringErrorName(result: number): string {
  if (!Number.isInteger(result) || result >= 0) throw new RangeError(`a result of ${result} is not an error (-errno)`);
  return ERRNO_NAMES.get(-result) ?? `errno ${-result}`;
}

const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, number]) => [number, name]));

/** What an open failure means for whoever wanted a ring. */
function whyNot(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOSYS':
      return `this kernel has no io_uring (it needs Linux 5.1 or later built with CONFIG_IO_URING): ${err.message}`;
    case 'EPERM':
      return `io_uring is forbidden here (the sysctl kernel.io_uring_disabled, or a seccomp filter such as a container runtime's): ${err.message}`;
    case 'ENOMEM':
      return `the ring does not fit the locked-memory limit (RLIMIT_MEMLOCK, counted by kernels before 5.12): ${err.message}`;
    case 'EOPNOTSUPP':
      return `this kernel's io_uring lacks what the block backend needs: ${err.message}`;
    default:
      return `io_uring cannot be set up: ${err.message}`;
  }
}

/** An operation waiting for room in the ring. */
interface Pending {
  readonly tag: number;
  start(ring: NativeRing): void;
}

class IoUring implements Uring {
  readonly entries: number;
  /** The CQ's size: more in the kernel than this could overflow it. */
  private readonly capacity: number;
  private readonly native: NativeRing;
  private readonly backlog = new Fifo<Pending>();
  /** How many at the front of the backlog the caller has submitted. */
  private released = 0;
  /** Given to the native ring and not yet completed. */
  private inKernel = 0;
  /** Of those, how many SQEs the kernel has not taken yet. */
  private unsubmitted = 0;
  private listener: CompletionListener | undefined;
  private unheard: Array<[readonly number[], readonly number[]]> = [];
  private retry: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(open: (onCompletions: (tags: number[], results: number[]) => void) => NativeRing) {
    this.native = open((tags, results) => this.completed(tags, results));
    this.entries = this.native.sqEntries;
    this.capacity = this.native.cqEntries;
  }

  get inFlight(): number {
    return this.backlog.length + this.inKernel;
  }

  readv(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void {
    this.queueVectored('readv', fd, views, offset, tag);
  }

  writev(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void {
    this.queueVectored('writev', fd, views, offset, tag);
  }

  fdatasync(fd: number, tag: number): void {
    this.checkOpen();
    checkInteger('fd', fd, MAX_FD);
    checkInteger('tag', tag, URING_MAX_TAG);
    this.backlog.push({ tag, start: (ring) => ring.fdatasync(fd, tag) });
  }

  fallocate(fd: number, mode: number, offset: number, length: number, tag: number): void {
    this.checkOpen();
    checkInteger('fd', fd, MAX_FD);
    checkInteger('mode', mode, MAX_MODE);
    checkInteger('offset', offset, Number.MAX_SAFE_INTEGER);
    checkInteger('length', length, Number.MAX_SAFE_INTEGER);
    checkInteger('tag', tag, URING_MAX_TAG);
    this.backlog.push({ tag, start: (ring) => ring.fallocate(fd, mode, offset, length, tag) });
  }

  submit(): void {
    this.checkOpen();
    this.released = this.backlog.length;
    this.feed();
  }

  onCompletions(listener: CompletionListener): void {
    this.listener = listener;
    if (this.unheard.length === 0) return;
    const batches = this.unheard;
    this.unheard = [];
    queueMicrotask(() => {
      for (const [tags, results] of batches) this.deliver(tags, results);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retry);
    this.backlog.clear();
    this.released = 0;
    this.inKernel = 0;
    this.unsubmitted = 0;
    this.native.close();
  }

  private queueVectored(kind: 'readv' | 'writev', fd: number, views: readonly Uint8Array[], offset: number, tag: number): void {
    this.checkOpen();
    checkInteger('fd', fd, MAX_FD);
    const held = checkViews(views);
    checkInteger('offset', offset, Number.MAX_SAFE_INTEGER);
    checkInteger('tag', tag, URING_MAX_TAG);
    this.backlog.push({ tag, start: (ring) => ring[kind](fd, held, offset, tag) });
  }

  private checkOpen(): void {
    if (this.closed) throw Object.assign(new Error('the io_uring is closed'), { code: 'ERR_URING_CLOSED' });
  }

  /** Moves submitted operations from the backlog into the ring while there is room, and enters the kernel. */
  private feed(): void {
    const refused: number[] = [];
    while (this.released > 0 && this.inKernel < this.capacity && this.unsubmitted < this.entries) {
      const op = this.backlog.shift()!;
      this.released--;
      try {
        op.start(this.native);
      } catch {
        // Checked when it was queued; the native side refuses only what
        // changed since, and the caller hears of it as of any failed I/O.
        refused.push(op.tag);
        continue;
      }
      this.inKernel++;
      this.unsubmitted++;
    }
    if (this.unsubmitted > 0) {
      this.unsubmitted -= this.native.submit();
      if (this.unsubmitted > 0 && !this.retry) {
        this.retry = setTimeout(() => {
          this.retry = undefined;
          if (!this.closed) this.feed();
        }, SUBMIT_RETRY_MS);
      }
    }
    if (refused.length > 0) {
      const results = refused.map(() => -constants.errno.EINVAL);
      queueMicrotask(() => this.deliver(refused, results));
    }
  }

  private completed(tags: number[], results: number[]): void {
    if (this.closed) return;
    this.inKernel -= tags.length;
    // Refilled before the listener runs, so that the kernel has work meanwhile.
    this.feed();
    this.deliver(tags, results);
  }

  private deliver(tags: readonly number[], results: readonly number[]): void {
    if (this.closed) return;
    if (this.listener) this.listener(tags, results);
    else this.unheard.push([tags, results]);
  }
}

function checkInteger(name: string, value: number, max: number): void {
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number, not ${describe(value)}`);
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${name} must be an integer in 0..${max}, not ${value}`);
  }
}

/** The views, copied (the caller may reuse its array), once each is known to be usable. */
function checkViews(views: readonly Uint8Array[]): Uint8Array[] {
  if (!Array.isArray(views)) throw new TypeError(`views must be an array of Uint8Arrays, not ${describe(views)}`);
  if (views.length === 0) throw new RangeError('views must not be empty');
  if (views.length > URING_MAX_VIEWS) {
    throw new RangeError(`views holds ${views.length} views, more than IOV_MAX (${URING_MAX_VIEWS})`);
  }
  const held = views.slice() as Uint8Array[];
  for (let i = 0; i < held.length; i++) {
    const view = held[i];
    if (!isUint8Array(view)) throw new TypeError(`views[${i}] must be a Uint8Array, not ${describe(view)}`);
    if (view.byteLength === 0 && isDetached(view.buffer)) throw new TypeError(`views[${i}] is a view of a detached ArrayBuffer`);
  }
  return held;
}

/** Node 20 has no ArrayBuffer.prototype.detached; a detached buffer refuses a new view. */
function isDetached(buffer: ArrayBufferLike): boolean {
  if (!isArrayBuffer(buffer)) return false;
  try {
    new Uint8Array(buffer);
    return false;
  } catch {
    return true;
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}

/** A queue whose shift does not copy the rest. */
class Fifo<T> {
  private items: T[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined as T;
    // Let go of the consumed front once it is most of the array.
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}
