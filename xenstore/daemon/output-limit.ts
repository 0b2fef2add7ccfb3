/**
 * The default bound on the output queued for all clients together, by
 * queuedCost: 128 MiB, room for four privileged clients at their own limit
 * (OUTPUT_HARD_LIMIT, 32 MiB) before anyone is cut off.
 */
export const DEFAULT_QUEUED_OUTPUT_LIMIT = 128 * 1024 * 1024;

/** What the limit needs to know of a connection. */
export interface OutputHolder {
  /** What its queued output costs, by queuedCost. */
  readonly queuedBytes: number;
}

/**
 * The output queued for all clients together, against a bound that keeps
 * the daemon's memory bounded whoever stops reading. Per-client limits do not
 * do that alone: every socket client is privileged, and each may hold up to
 * OUTPUT_HARD_LIMIT, however many of them there are.
 *
 * Over the bound, the client holding the most output is the one to cut: a
 * client that does not read grows its queue for as long as it is served, so
 * the largest queue is the likeliest not to be read, and cutting it frees the
 * most. Privilege does not protect it (the toolstack's socket is cut when it
 * holds the most, and never before one that holds more), so that a stalled
 * privileged client cannot take the daemon and every domain down with it.
 */
export class QueuedOutputLimit<C extends OutputHolder> {
  private total = 0;

  /** `limit` in bytes; 0 for no bound. */
  constructor(readonly limit: number) {}

  /** What the output queued for all clients costs now. */
  get queued(): number {
    return this.total;
  }

  get over(): boolean {
    return this.limit > 0 && this.total > this.limit;
  }

  /** Records a change in some client's queued output. */
  add(delta: number): void {
    this.total += delta;
  }

  /** The client to cut while over the bound: the one holding the most, if any holds anything. */
  victim(clients: Iterable<C>): C | undefined {
    let largest: C | undefined;
    for (const client of clients) {
      if (client.queuedBytes > (largest?.queuedBytes ?? 0)) largest = client;
    }
    return largest;
  }
}
