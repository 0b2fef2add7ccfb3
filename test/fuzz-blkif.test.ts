/**
 * A bounded fuzz run of the block backend's ring (test/fuzz/blk-*.ts): a
 * hostile frontend puts random and mutated requests, stale slots and
 * notification storms on a ring it connected by hand to the real blkback
 * serving a small image; every request must get one response with its id
 * and the status blkif.h gives it, no page may be written that was not
 * granted for it, nothing outside the image, a producer index beyond the
 * ring must cut the frontend off cleanly, and after each batch a
 * well-behaved guest reads back what it writes on a fresh disk.
 * XENMESH_FUZZ_SEED=<batch seed> replays one batch; `npm run fuzz` runs
 * long.
 */
import t from 'tap';
import { fuzzInSuite } from './fuzz/tap-entry.js';

await fuzzInSuite(t, 'blkif', { batches: 60, budgetMs: 25_000 });
