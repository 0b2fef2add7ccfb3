/**
 * The Prometheus endpoint of `xenmesh up` and `xenmesh backend` (--metrics
 * ADDR): every disk's counters from blkback, every domain's use of
 * xenstored, and the mesh's workers, served at /metrics in Prometheus'
 * text format. Figures are read when Prometheus scrapes (prom-client's
 * collect callbacks), from the functions it is given, never on a timer.
 * Loaded only when --metrics is given (prom-client costs every start
 * otherwise); the option itself is read by metrics-address.ts.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LATENCY_BUCKETS_US, type VbdStatsReport } from '../../shared/vbd-stats.js';
import type { WorkerState, WorkerStatus } from '../../shared/mesh/supervisor.js';
import type { XenstoreDomainFigures } from '../../xenstore/daemon/domain-figures.js';

/** Where the figures come from; a source left out serves no metrics of its own. */
export interface MetricsSources {
  /** Every disk the backend serves, with its counters. */
  blockStats?: () => Promise<readonly VbdStatsReport[]> | readonly VbdStatsReport[];
  /** Every domain xenstored knows, with its figures. */
  xenstoreDomains?: () => Promise<readonly XenstoreDomainFigures[]>;
  /** The mesh's workers, as the supervisor sees them. */
  workers?: () => readonly WorkerStatus[];
  /** A domain's name, where known, for the `domain_name` label. */
  domainName?: (domid: number) => string | undefined;
}

/** The labels of a disk: its two ends, and its device number with the name the guest knows it by. */
type DiskLabels = Record<'frontend_domid' | 'backend_domid' | 'devid' | 'vdev', string>;
const DISK_LABELS = ['frontend_domid', 'backend_domid', 'devid', 'vdev'] as const;
const DOMAIN_LABELS = ['domid', 'domain_name'] as const;
const WORKER_STATES: readonly WorkerState[] = ['starting', 'ready', 'stopping', 'stopped', 'crashed', 'failed'];

/** The histogram's buckets in seconds, as Prometheus measures time: blkback's own, LATENCY_BUCKETS_US. */
const LATENCY_BUCKETS_S = LATENCY_BUCKETS_US.map((us) => us / 1e6);

/**
 * Calls `read` at most once for all the collect callbacks of one scrape:
 * the registry starts every metric's collection at once, so each of them
 * finds the same reading under way.
 */
function oncePerScrape<T>(read: () => Promise<T> | T): () => Promise<T> {
  let current: Promise<T> | undefined;
  return () => {
    if (!current) {
      const reading = Promise.resolve().then(read);
      current = reading;
      void reading.then(
        () => (current = undefined),
        () => (current = undefined),
      );
    }
    return current;
  };
}

/**
 * The Xen virtual disk name of a device number (xen-vbd-interface(7)), the
 * inverse of the toolstack's vdevNumber; the number itself for any other.
 */
export function vdevName(devid: number): string {
  const letters = (disk: number) => {
    let name = '';
    for (let n = disk + 1; n > 0; n = Math.floor((n - 1) / 26)) name = String.fromCharCode(97 + ((n - 1) % 26)) + name;
    return name;
  };
  const withPartition = (disk: number, partition: number) => `xvd${letters(disk)}${partition === 0 ? '' : partition}`;
  if (devid >> 8 === 202) return withPartition((devid >> 4) & 0xf, devid & 0xf);
  if (devid >>> 28 === 1) return withPartition((devid >> 8) & 0xfffff, devid & 0xff);
  return String(devid);
}

/** The registry of every metric, each read from `sources` when scraped. */
export function createMetricsRegistry(sources: MetricsSources): Registry {
  const registry = new Registry();
  const blocks = oncePerScrape(async () => (sources.blockStats ? await sources.blockStats() : []));
  const xenstore = oncePerScrape(async () => (sources.xenstoreDomains ? await sources.xenstoreDomains() : []));
  const diskLabels = (report: VbdStatsReport): DiskLabels => ({
    frontend_domid: String(report.frontendDomid),
    backend_domid: String(report.backendDomid),
    devid: String(report.devid),
    vdev: vdevName(report.devid),
  });
  const domainLabels = (domid: number) => ({ domid: String(domid), domain_name: sources.domainName?.(domid) ?? '' });

  /** A counter set, on each scrape, to what the source counted. */
  const diskCounter = (name: string, help: string, values: (report: VbdStatsReport) => [Record<string, string>, number][], extraLabels: readonly string[] = []) =>
    new Counter({
      name,
      help,
      labelNames: [...DISK_LABELS, ...extraLabels],
      registers: [registry],
      async collect() {
        const reports = await blocks();
        this.reset();
        for (const report of reports) for (const [labels, value] of values(report)) this.inc({ ...diskLabels(report), ...labels }, value);
      },
    });

  if (sources.blockStats) {
    diskCounter('xenmesh_vbd_requests_total', 'Requests answered by the block backend, by operation.', ({ counters: c }) => [
      [{ operation: 'read' }, c.readRequests],
      [{ operation: 'write' }, c.writeRequests],
      [{ operation: 'flush' }, c.flushRequests],
      [{ operation: 'discard' }, c.discardRequests],
    ], ['operation']);
    diskCounter('xenmesh_vbd_read_bytes_total', 'Bytes read from the disk for the frontend.', ({ counters: c }) => [[{}, c.bytesRead]]);
    diskCounter('xenmesh_vbd_written_bytes_total', 'Bytes written to the disk for the frontend.', ({ counters: c }) => [[{}, c.bytesWritten]]);
    diskCounter('xenmesh_vbd_errors_total', 'Requests answered with an error (BLKIF_RSP_ERROR or EOPNOTSUPP).', ({ counters: c }) => [[{}, c.errors]]);
    new Gauge({
      name: 'xenmesh_vbd_in_flight_requests',
      help: 'Requests taken from the ring and not yet answered.',
      labelNames: DISK_LABELS,
      registers: [registry],
      async collect() {
        const reports = await blocks();
        this.reset();
        for (const report of reports) this.set(diskLabels(report), report.counters.inFlight);
      },
    });
    new Histogram({
      name: 'xenmesh_vbd_request_duration_seconds',
      help: 'Time from taking a request from the ring to queuing its response.',
      labelNames: DISK_LABELS,
      buckets: LATENCY_BUCKETS_S,
      registers: [registry],
      async collect() {
        const reports = await blocks();
        this.reset();
        for (const report of reports) {
          fillHistogram(this, diskLabels(report), report.counters.latencyCounts, report.counters.latencySumUs / 1e6);
        }
      },
    });
  }

  if (sources.xenstoreDomains) {
    const domainGauge = (name: string, help: string, value: (figures: XenstoreDomainFigures) => number) =>
      new Gauge({
        name,
        help,
        labelNames: DOMAIN_LABELS,
        registers: [registry],
        async collect() {
          const domains = await xenstore();
          this.reset();
          for (const figures of domains) this.set(domainLabels(figures.domid), value(figures));
        },
      });
    new Counter({
      name: 'xenmesh_xenstore_requests_total',
      help: 'Requests xenstored answered for the domain (socket clients count as dom0).',
      labelNames: DOMAIN_LABELS,
      registers: [registry],
      async collect() {
        const domains = await xenstore();
        this.reset();
        for (const figures of domains) this.inc(domainLabels(figures.domid), figures.requests);
      },
    });
    domainGauge('xenmesh_xenstore_nodes', 'Nodes the domain owns.', (f) => f.nodes);
    domainGauge('xenmesh_xenstore_nodes_quota', 'Nodes the domain may own (0: no limit).', (f) => f.nodesQuota);
    domainGauge('xenmesh_xenstore_watches', 'Watches the domain has set.', (f) => f.watches);
    domainGauge('xenmesh_xenstore_watches_quota', 'Watches the domain may set (0: no limit).', (f) => f.watchesQuota);
    domainGauge('xenmesh_xenstore_transactions', 'Transactions the domain has open.', (f) => f.transactions);
    domainGauge('xenmesh_xenstore_transactions_quota', 'Transactions the domain may have open (0: no limit).', (f) => f.transactionsQuota);
    domainGauge('xenmesh_xenstore_queued_output_bytes', 'Output waiting to be written to the domain, in bytes with its upkeep.', (f) => f.queuedBytes);
    domainGauge('xenmesh_xenstore_queued_output_messages', 'Replies and watch events waiting to be written to the domain.', (f) => f.queuedMessages);
  }

  if (sources.workers) {
    const workers = sources.workers;
    new Counter({
      name: 'xenmesh_worker_restarts_total',
      help: 'Times the supervisor restarted the worker after it died.',
      labelNames: ['worker', 'domid'],
      registers: [registry],
      collect() {
        this.reset();
        for (const w of workers()) this.inc({ worker: w.name, domid: String(w.domid) }, w.restarts);
      },
    });
    new Gauge({
      name: 'xenmesh_worker_state',
      help: 'The state the worker is in: 1 for its state, 0 for the others.',
      labelNames: ['worker', 'domid', 'state'],
      registers: [registry],
      collect() {
        this.reset();
        for (const w of workers()) {
          for (const state of WORKER_STATES) this.set({ worker: w.name, domid: String(w.domid), state }, w.state === state ? 1 : 0);
        }
      },
    });
  }
  return registry;
}

/** What of prom-client's Histogram a reading is written into (15.x keeps one entry per label set). */
interface HistogramEntries {
  hashMap: Record<string, { labels: object; bucketValues: Record<number, number>; sum: number; count: number }>;
}

/**
 * Sets a histogram's label set to counts blkback has already bucketed:
 * prom-client only observes values one by one, and a disk answers
 * millions of requests. `counts` holds one count per bound of the
 * histogram's buckets (not cumulative) and one for what is beyond them.
 */
function fillHistogram(histogram: Histogram, labels: DiskLabels, counts: readonly number[], sumSeconds: number): void {
  histogram.zero(labels);
  const entries = Object.values((histogram as unknown as HistogramEntries).hashMap);
  const entry = entries[entries.length - 1]!;
  let count = 0;
  LATENCY_BUCKETS_S.forEach((bound, i) => {
    entry.bucketValues[bound] = counts[i] ?? 0;
  });
  for (const n of counts) count += n;
  entry.sum = sumSeconds;
  entry.count = count;
}

export interface MetricsServer {
  /** The URL of the metrics, with the port the server got. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Serves the registry at http://host:port/metrics. A failure to listen
 * (the address in use, not this machine's) rejects with one line that
 * names the option.
 */
export async function serveMetrics(address: { host: string; port: number }, registry: Registry): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`cannot collect the metrics: ${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    const failed = (err: NodeJS.ErrnoException) => {
      const shown = address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
      const why = err.code === 'EADDRINUSE' ? 'the address is in use' : err.code === 'EADDRNOTAVAIL' ? 'not an address of this machine' : err.message;
      reject(new Error(`--metrics ${shown}: cannot listen: ${why}`));
    };
    server.once('error', failed);
    server.listen(address.port, address.host, () => {
      server.off('error', failed);
      resolve();
    });
  });
  const bound = server.address();
  const port = typeof bound === 'object' && bound ? bound.port : address.port;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return {
    url: `http://${host}:${port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
