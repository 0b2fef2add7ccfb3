/**
 * The Prometheus endpoint: the metrics module on figures it is handed (a
 * fake blkback, a fake xenstored, a fake supervisor), the addresses
 * --metrics takes and refuses, and `xenmesh up --metrics` scraped while
 * xenstore is driven, its figures moving with the load; then
 * sd_notify, as systemd's manager would receive it from `xenmesh xenstored`.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createMetricsRegistry, serveMetrics, vdevName } from '../host/cli/metrics.js';
import { parseMetricsAddress } from '../host/cli/metrics-address.js';
import { LATENCY_BUCKETS_US, type VbdStatsReport } from '../shared/vbd-stats.js';
import { Supervisor, type WorkerStatus } from '../shared/mesh/supervisor.js';
import { setLogSink } from '../shared/log.js';
import type { XenstoreDomainFigures } from '../xenstore/daemon/domain-figures.js';
import { run, waitFor } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));

/** The value of one series of a scrape (its name and labels as written), or undefined. */
function sample(text: string, series: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

function disk(devid: number, reads: number, latencyCounts: number[]): VbdStatsReport {
  return {
    backendDomid: 1,
    frontendDomid: 2,
    devid,
    counters: {
      readRequests: reads,
      writeRequests: 3,
      flushRequests: 1,
      discardRequests: 0,
      bytesRead: reads * 4096,
      bytesWritten: 3 * 512,
      errors: 2,
      inFlight: 5,
      latencyCounts,
      latencySumUs: 1500,
    },
  };
}

t.test('per-disk figures come from blockStats, read on each scrape', async (t) => {
  let reads = 10;
  let calls = 0;
  const counts = new Array<number>(LATENCY_BUCKETS_US.length + 1).fill(0);
  counts[0] = 4; // <= 25 us
  counts[3] = 6; // <= 250 us
  counts[LATENCY_BUCKETS_US.length] = 1; // beyond the last bound
  const registry = createMetricsRegistry({
    blockStats: async () => {
      calls++;
      return [disk(51712, reads, counts)];
    },
  });
  const labels = 'frontend_domid="2",backend_domid="1",devid="51712",vdev="xvda"';
  let text = await registry.metrics();
  t.equal(calls, 1, 'one reading serves every metric of a scrape');
  t.equal(sample(text, `xenmesh_vbd_requests_total{${labels},operation="read"}`), 10, 'reads');
  t.equal(sample(text, `xenmesh_vbd_requests_total{${labels},operation="write"}`), 3, 'writes');
  t.equal(sample(text, `xenmesh_vbd_requests_total{${labels},operation="discard"}`), 0, 'an operation never used reads 0');
  t.equal(sample(text, `xenmesh_vbd_read_bytes_total{${labels}}`), 40960, 'bytes read');
  t.equal(sample(text, `xenmesh_vbd_written_bytes_total{${labels}}`), 1536, 'bytes written');
  t.equal(sample(text, `xenmesh_vbd_errors_total{${labels}}`), 2, 'errors');
  t.equal(sample(text, `xenmesh_vbd_in_flight_requests{${labels}}`), 5, 'in flight');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_bucket{le="0.000025",${labels}}`), 4, 'the first bucket');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_bucket{le="0.0001",${labels}}`), 4, 'buckets are cumulative');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_bucket{le="0.00025",${labels}}`), 10, 'up to 250 us');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_bucket{le="10",${labels}}`), 10, 'the last bound');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_bucket{le="+Inf",${labels}}`), 11, '+Inf counts what is beyond');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_count{${labels}}`), 11, 'the count');
  t.equal(sample(text, `xenmesh_vbd_request_duration_seconds_sum{${labels}}`), 0.0015, 'the sum, in seconds');
  reads = 25;
  text = await registry.metrics();
  t.equal(calls, 2, 'a second scrape reads again');
  t.equal(sample(text, `xenmesh_vbd_requests_total{${labels},operation="read"}`), 25, 'and its figures move');
});

t.test('xenstored and worker figures, labelled by domain', async (t) => {
  const figures: XenstoreDomainFigures = {
    domid: 2,
    requests: 17,
    nodes: 12,
    nodesQuota: 1000,
    watches: 3,
    watchesQuota: 128,
    transactions: 1,
    transactionsQuota: 10,
    queuedBytes: 300,
    queuedMessages: 2,
  };
  const workers = [{ name: 'kernel:guest', domid: 2, state: 'ready', restarts: 4 } as WorkerStatus];
  const registry = createMetricsRegistry({
    xenstoreDomains: async () => [figures],
    workers: () => workers,
    domainName: (domid) => (domid === 2 ? 'guest' : undefined),
  });
  const text = await registry.metrics();
  const d = '{domid="2",domain_name="guest"}';
  t.equal(sample(text, `xenmesh_xenstore_requests_total${d}`), 17);
  t.equal(sample(text, `xenmesh_xenstore_nodes${d}`), 12);
  t.equal(sample(text, `xenmesh_xenstore_nodes_quota${d}`), 1000);
  t.equal(sample(text, `xenmesh_xenstore_watches${d}`), 3);
  t.equal(sample(text, `xenmesh_xenstore_watches_quota${d}`), 128);
  t.equal(sample(text, `xenmesh_xenstore_transactions${d}`), 1);
  t.equal(sample(text, `xenmesh_xenstore_transactions_quota${d}`), 10);
  t.equal(sample(text, `xenmesh_xenstore_queued_output_bytes${d}`), 300);
  t.equal(sample(text, `xenmesh_xenstore_queued_output_messages${d}`), 2);
  t.equal(sample(text, 'xenmesh_worker_restarts_total{worker="kernel:guest",domid="2"}'), 4);
  t.equal(sample(text, 'xenmesh_worker_state{worker="kernel:guest",domid="2",state="ready"}'), 1);
  t.equal(sample(text, 'xenmesh_worker_state{worker="kernel:guest",domid="2",state="crashed"}'), 0);
  t.notMatch(text, /xenmesh_vbd_/, 'no disk metrics without a blockStats');
});

t.test('a worker killed is restarted, and the scrape counts it', async (t) => {
  // The supervisor logs the crash and the restart; they are expected here.
  setLogSink(() => {});
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  const registry = createMetricsRegistry({ workers: () => supervisor.status() });
  const module = new URL('./helpers/test-role-worker.js', import.meta.url);
  await supervisor.start({ name: 'probe', domid: 3, module, config: { behaviour: 'ok' }, shared: null, restart: { kind: 'on-failure', maxRestarts: 2, windowMs: 60_000, delayMs: 10 } });
  const series = 'xenmesh_worker_restarts_total{worker="probe",domid="3"}';
  t.equal(sample(await registry.metrics(), series), 0, 'no restart yet');
  const restarted = new Promise<void>((resolve) => supervisor.once('ready', () => resolve()));
  await supervisor.kill('probe');
  await restarted;
  const text = await registry.metrics();
  t.equal(sample(text, series), 1, 'one restart');
  t.equal(sample(text, 'xenmesh_worker_state{worker="probe",domid="3",state="ready"}'), 1, 'and it is ready again');
});

t.test('vdev names from device numbers', async (t) => {
  t.equal(vdevName(51712), 'xvda');
  t.equal(vdevName(51728), 'xvdb');
  t.equal(vdevName(51713), 'xvda1');
  t.equal(vdevName((1 << 28) | (26 << 8)), 'xvdaa', 'the extended numbering');
  t.equal(vdevName(768), '768', 'a number outside Xen\'s schemes stays a number');
});

t.test('--metrics addresses', async (t) => {
  t.same(parseMetricsAddress('9100'), { host: '127.0.0.1', port: 9100 });
  t.same(parseMetricsAddress('0.0.0.0:9100'), { host: '0.0.0.0', port: 9100 });
  t.same(parseMetricsAddress('localhost:0'), { host: 'localhost', port: 0 });
  t.same(parseMetricsAddress('[::1]:9100'), { host: '::1', port: 9100 });
  for (const bad of ['', 'abc', '70000', ':9100', 'host:', '::1:9100', '[127.0.0.1]:9100', '[::1]', '9100x', '-1']) {
    t.throws(() => parseMetricsAddress(bad), /^--metrics takes PORT, HOST:PORT or \[IPv6\]:PORT, not '.*': [^\n]+$/, `'${bad}' is refused in one line`);
  }
});

t.test('the endpoint: /metrics only, and an address in use refused in one line', async (t) => {
  const registry = createMetricsRegistry({ workers: () => [] });
  const server = await serveMetrics({ host: '127.0.0.1', port: 0 }, registry);
  t.teardown(() => server.close());
  const ok = await fetch(server.url);
  t.equal(ok.status, 200);
  t.match(ok.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  t.match(await ok.text(), /^# HELP xenmesh_worker_restarts_total /m);
  t.equal((await fetch(server.url.replace('/metrics', '/other'))).status, 404);
  const port = Number(new URL(server.url).port);
  await t.rejects(serveMetrics({ host: '127.0.0.1', port }, registry), { message: `--metrics 127.0.0.1:${port}: cannot listen: the address is in use` });
});

/** Starts `xenmesh up` with stdin closed and waits for it to run; stopped when the test ends. */
async function boot(t: Test, args: string[], env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; stdout: () => string; stderr: () => string }> {
  const child = spawn(process.execPath, [XENMESH, 'up', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await closed;
  });
  await waitFor(() => stdout.includes('Running. Ctrl-C') || child.exitCode !== null, 'the host to boot', 60_000);
  return { child, stdout: () => stdout, stderr: () => stderr };
}

t.test('xenmesh up --metrics: figures move under load', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-metrics-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  const up = await boot(t, ['--socket', socket, '--metrics', '127.0.0.1:0'], { ...process.env, XDG_DATA_HOME: dir });
  t.equal(up.child.exitCode, null, 'it runs', { stderr: up.stderr() });
  const url = /serving metrics at (http:\S+)/.exec(up.stderr())?.[1];
  t.ok(url, 'it says where the metrics are');
  const scrape = async () => (await fetch(url!)).text();

  const dom0 = '{domid="0",domain_name="Domain-0"}';
  const guest = '{domid="2",domain_name="guest"}';
  let text = await scrape();
  const requestsBefore = sample(text, `xenmesh_xenstore_requests_total${dom0}`)!;
  t.ok(requestsBefore > 0, "dom0's requests are counted (the toolstack's)");
  t.ok(sample(text, `xenmesh_xenstore_requests_total${guest}`)! > 0, "and the guest's, over its ring");
  t.ok(sample(text, `xenmesh_xenstore_nodes${guest}`)! > 0, 'the guest owns nodes');
  t.equal(sample(text, `xenmesh_xenstore_nodes_quota${guest}`), 1000, "against xenstored's default quota");
  t.equal(sample(text, 'xenmesh_worker_state{worker="kernel:guest",domid="2",state="ready"}'), 1, "the guest's kernel is ready");
  t.equal(sample(text, 'xenmesh_worker_restarts_total{worker="xenstored",domid="0"}'), 0, 'nothing restarted');

  const env = { XENSTORED_PATH: socket };
  const writes = 5;
  for (let i = 0; i < writes; i++) t.equal((await run('xenstore-write', [`/local/domain/2/data/k${i}`, 'v'], env)).code, 0);
  text = await scrape();
  // Socket clients act as dom0: each xenstore-write is its requests (at least the WRITE) counted as dom0's.
  t.ok(sample(text, `xenmesh_xenstore_requests_total${dom0}`)! >= requestsBefore + writes, 'the requests grow with each xenstore-write', {
    before: requestsBefore,
    after: sample(text, `xenmesh_xenstore_requests_total${dom0}`),
  });

  const watchesBefore = sample(text, `xenmesh_xenstore_watches${dom0}`)!;
  const watcher = spawn('xenstore-watch', ['/local/domain/2/data'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => {
    if (watcher.exitCode === null) watcher.kill('SIGKILL');
  });
  // xenstore-watch prints the path once its watch is set (the watch fires at once).
  await new Promise<void>((resolve) => watcher.stdout!.once('data', () => resolve()));
  text = await scrape();
  t.equal(sample(text, `xenmesh_xenstore_watches${dom0}`), watchesBefore + 1, 'the watch count grows as a watch is set');
  watcher.kill('SIGTERM');
});

t.test('xenmesh up refuses a bad --metrics, or one in use, in one line and before booting', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-metrics-bad-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  for (const bad of ['nine', '[::1]', '99999']) {
    const result = await run(process.execPath, [XENMESH, 'up', '--socket', socket, '--metrics', bad], { XDG_DATA_HOME: dir });
    t.equal(result.code, 1, `'${bad}' is refused`);
    t.match(result.stderr, new RegExp(`^xenmesh up: --metrics takes PORT, HOST:PORT or \\[IPv6\\]:PORT, not '${bad.replace(/[[\]]/g, '\\$&')}': [^\\n]+\\n$`), 'in one line');
  }
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.teardown(() => taken.close());
  const port = (taken.address() as { port: number }).port;
  const result = await run(process.execPath, [XENMESH, 'up', '--socket', socket, '--metrics', `127.0.0.1:${port}`], { XDG_DATA_HOME: dir });
  t.equal(result.code, 1, 'a port in use is refused');
  t.equal(result.stderr, `xenmesh up: --metrics 127.0.0.1:${port}: cannot listen: the address is in use\n`, 'in one line');
  t.equal(result.stdout, '', 'before any domain is booted');
  const backend = await run(process.execPath, [XENMESH, 'backend', '--domid', '0', '--metrics', 'nine']);
  t.equal(backend.code, 1, 'xenmesh backend refuses it too');
  t.match(backend.stderr, /^xenmesh backend: --metrics takes PORT, HOST:PORT or \[IPv6\]:PORT, not 'nine': [^\n]+\n$/);
});

t.test('sd_notify: READY=1 once xenstored serves, STOPPING=1 as it stops', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-notify-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const notify = join(dir, 'notify');
  const received = join(dir, 'received');
  // socat stands in for systemd's manager: it takes every datagram sent to the socket.
  const manager = spawn('sh', ['-c', `exec socat -u UNIX-RECV:${notify} - > ${received}`], { stdio: 'ignore' });
  t.teardown(() => {
    if (manager.exitCode === null) manager.kill('SIGTERM');
  });
  await waitFor(() => {
    try {
      readFileSync(notify);
    } catch (err) {
      return (err as NodeJS.ErrnoException).code !== 'ENOENT';
    }
    return true;
  }, 'socat to bind the notify socket', 10_000);
  const daemon = spawn(process.execPath, [XENMESH, 'xenstored', '--socket', join(dir, 'socket')], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, NOTIFY_SOCKET: notify },
  });
  let stderr = '';
  daemon.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exit = new Promise<number | null>((resolve) => daemon.on('close', (code) => resolve(code)));
  await waitFor(() => readFileSync(received, 'utf8').includes('READY=1'), 'READY=1', 20_000);
  t.notMatch(readFileSync(received, 'utf8'), /STOPPING=1/, 'ready, and not yet stopping');
  daemon.kill('SIGTERM');
  t.equal(await exit, 0, 'it stops cleanly', { stderr });
  await waitFor(() => readFileSync(received, 'utf8').includes('STOPPING=1'), 'STOPPING=1', 10_000);
  const said = readFileSync(received, 'utf8');
  t.ok(said.indexOf('READY=1') < said.indexOf('STOPPING=1'), 'READY=1 came first');
  t.match(said, /STATUS=serving xenstore on /, 'with a status line');
  t.notMatch(stderr, /warn/, 'and nothing to warn of');
});
