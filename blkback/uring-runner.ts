import { nativeCalls } from '../shared/native.js';
import { URING_MAX_TAG, uringErrorName } from '../shared/uring.js';
import { PAGE_SIZE, type GrantMapping, type GrantTable } from '../shared/platform.js';
import { AUTO_COPY_MAX_PAGES, copiesGrants, type GrantAccess } from './io-pool.js';
import type { PersistentGrants } from './persistent-grants.js';
import type { IoOp, IoOutcome, IoTask } from './io-task.js';
import type { IoRunner } from './queue.js';
import type { StoreHandle } from './store.js';
import { advance, alignedBuffer, copyThroughGrants, ioError, memoryTransfer } from './transfer.js';

/** What the runner needs of an io_uring (shared/uring.ts). */
export interface UringQueue {
  readv(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void;
  writev(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void;
  fdatasync(fd: number, tag: number): void;
  fallocate(fd: number, mode: number, offset: number, length: number, tag: number): void;
  submit(): void;
  onCompletions(listener: (tags: readonly number[], results: readonly number[]) => void): void;
}

/** fallocate's mode for a discard of a file: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h). */
const PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01;


/** Staging buffers of up to this many pages are kept for reuse: what auto copies (AUTO_COPY_MAX_PAGES). */
const SMALL_STAGING_PAGES = AUTO_COPY_MAX_PAGES;

/** Staging buffers kept for grant copies: enough for a ring's worth of small requests in flight. */
const SPARE_STAGING_BUFFERS = 64;


/**
 * A ring thread's io_uring, shared by the rings it serves: it hands out
 * tags, routes each completion to whoever waits for it, and submits what a
 * pass over the rings queued in one io_uring_enter.
 */
export class UringSubmitter {
  private nextTag = 0;
  private readonly waiting = new Map<number, (result: number) => void>();
  private submitScheduled = false;

  constructor(readonly uring: UringQueue) {
    uring.onCompletions((tags, results) => {
      for (let i = 0; i < tags.length; i++) {
        const done = this.waiting.get(tags[i]!);
        if (!done) continue;
        this.waiting.delete(tags[i]!);
        done(results[i]!);
      }
    });
  }

  /** Queues one operation under a fresh tag; its result once the kernel completes it. */
  submit(queue: (tag: number) => void): Promise<number> {
    const tag = this.nextTag;
    this.nextTag = this.nextTag === URING_MAX_TAG ? 0 : this.nextTag + 1;
    const result = new Promise<number>((resolve) => this.waiting.set(tag, resolve));
    queue(tag);
    if (!this.submitScheduled) {
      this.submitScheduled = true;
      // Everything the ring's pass queued goes to the kernel in one io_uring_enter.
      queueMicrotask(() => {
        this.submitScheduled = false;
        this.uring.submit();
      });
    }
    return result;
  }
}

/**
 * The request queue's engine for one ring on its ring thread: each
 * operation is submitted to io_uring from the thread itself and completes
 * on its event loop, with no other thread involved. The frontend's pages
 * are reached as the access mode says: kept mapped for the ring's life
 * when the frontend uses persistent grants, else mapped for the operation
 * (or staged through a buffer of ours with grant copies) and let go only
 * once the kernel is done with them, before the queue answers. Short
 * transfers are resubmitted for the rest; a read past the end of a file
 * that is shorter than it claims reads zeros, as a hole does.
 */
export class UringRunner implements IoRunner {
  readonly threads = 1;
  readonly perOperation = true;
  private readonly spareStaging: Uint8Array[] = [];
  private readonly uring: UringQueue;

  constructor(
    private readonly submitter: UringSubmitter,
    /** Our grant table. */
    private readonly grants: GrantTable,
    private readonly grantAccess: GrantAccess,
    /** The frontend's persistent grants, kept mapped; undefined without them (or where grants are only copied). */
    private readonly persistent: PersistentGrants | undefined,
  ) {
    this.uring = submitter.uring;
  }

  /** Lets go of what the ring kept mapped (it is stopping and nothing is in flight). */
  close(): void {
    this.persistent?.clear();
  }

  async run(task: IoTask): Promise<IoOutcome[]> {
    const outcomes: IoOutcome[] = [];
    // In order: a barrier's write completes before its flush starts.
    for (const op of task.ops) {
      try {
        await this.runOp(task, op);
        outcomes.push(null);
      } catch (err) {
        outcomes.push((err as NodeJS.ErrnoException).code ?? 'EIO');
      }
    }
    return outcomes;
  }

  private async runOp(task: IoTask, op: IoOp): Promise<void> {
    const { store } = task;
    switch (op.op) {
      case 'read':
      case 'write':
        if (this.persistent && (await this.persistentIo(task, op))) return;
        if (copiesGrants(this.grantAccess, op.chunks.length)) await this.copyIo(task, op);
        else await this.mappedIo(task, op);
        return;
      case 'flush':
        if (store.kind === 'fd') this.check(await this.submitter.submit((tag) => this.uring.fdatasync(store.fd, tag)), 'fdatasync');
        return;
      case 'discard':
        if (store.kind === 'memory') new Uint8Array(store.bytes, op.offset, op.length).fill(0);
        // BLKDISCARD has no io_uring operation: the ioctl, on this thread (discards are rare and the device answers them quickly).
        else if (store.blockDevice) nativeCalls().discardBlocks(store.fd, op.offset, op.length, op.secure);
        else this.check(await this.submitter.submit((tag) => this.uring.fallocate(store.fd, PUNCH_HOLE_KEEP_SIZE, op.offset, op.length, tag)), 'fallocate');
        return;
    }
  }

  /** Through pages kept mapped; false if they cannot be kept (granted read-only), and nothing was done. */
  private async persistentIo(task: IoTask, op: IoOp & { op: 'read' | 'write' }): Promise<boolean> {
    const grefs = op.chunks.map((c) => c.gref);
    const pages = this.persistent!.acquire(grefs);
    if (!pages) return false;
    try {
      const views = op.chunks.map((c, i) => pages[i]!.subarray(c.start, c.start + c.length));
      await this.transfer(task.store, op.op, op.offset, views);
    } finally {
      this.persistent!.release(grefs);
    }
    return true;
  }

  /** Reads or writes straight between the store and the frontend's pages, mapped for the while. */
  private async mappedIo(task: IoTask, op: IoOp & { op: 'read' | 'write' }): Promise<void> {
    let mapping: GrantMapping;
    try {
      // A read fills the frontend's pages: they must be granted writable.
      mapping = this.grants.map(task.granter, op.chunks.map((c) => c.gref), op.op === 'read');
    } catch (err) {
      throw ioError('EFAULT', (err as Error).message);
    }
    try {
      const views = op.chunks.map((c, i) => mapping.pages[i]!.subarray(c.start, c.start + c.length));
      await this.transfer(task.store, op.op, op.offset, views);
    } finally {
      mapping.unmap();
    }
  }

  /** A read or write through a staging buffer of ours, the pages reached by grant copy. */
  private async copyIo(task: IoTask, op: IoOp & { op: 'read' | 'write' }): Promise<void> {
    const length = op.chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    const staging = this.takeStaging(op.chunks.length);
    const buffer = staging.subarray(0, length);
    const copy = (toPages: boolean) => copyThroughGrants(this.grants, task.granter, op.chunks, buffer, toPages);
    try {
      if (op.op === 'write') copy(false);
      await this.transfer(task.store, op.op, op.offset, [buffer]);
      if (op.op === 'read') copy(true);
    } finally {
      this.giveStaging(staging, op.chunks.length);
    }
  }

  /** Moves every byte of `views`, resubmitting the rest of a short transfer. */
  private async transfer(store: StoreHandle, kind: 'read' | 'write', offset: number, views: Uint8Array[]): Promise<void> {
    if (store.kind === 'memory') {
      memoryTransfer(store.bytes, kind, offset, views);
      return;
    }
    let pending = views;
    let at = offset;
    while (pending.length > 0) {
      const result = await this.submitter.submit((tag) => (kind === 'read' ? this.uring.readv(store.fd, pending, at, tag) : this.uring.writev(store.fd, pending, at, tag)));
      this.check(result, kind === 'read' ? 'preadv' : 'pwritev');
      if (result === 0) {
        if (kind === 'write') throw ioError('EIO', `pwritev at ${at} wrote nothing`);
        for (const view of pending) view.fill(0);
        return;
      }
      at += result;
      pending = advance(pending, result);
    }
  }

  private check(result: number, call: string): void {
    if (result < 0) throw ioError(uringErrorName(result), `${call}: ${uringErrorName(result)}`);
  }

  /** A page-aligned buffer of `pages` pages (O_DIRECT wants aligned buffers); small ones are reused. */
  private takeStaging(pages: number): Uint8Array {
    if (pages <= SMALL_STAGING_PAGES) {
      const spare = this.spareStaging.pop();
      if (spare) return spare;
    }
    return alignedBuffer(Math.max(pages, SMALL_STAGING_PAGES) * PAGE_SIZE);
  }

  private giveStaging(buffer: Uint8Array, pages: number): void {
    if (pages <= SMALL_STAGING_PAGES && this.spareStaging.length < SPARE_STAGING_BUFFERS) this.spareStaging.push(buffer);
  }
}
