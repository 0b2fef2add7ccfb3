/**
 * Runs fuzz batches of one target, seed after seed. A run has a seed (given
 * or drawn from the clock); each batch's seed is derived from it and
 * replays that batch alone: XENMESH_FUZZ_SEED=<batch seed> runs exactly
 * that one batch, in `npm test`'s fuzz tests as in `npm run fuzz`.
 */
import { LogCapture } from './log-capture.js';
import { batchSeed, freshSeed, parseSeed, type Seed } from './prng.js';
import { FuzzViolation } from './violation.js';

/** The environment variable that replays one batch. */
export const SEED_ENV = 'XENMESH_FUZZ_SEED';

export type TargetName = 'xenstore' | 'blkif';

/** What a target needs to run batches: set up once, one call per batch, torn down once. */
export interface TargetSession {
  /** Runs one batch; returns a one-line summary, throws (a FuzzViolation, if an oracle failed). */
  batch(seed: Seed, index: number): Promise<string>;
  close(): Promise<void>;
}

export type OpenTarget = (logs: LogCapture) => Promise<TargetSession>;

export interface RunPlan {
  readonly runSeed: Seed;
  /** Batches to run; 1 when replaying a batch seed. */
  readonly count: number;
  /** The seed of the only batch, when replaying one. */
  readonly replay?: Seed;
  /** Stop starting batches after this long (the suite's time budget); undefined for none. */
  readonly budgetMs?: number;
}

/** The plan for a run: replay the environment's batch seed if there is one, else `count` batches from `runSeed`. */
export function planRun(options: { count: number; runSeed?: Seed; budgetMs?: number }): RunPlan {
  const replay = process.env[SEED_ENV];
  if (replay !== undefined && replay !== '') return { runSeed: parseSeed(replay), count: 1, replay: parseSeed(replay) };
  return { runSeed: options.runSeed ?? freshSeed(), count: options.count, ...(options.budgetMs !== undefined ? { budgetMs: options.budgetMs } : {}) };
}

export function seedOf(plan: RunPlan, index: number): Seed {
  return plan.replay ?? batchSeed(plan.runSeed, index);
}

export interface BatchDone {
  readonly target: TargetName;
  readonly index: number;
  readonly seed: Seed;
  readonly ms: number;
  readonly summary: string;
}

export interface BatchFailed {
  readonly target: TargetName;
  readonly index: number;
  readonly seed: Seed;
  readonly message: string;
  /** What the fuzzer did last, then what the code under test logged last. */
  readonly details: readonly string[];
}

export interface RunOutcome {
  readonly done: readonly BatchDone[];
  readonly failed?: BatchFailed;
  /** Batches not run because the time budget ran out. */
  readonly skipped: number;
}

/** Called as a batch starts, so that a crash of the whole process can still name its seed. */
export type BatchStarting = (target: TargetName, index: number, seed: Seed) => void;

/**
 * Runs the plan's batches in order, taking the targets in turn, until one
 * fails or the budget runs out. Each target is set up before its first
 * batch and torn down at the end.
 */
export async function runBatches(
  targets: readonly TargetName[],
  open: (target: TargetName) => Promise<OpenTarget>,
  plan: RunPlan,
  onBatch: (done: BatchDone) => void = () => {},
  onStart: BatchStarting = () => {},
): Promise<RunOutcome> {
  const logs = new LogCapture();
  logs.install();
  const started = Date.now();
  const done: BatchDone[] = [];
  const sessions = new Map<TargetName, TargetSession>();
  try {
    for (let index = 0; index < plan.count; index++) {
      if (plan.budgetMs !== undefined && index > 0 && Date.now() - started > plan.budgetMs) {
        return { done, skipped: plan.count - index };
      }
      const target = targets[index % targets.length]!;
      const seed = seedOf(plan, index);
      onStart(target, index, seed);
      const batchStart = Date.now();
      try {
        let session = sessions.get(target);
        if (!session) sessions.set(target, (session = await (await open(target))(logs)));
        const summary = await session.batch(seed, index);
        const result = { target, index, seed, ms: Date.now() - batchStart, summary };
        done.push(result);
        onBatch(result);
      } catch (err) {
        return { done, skipped: 0, failed: failure(target, index, seed, err, logs) };
      }
    }
    return { done, skipped: 0 };
  } finally {
    for (const session of sessions.values()) await session.close().catch(() => {});
  }
}

function failure(target: TargetName, index: number, seed: Seed, err: unknown, logs: LogCapture): BatchFailed {
  const violation = err instanceof FuzzViolation;
  const message = violation ? err.message : `the fuzzer itself failed: ${(err as Error)?.stack ?? String(err)}`;
  const trail = violation ? err.trail.map((line) => `  did: ${line}`) : [];
  const logged = logs.recentProblems().map((line) => `  logged: ${line}`);
  return { target, index, seed, message, details: [...trail, ...logged, `  replay: ${replayCommand(target, seed)}`] };
}

/** How to run a failed batch again, alone. */
export function replayCommand(target: TargetName, seed: Seed): string {
  return `${SEED_ENV}=${seed} npm run fuzz -- --target ${target}   (or: ${SEED_ENV}=${seed} npx tap --disable-coverage dist/test/fuzz-${target}.test.js)`;
}
