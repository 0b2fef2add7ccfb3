import type { Platform } from '../shared/platform.js';
import { openUring } from '../shared/uring.js';
import { IO_THREADS, IoPool, type GrantAccess } from './io-pool.js';
import { DEFAULT_QUEUE_LIMITS, type IoRunner, type QueueLimits } from './queue.js';
import type { IoEngine, IoEngineChoice } from './ring-messages.js';
import { PersistentGrants } from './persistent-grants.js';
import { UringRunner, UringSubmitter } from './uring-runner.js';

/**
 * Submission slots of a ring thread's io_uring: every request of a 4-page
 * ring (128 slots of x86_64 requests) twice over. Operations beyond it wait
 * in the binding's backlog, never refused.
 */
export const URING_ENTRIES = 256;

/**
 * The request queue's limits on io_uring: many operations in flight (each
 * is one SQE; the kernel or the backlog orders them), the retries and
 * merging of the pool's limits.
 */
const URING_QUEUE_LIMITS: QueueLimits = { ...DEFAULT_QUEUE_LIMITS, tasksInFlight: URING_ENTRIES };

/** The environment variable that picks the engine where the driver was not told (`uring`, `pool`, `auto`). */
export const IO_ENGINE_ENV = 'XENMESH_IO_ENGINE';

/** How one ring does its I/O: the runner its queue uses, let go of when the ring stops. */
export interface RingIo {
  readonly runner: IoRunner;
  /** Called once the ring's queue is idle. */
  close(): void;
}

/** The engine a ring thread runs, the limits its queues use, and why it is not io_uring where it is not. */
export interface RunningEngine {
  readonly engine: IoEngine;
  readonly reason?: string;
  readonly limits: QueueLimits;
  /** The I/O of one ring of `frontend`, which negotiated persistent grants or not. */
  forRing(frontend: number, persistent: boolean): RingIo;
}

/** The engine asked for: the driver's option, else the environment, else auto. */
export function engineChoice(option: IoEngineChoice | undefined): IoEngineChoice {
  const wanted = option ?? process.env[IO_ENGINE_ENV] ?? 'auto';
  if (wanted !== 'uring' && wanted !== 'pool' && wanted !== 'auto') {
    throw new RangeError(`${IO_ENGINE_ENV}=${wanted}: the I/O engine is one of uring, pool, auto`);
  }
  return wanted;
}

/**
 * Starts the engine a ring thread does its I/O with. `auto` takes io_uring
 * where it works and falls back to the pool, saying why; `uring` where it
 * does not work is an error.
 */
export async function startEngine(
  choice: IoEngineChoice,
  platform: Platform,
  options: { grantAccess: GrantAccess; domid: number },
  open: typeof openUring = openUring,
): Promise<RunningEngine> {
  if (choice === 'pool') return poolEngine(platform, options.grantAccess, undefined);
  const opened = open(URING_ENTRIES);
  if ('reason' in opened) {
    if (choice === 'uring') throw new Error(`io_uring cannot be used here: ${opened.reason}`);
    return poolEngine(platform, options.grantAccess, `io_uring cannot be used here: ${opened.reason}`);
  }
  // Each ring thread's rings are all of one domain (the driver domain's own): its grant table.
  const grants = platform.domain(options.domid).grants;
  const submitter = new UringSubmitter(opened.uring);
  return {
    engine: 'uring',
    limits: URING_QUEUE_LIMITS,
    forRing(frontend, persistent) {
      // Persistent grants are kept mapped unless the operator wants pages only ever copied.
      const kept = persistent && options.grantAccess !== 'copy' ? new PersistentGrants(grants, frontend) : undefined;
      const runner = new UringRunner(submitter, grants, options.grantAccess, kept);
      return { runner, close: () => runner.close() };
    },
  };
}

/** The pool's threads map what each task names themselves: every ring of the thread shares them. */
function poolEngine(platform: Platform, grantAccess: GrantAccess, reason: string | undefined): RunningEngine {
  const pool = new IoPool(platform.link, IO_THREADS, grantAccess);
  return {
    engine: 'pool',
    ...(reason ? { reason } : {}),
    limits: DEFAULT_QUEUE_LIMITS,
    forRing: () => ({ runner: pool, close: () => {} }),
  };
}
