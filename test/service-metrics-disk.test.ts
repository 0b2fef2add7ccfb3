/**
 * The Prometheus endpoint of an embedded host with a real guest doing disk
 * I/O: the per-disk figures are blkback's own counters, read through the
 * host on each scrape, and they move as the guest reads and writes.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMetricsRegistry, serveMetrics } from '../host/cli/metrics.js';
import { Host } from '../host/machine/host.js';
import { diskDevice } from '../host/toolstack/devices.js';
import { waitForDevice } from '../host/toolstack/device-wait.js';
import { setLogSink } from '../shared/log.js';
import { DISK_BLOCK_BYTES, DISK_KERNEL, makeImage, runDiskJob } from './helpers/disk-jobs.js';

/** Every sample of a metric family whose labels contain `labels`, summed. */
function total(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const match = /^([a-z_:]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const set = match[2] ?? '';
    if (Object.entries(labels).every(([key, value]) => set.includes(`${key}="${value}"`))) sum += Number(match[3]);
  }
  return sum;
}

async function scrape(url: string): Promise<string> {
  const response = await fetch(url);
  if (response.status !== 200) throw new Error(`scrape answered ${response.status}`);
  return response.text();
}

t.test("a guest's reads and writes move its disk's figures on the endpoint", async (t) => {
  setLogSink(() => {});
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-metrics-disk-'));
  const image = join(dir, 'disk.img');
  makeImage(image, 16 * 1024 * 1024);
  const host = new Host({ socket: join(dir, 'socket'), frames: 16384, kernelModule: DISK_KERNEL });
  const registry = createMetricsRegistry({
    blockStats: () => host.blockStats(),
    workers: () => host.workers(),
    domainName: (domid) => host.platform.listDomains().find((d) => d.domid === domid)?.name,
  });
  const server = await serveMetrics({ host: '127.0.0.1', port: 0 }, registry);
  t.teardown(async () => {
    await server.close();
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 2048 }, { backDrivers: ['vbd'] });
  const guest = await host.startDomain({ name: 'guest', pages: 2048 }, { frontDrivers: ['vbd'] });
  const spec = diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev: 'xvda', target: image });
  await host.plugDevice(spec);
  t.equal((await waitForDevice(host.xenstore, spec, 30_000)).outcome, 'connected');

  const disk = { frontend_domid: String(guest.domid), backend_domid: String(driver.domid) };
  const before = await scrape(server.url);
  const requests = (text: string, operation: string) => total(text, 'xenmesh_vbd_requests_total', { ...disk, operation });

  const writes = await runDiskJob(host.xenstore, guest.domid, { id: 'metrics-write', kind: 'write', count: 32, depth: 8 });
  t.same([writes.acked, writes.errors], [32, 0], 'the guest wrote 32 blocks');
  const reads = await runDiskJob(host.xenstore, guest.domid, { id: 'metrics-read', kind: 'verify', count: 32, depth: 8 });
  t.same([reads.errors, reads.mismatches], [0, 0], 'and read them back');
  const after = await scrape(server.url);

  t.ok(requests(after, 'write') - requests(before, 'write') >= 32, 'write requests grew by at least the blocks written', { after });
  t.ok(requests(after, 'read') - requests(before, 'read') >= 32, 'read requests grew by at least the blocks read');
  t.ok(total(after, 'xenmesh_vbd_written_bytes_total', disk) - total(before, 'xenmesh_vbd_written_bytes_total', disk) >= 32 * DISK_BLOCK_BYTES, 'bytes written grew');
  t.ok(total(after, 'xenmesh_vbd_read_bytes_total', disk) - total(before, 'xenmesh_vbd_read_bytes_total', disk) >= 32 * DISK_BLOCK_BYTES, 'bytes read grew');
  t.equal(total(after, 'xenmesh_vbd_errors_total', disk), 0, 'no errors');
  t.equal(total(after, 'xenmesh_vbd_in_flight_requests', disk), 0, 'nothing in flight once the guest is idle');
  const observed = total(after, 'xenmesh_vbd_request_duration_seconds_count', disk);
  const answered = ['read', 'write', 'flush', 'discard'].reduce((sum, operation) => sum + requests(after, operation), 0);
  t.equal(observed, answered, 'the latency histogram counts every answered request');
  t.ok(total(after, 'xenmesh_vbd_request_duration_seconds_sum', disk) > 0, 'and their latencies add up to more than nothing');
});
