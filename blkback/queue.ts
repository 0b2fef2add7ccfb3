import { BlkifStatus } from '../shared/blkif.js';
import type { IoOp, IoOutcome, IoTask, PageChunk } from './io-task.js';
import type { StoreHandle } from './store.js';

/** Where the queue's I/O runs: the I/O pool (tests give it a stand-in). */
export interface IoRunner {
  /** Tasks it runs at once: each batch is cut so that every one gets a share. */
  readonly threads: number;
  /**
   * Each merged operation is its own task, answered as soon as it is done
   * (an engine with many operations in flight, io_uring), rather than a
   * batch answered together (a pool thread working through it).
   */
  readonly perOperation?: boolean;
  run(task: IoTask): Promise<IoOutcome[]>;
}

/** One request of a frontend, in the store's terms. */
export type BlockIo =
  | { readonly kind: 'read' | 'write'; readonly offset: number; readonly length: number; readonly chunks: readonly PageChunk[] }
  /** A write (perhaps of nothing) that every earlier request completes before, made durable before any later one starts. */
  | { readonly kind: 'barrier'; readonly offset: number; readonly length: number; readonly chunks: readonly PageChunk[] }
  /** Makes every earlier completed write durable. */
  | { readonly kind: 'flush' }
  | { readonly kind: 'discard'; readonly offset: number; readonly length: number; readonly secure: boolean };

export interface QueueLimits {
  /** Pool tasks in flight at once: enough to keep every I/O worker busy while the next batch is built. */
  readonly tasksInFlight: number;
  /** Times a request that failed with a transient error is tried again before it fails. */
  readonly retries: number;
  /** Contiguous requests are merged into one system call up to this many bytes. */
  readonly mergeBytes: number;
}

/** The limits a block backend runs with unless told otherwise. */
export const DEFAULT_QUEUE_LIMITS: QueueLimits = {
  // One batch per I/O worker: more tasks mean smaller batches and more
  // wake-ups, fewer leave a worker idle.
  tasksInFlight: 2,
  retries: 3,
  // Linux caps a preadv at IOV_MAX (1024) vectors; a megabyte is 256 pages.
  mergeBytes: 1024 * 1024,
};

/** Errors worth another try: the system was short of something for a moment. */
const TRANSIENT = new Set(['EAGAIN', 'EINTR', 'EBUSY', 'ENOMEM', 'ETIMEDOUT', 'ENOBUFS']);

/** The first retry waits this long, each next one twice as long. */
const RETRY_BACKOFF_MS = 2;

/** Most vectors one preadv/pwritev takes (Linux's IOV_MAX). */
const IOV_MAX = 1024;

interface Pending {
  readonly io: BlockIo;
  readonly done: (status: number) => void;
  attempts: number;
  /** Set once a merged operation that held it failed: it runs alone from then on. */
  alone: boolean;
}

/** Requests merged into one operation of a task. */
interface Merged {
  readonly op: IoOp;
  readonly members: Pending[];
}

/**
 * The request queue of one backing store, in the spirit of blktap2's
 * tapdisk queue. Requests wait in order; reads, writes and discards go to
 * the I/O pool in batches spread over its workers, contiguous ones merged
 * into one vectored call. A barrier or a flush is an ordering point: it
 * waits for everything before it and holds back everything after it until
 * it is done. A merged call that fails is retried one request at a time, so
 * that a failure fails only the requests it touched; transient errors are
 * retried a bounded number of times. Nothing is ever refused for want of
 * room: requests wait.
 */
export class RequestQueue {
  private readonly waiting: Pending[] = [];
  private inFlightTasks = 0;
  private inFlightRequests = 0;
  /** Requests waiting out a backoff before another try. */
  private delayed = 0;
  /** An ordering point is running: nothing else starts until it is done. */
  private holding = false;
  private scheduled = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly pool: IoRunner,
    private readonly store: StoreHandle,
    /** The frontend, whose grants the pages are, and this domain, which maps them. */
    private readonly granter: number,
    private readonly mapper: number,
    private readonly limits: QueueLimits = DEFAULT_QUEUE_LIMITS,
  ) {}

  /** Requests queued, running or waiting to be tried again. */
  get outstanding(): number {
    return this.waiting.length + this.inFlightRequests + this.delayed;
  }

  /** Queues a request; `done` gets its BLKIF_RSP_* status once it is finished with its pages. */
  submit(io: BlockIo, done: (status: number) => void): void {
    this.waiting.push({ io, done, attempts: 0, alone: false });
    this.schedule();
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (this.outstanding === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    // Requests taken off a ring in one pass arrive together: one batch.
    queueMicrotask(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (this.waiting.length > 0 && !this.holding && this.inFlightTasks < this.limits.tasksInFlight) {
      const head = this.waiting[0]!;
      if (head.io.kind === 'barrier' || head.io.kind === 'flush') {
        if (this.inFlightRequests > 0) return;
        this.waiting.shift();
        this.holding = true;
        this.dispatch([head], true);
        return;
      }
      const batch: Pending[] = [];
      const limit = this.batchLimit();
      while (batch.length < limit && this.waiting.length > 0) {
        const next = this.waiting[0]!;
        if (next.io.kind === 'barrier' || next.io.kind === 'flush') break;
        batch.push(this.waiting.shift()!);
      }
      this.dispatch(batch, false);
    }
  }

  /** Enough requests per batch to give each I/O worker a share of what is waiting. */
  private batchLimit(): number {
    const freeTasks = this.limits.tasksInFlight - this.inFlightTasks;
    return Math.max(1, Math.ceil(this.waiting.length / Math.max(1, Math.min(freeTasks, this.pool.threads))));
  }

  private dispatch(requests: Pending[], ordering: boolean): void {
    const merged = ordering ? this.orderingOps(requests[0]!) : this.merge(requests);
    if (!ordering && this.pool.perOperation && merged.length > 1) {
      for (const m of merged) this.runTask(m.members, [m], false);
      return;
    }
    this.runTask(requests, merged, ordering);
  }

  private runTask(requests: Pending[], merged: Merged[], ordering: boolean): void {
    this.inFlightTasks++;
    this.inFlightRequests += requests.length;
    this.pool
      .run({ store: this.store, granter: this.granter, mapper: this.mapper, ops: merged.map((m) => m.op) })
      .then(
        (outcomes) => this.completed(requests, merged, outcomes, ordering),
        (err: Error) => this.completed(requests, merged, merged.map(() => (err as NodeJS.ErrnoException).code ?? 'EIO'), ordering),
      );
  }

  /** A barrier is its write (if any) then a flush, in one task; a flush is just that. */
  private orderingOps(request: Pending): Merged[] {
    const { io } = request;
    if (io.kind === 'barrier' && io.length > 0) {
      return [
        { op: { op: 'write', offset: io.offset, chunks: io.chunks }, members: [] },
        { op: { op: 'flush' }, members: [request] },
      ];
    }
    return [{ op: { op: 'flush' }, members: [request] }];
  }

  /** Turns requests into operations, merging each run of contiguous reads or writes. */
  private merge(requests: Pending[]): Merged[] {
    const out: Merged[] = [];
    let open: { kind: 'read' | 'write'; offset: number; end: number; chunks: PageChunk[]; members: Pending[] } | undefined;
    const close = () => {
      if (open) out.push({ op: { op: open.kind, offset: open.offset, chunks: open.chunks }, members: open.members });
      open = undefined;
    };
    for (const request of requests) {
      const { io } = request;
      if (io.kind === 'discard') {
        close();
        out.push({ op: { op: 'discard', offset: io.offset, length: io.length, secure: io.secure }, members: [request] });
        continue;
      }
      if (io.kind !== 'read' && io.kind !== 'write') continue;
      const joins =
        open !== undefined &&
        !request.alone &&
        open.members.every((m) => !m.alone) &&
        open.kind === io.kind &&
        open.end === io.offset &&
        open.end - open.offset + io.length <= this.limits.mergeBytes &&
        open.chunks.length + io.chunks.length <= IOV_MAX;
      if (!joins) {
        close();
        open = { kind: io.kind, offset: io.offset, end: io.offset, chunks: [], members: [] };
      }
      open!.chunks.push(...io.chunks);
      open!.end += io.length;
      open!.members.push(request);
    }
    close();
    return out;
  }

  private completed(requests: Pending[], merged: Merged[], outcomes: IoOutcome[], ordering: boolean): void {
    this.inFlightTasks--;
    this.inFlightRequests -= requests.length;
    if (ordering) {
      // A barrier fails if its write or its flush did.
      this.holding = false;
      const error = outcomes.find((o) => o) ?? null;
      if (error) this.fail(requests[0]!, error);
      else requests[0]!.done(BlkifStatus.OKAY);
    } else {
      const again: Pending[] = [];
      merged.forEach((m, i) => {
        const error = outcomes[i] ?? null;
        for (const member of m.members) {
          if (!error) member.done(BlkifStatus.OKAY);
          else if (m.members.length > 1) {
            // Alone, each tells whether it was the one at fault.
            member.alone = true;
            again.push(member);
          } else this.fail(member, error);
        }
      });
      this.waiting.unshift(...again);
    }
    this.afterCompletion();
  }

  private fail(request: Pending, error: string): void {
    if (!TRANSIENT.has(error) || request.attempts >= this.limits.retries) {
      request.done(BlkifStatus.ERROR);
      return;
    }
    request.attempts++;
    this.delayed++;
    setTimeout(() => {
      this.delayed--;
      this.waiting.unshift(request);
      this.schedule();
    }, RETRY_BACKOFF_MS * 2 ** (request.attempts - 1));
  }

  private afterCompletion(): void {
    this.pump();
    if (this.outstanding === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }
}
