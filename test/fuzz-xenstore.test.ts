/**
 * A bounded fuzz run of xenstored's wire protocol (test/fuzz/xs-*.ts):
 * dom0 socket clients and an unprivileged domain on its ring send random
 * and mutated requests of every type at once; every request must get one
 * reply in order, clients are cut off only for what the protocol says,
 * and after each batch well-behaved clients are still served right.
 * XENMESH_FUZZ_SEED=<batch seed> replays one batch; `npm run fuzz` runs
 * long.
 */
import t from 'tap';
import { fuzzInSuite } from './fuzz/tap-entry.js';

await fuzzInSuite(t, 'xenstore', { batches: 40, budgetMs: 25_000 });
