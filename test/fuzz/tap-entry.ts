/**
 * The bounded fuzz run `npm test` does for one target: a fresh run seed
 * each time (printed), a fixed number of batches cut short by a time
 * budget, one assertion per batch, and on failure the batch's seed and how
 * to replay it.
 */
import type { Test } from 'tap';
import { planRun, replayCommand, runBatches, SEED_ENV, type TargetName } from './runner.js';
import { openerOf } from './targets.js';

export interface SuiteBudget {
  /** Batches a run has at most. */
  readonly batches: number;
  /** No new batch starts after this long. */
  readonly budgetMs: number;
}

export async function fuzzInSuite(t: Test, target: TargetName, budget: SuiteBudget): Promise<void> {
  const plan = planRun({ count: budget.batches, budgetMs: budget.budgetMs });
  t.comment(
    plan.replay !== undefined
      ? `${target} fuzz: replaying batch seed ${plan.replay} (${SEED_ENV})`
      : `${target} fuzz: run seed ${plan.runSeed}, up to ${plan.count} batches or ${budget.budgetMs / 1000} s; a failing batch prints its own seed`,
  );
  const outcome = await runBatches([target], openerOf, plan, (done) => {
    t.pass(`batch ${done.index + 1} (seed ${done.seed}, ${done.ms} ms): ${done.summary}`);
  });
  if (outcome.failed) {
    const { index, seed, message, details } = outcome.failed;
    t.fail(`batch ${index + 1} (seed ${seed}): ${message}`, { diagnostic: true, details: details.join('\n') });
    t.comment(`replay: ${replayCommand(target, seed)}`);
  }
  if (outcome.skipped > 0) t.comment(`${outcome.skipped} batches left for the time budget`);
}
