/**
 * The queries the supervisor may ask a role (Supervisor.query), by topic.
 * Here rather than with the roles that answer them, so that asking does
 * not load what answers.
 */

/** A kernel or backend serving block devices: its devices' counters, as VbdStatsReport[] (shared/vbd-stats.ts). */
export const BLOCK_STATS_TOPIC = 'block-stats';

/**
 * How long a role is given to answer for its block devices' counters: it
 * answers from memory, so anything slower is a worker too busy or stuck,
 * left out rather than holding up the rest.
 */
export const BLOCK_STATS_TIMEOUT_MS = 2000;
