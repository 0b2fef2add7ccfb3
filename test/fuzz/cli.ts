/**
 * `npm run fuzz -- --count N`: the fuzzers for as long as asked. Runs N
 * batches (of both targets in turn, or of one), prints each batch's seed and
 * summary with the time left, and on the first failure prints what went
 * wrong, how to replay that batch alone, and exits 1.
 *
 *   --count N             batches to run (default 100)
 *   --target T            xenstore, blkif or both (default both, in turn)
 *   --seed S              the run's seed (default: from the clock); batch
 *                         seeds derive from it
 *   XENMESH_FUZZ_SEED=S   replays the one batch whose seed is S (with --target)
 */
import { parseArgs } from 'node:util';
import { parseSeed, type Seed } from './prng.js';
import { planRun, replayCommand, runBatches, SEED_ENV, type BatchDone, type TargetName } from './runner.js';
import { openerOf, TARGETS } from './targets.js';

const DEFAULT_COUNT = 100;

function usage(message: string): never {
  process.stderr.write(`npm run fuzz: ${message}\nusage: npm run fuzz -- [--count N] [--target xenstore|blkif|both] [--seed S]\n`);
  process.exit(2);
}

function options(): { count: number; targets: TargetName[]; runSeed: Seed | undefined } {
  let values;
  try {
    ({ values } = parseArgs({
      options: { count: { type: 'string' }, target: { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean' } },
      strict: true,
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (values.help) usage('fuzzes xenstored and blkback');
  const count = values.count === undefined ? DEFAULT_COUNT : Number(values.count);
  if (!Number.isInteger(count) || count < 1) usage(`--count ${values.count} is not a positive number`);
  const target = values.target ?? 'both';
  const targets = target === 'both' ? [...TARGETS] : TARGETS.includes(target as TargetName) ? [target as TargetName] : usage(`no target '${target}'`);
  if (process.env[SEED_ENV] && targets.length !== 1) usage(`${SEED_ENV} replays one batch: say which target it was (--target)`);
  let runSeed: Seed | undefined;
  try {
    runSeed = values.seed === undefined ? undefined : parseSeed(values.seed);
  } catch (err) {
    usage((err as Error).message);
  }
  return { count, targets, runSeed };
}

function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

async function main(): Promise<void> {
  const { count, targets, runSeed } = options();
  const plan = planRun({ count, ...(runSeed !== undefined ? { runSeed } : {}) });
  const started = Date.now();
  process.stdout.write(
    plan.replay !== undefined
      ? `replaying ${targets[0]} batch seed ${plan.replay}\n`
      : `fuzzing ${targets.join(' and ')}: ${plan.count} batches, run seed ${plan.runSeed} (replay the run with --seed ${plan.runSeed})\n`,
  );
  let current: { target: TargetName; index: number; seed: Seed } | undefined;
  const crashed = (err: unknown) => {
    process.stdout.write(`\nthe process failed during ${current ? `batch ${current.index + 1} (${current.target}, seed ${current.seed})` : 'setup'}: ${(err as Error)?.stack ?? err}\n`);
    if (current) process.stdout.write(`replay: ${replayCommand(current.target, current.seed)}\n`);
    process.exit(1);
  };
  process.on('uncaughtException', crashed);
  process.on('unhandledRejection', crashed);

  const progress = (done: BatchDone) => {
    const elapsed = Date.now() - started;
    const left = ((plan.count - done.index - 1) * elapsed) / (done.index + 1);
    process.stdout.write(
      `batch ${done.index + 1} of ${plan.count} (${done.target}, seed ${done.seed}, ${done.ms} ms): ${done.summary}; ${duration(elapsed)} so far, about ${duration(left)} left\n`,
    );
  };
  const outcome = await runBatches(targets, openerOf, plan, progress, (target, index, seed) => (current = { target, index, seed }));
  if (outcome.failed) {
    const { target, index, seed, message, details } = outcome.failed;
    process.stdout.write(`\nFAILED: batch ${index + 1} of ${plan.count} (${target}, seed ${seed}): ${message}\n${details.join('\n')}\n`);
    process.exit(1);
  }
  process.stdout.write(`all ${outcome.done.length} batches passed in ${duration(Date.now() - started)}\n`);
  process.exit(0);
}

await main();
