/**
 * What xenstored can say of each domain it knows, for the metrics
 * endpoint: requests answered, what the domain holds against its quotas,
 * and the output waiting to be written to it. In the embedded host the
 * daemon runs in a worker, so the figures travel in its health report's
 * detail, a flat record of numbers and strings: encodeDomainFigures and
 * decodeDomainFigures are the two ends of that.
 */
import type { XenStoreDaemon } from './xenstored.js';

export interface XenstoreDomainFigures {
  readonly domid: number;
  /** Requests answered since the domain became known. */
  readonly requests: number;
  /** Nodes the domain owns, and its quota of them (0: none). */
  readonly nodes: number;
  readonly nodesQuota: number;
  /** Watches the domain has set, and its quota of them. */
  readonly watches: number;
  readonly watchesQuota: number;
  /** Transactions the domain has open, and its quota of them. */
  readonly transactions: number;
  readonly transactionsQuota: number;
  /** Output waiting to be written to the domain's connections: bytes (by queuedCost) and messages. */
  readonly queuedBytes: number;
  readonly queuedMessages: number;
}

/** The figures of every domain the daemon knows (dom0 too: socket clients are dom0's). */
export function domainFigures(daemon: XenStoreDaemon): XenstoreDomainFigures[] {
  const queued = new Map<number, { bytes: number; messages: number }>();
  for (const conn of daemon.connections) {
    const sum = queued.get(conn.domid) ?? { bytes: 0, messages: 0 };
    sum.bytes += conn.queuedBytes;
    sum.messages += conn.queuedMessages;
    queued.set(conn.domid, sum);
  }
  return daemon.domains.all().map((domain) => ({
    domid: domain.domid,
    requests: domain.requestsHandled,
    nodes: daemon.store.usageOf(domain.domid).nodes,
    nodesQuota: daemon.domains.quota(domain.domid, 'nodes'),
    watches: domain.counts.watches,
    watchesQuota: daemon.domains.quota(domain.domid, 'watches'),
    transactions: domain.counts.transactions,
    transactionsQuota: daemon.domains.quota(domain.domid, 'transactions'),
    queuedBytes: queued.get(domain.domid)?.bytes ?? 0,
    queuedMessages: queued.get(domain.domid)?.messages ?? 0,
  }));
}

/** The prefix of the detail keys that carry the figures: `xs:<domid>:<figure>`. */
const KEY_PREFIX = 'xs:';
const FIGURE_NAMES = [
  'requests',
  'nodes',
  'nodesQuota',
  'watches',
  'watchesQuota',
  'transactions',
  'transactionsQuota',
  'queuedBytes',
  'queuedMessages',
] as const satisfies readonly (keyof XenstoreDomainFigures)[];

export function encodeDomainFigures(figures: readonly XenstoreDomainFigures[]): Record<string, number> {
  const detail: Record<string, number> = {};
  for (const domain of figures) for (const name of FIGURE_NAMES) detail[`${KEY_PREFIX}${domain.domid}:${name}`] = domain[name];
  return detail;
}

/** The figures found in a health report's detail; other keys are ignored, a figure missing reads 0. */
export function decodeDomainFigures(detail: Record<string, number | string>): XenstoreDomainFigures[] {
  const byDomid = new Map<number, Record<string, number>>();
  for (const [key, value] of Object.entries(detail)) {
    const match = /^xs:(\d+):(\w+)$/.exec(key);
    if (!match || typeof value !== 'number') continue;
    const domid = Number(match[1]);
    const figures = byDomid.get(domid) ?? {};
    figures[match[2]!] = value;
    byDomid.set(domid, figures);
  }
  return [...byDomid].map(([domid, figures]) => {
    const read = (name: (typeof FIGURE_NAMES)[number]) => figures[name] ?? 0;
    return {
      domid,
      requests: read('requests'),
      nodes: read('nodes'),
      nodesQuota: read('nodesQuota'),
      watches: read('watches'),
      watchesQuota: read('watchesQuota'),
      transactions: read('transactions'),
      transactionsQuota: read('transactionsQuota'),
      queuedBytes: read('queuedBytes'),
      queuedMessages: read('queuedMessages'),
    };
  });
}
