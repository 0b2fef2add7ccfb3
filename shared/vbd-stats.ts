/**
 * What blkback counts for each virtual block device, as Linux's blkback
 * keeps in sysfs (`statistics/`: oo_req, rd_req, wr_req, f_req, ds_req,
 * rd_sect, wr_sect) plus errors, in flight and a latency histogram: the
 * figures `xenmesh block-list` shows and the metrics endpoint serves.
 */

/**
 * The histogram's bucket upper bounds in microseconds, from a RAM disk's
 * tens of microseconds to a stalled disk's seconds; a last, unbounded
 * bucket takes the rest. Prometheus' histograms take the same bounds.
 */
export const LATENCY_BUCKETS_US: readonly number[] = [
  25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
];

export interface VbdCounters {
  /** Requests answered, by operation (indirect requests count as their operation). */
  readonly readRequests: number;
  readonly writeRequests: number;
  readonly flushRequests: number;
  readonly discardRequests: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** Requests answered with an error (BLKIF_RSP_ERROR or EOPNOTSUPP). */
  readonly errors: number;
  /** Requests taken from the ring and not yet answered. */
  readonly inFlight: number;
  /** Per bucket of LATENCY_BUCKETS_US (not cumulative), and one more for the rest. */
  readonly latencyCounts: readonly number[];
  /** The sum of every answered request's latency, in microseconds. */
  readonly latencySumUs: number;
}

/** One device's counters, named as the toolstack names the device. */
export interface VbdStatsReport {
  readonly backendDomid: number;
  readonly frontendDomid: number;
  readonly devid: number;
  readonly counters: VbdCounters;
}

/** The latency under which `fraction` of the answered requests fell, in microseconds (a bucket's upper bound); undefined with none answered. */
export function latencyPercentileUs(counters: VbdCounters, fraction: number): number | undefined {
  const total = counters.latencyCounts.reduce((sum, n) => sum + n, 0);
  if (total === 0) return undefined;
  const wanted = Math.ceil(total * fraction);
  let seen = 0;
  for (let i = 0; i < counters.latencyCounts.length; i++) {
    seen += counters.latencyCounts[i]!;
    if (seen >= wanted) return LATENCY_BUCKETS_US[i] ?? Number.POSITIVE_INFINITY;
  }
  return Number.POSITIVE_INFINITY;
}
