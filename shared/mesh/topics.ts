/**
 * The queries the supervisor may ask a role (Supervisor.query), by topic.
 * Here rather than with the roles that answer them, so that asking does
 * not load what answers.
 */

/** A kernel or backend serving block devices: its devices' counters, as VbdStatsReport[] (shared/vbd-stats.ts). */
export const BLOCK_STATS_TOPIC = 'block-stats';
