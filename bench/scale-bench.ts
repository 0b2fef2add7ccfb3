/**
 * `npm run bench:scale`: how a host scales with its guests. Each run boots
 * a host with 4 driver domains, then N guests with a vbd each (a small RAM
 * disk in a driver domain, spread evenly), and waits until every guest's
 * disk has connected and done one write and one read that matches; then
 * it destroys the guests. It reports the time to boot all N and per guest,
 * the time to tear them down, and the memory the guests added: the
 * process's RSS and the guests' own heaps.
 *
 * Every run is a process of its own, so that the memory of one is not
 * counted in the next; sizes alternate round by round (BENCH_ROUNDS), so
 * that a machine busier at one time than another weighs on all sizes
 * alike. BENCH_GUESTS chooses the sizes (default 100,1000). `--json`
 * prints the results as JSON; `--run N` does a single run in this process
 * (for `node --cpu-prof`).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { diskDevice } from '../host/toolstack/devices.js';
import { Host } from '../host/machine/host.js';
import { setLogSink } from '../shared/log.js';
import type { XenStoreClient } from '../xenstore/client/client.js';
import { watchUntil } from '../xenbus/read.js';
import { CHECK_NODE, type ScaleCheck } from './scale-check.js';
import { RunProgress } from '../shared/progress.js';

const GUEST_KERNEL = new URL('./scale-kernel-worker.js', import.meta.url);
const DRIVER_DOMAINS = 4;
const DRIVER_PAGES = 4096;
/** A guest's memory: its xenstore ring, its disk's ring and a few data pages fit in 1 MiB. */
const GUEST_PAGES = 256;
/** Each guest's disk: a RAM disk of 64 KiB in its driver domain. */
const DISK_BYTES = 64 * 1024;
/** Guests being created at once: enough to keep xenstored and the workers busy, few enough not to time out. */
const CONCURRENCY = 8;
/** How long one guest may take from its creation to its disk's check. */
const GUEST_TIMEOUT_MS = 120_000;

export interface ScaleRun {
  readonly guests: number;
  readonly bootMs: number;
  readonly bootPerGuestMs: number;
  /**
   * CPU time (all threads of the process, user and system) spent booting:
   * unlike the time on the clock, it does not grow when other processes
   * take the cores, so it shows how the work itself scales.
   */
  readonly bootCpuMs: number;
  readonly bootCpuPerGuestMs: number;
  /** The machine's 1-minute load average as the guests booted and once they had: how busy it was. */
  readonly loadAverage: readonly [number, number];
  readonly teardownMs: number;
  readonly teardownPerGuestMs: number;
  /** The process's RSS with the host and its driver domains up, before any guest. */
  readonly baseRssMiB: number;
  /** With every guest up. */
  readonly rssMiB: number;
  readonly rssPerGuestMiB: number;
  /** The main thread's heap (the toolstack, the supervisor). */
  readonly mainHeapMiB: number;
  /** A guest kernel worker's own heap, on average, as it reported after its check. */
  readonly guestHeapMiB: number;
  readonly failures: number;
}

const MiB = 1024 * 1024;

/** Runs `task` over `items`, `limit` at a time. */
async function inTurn<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await task(items[next++]!);
    }),
  );
}

/** Waits for a node to be written, by watching it; its value. */
async function valueOf(xs: XenStoreClient, path: string, timeoutMs: number): Promise<string> {
  const value = await watchUntil(xs, path, timeoutMs, () => xs.tryRead(path));
  if (value === undefined) throw new Error(`${path} was not written within ${timeoutMs} ms`);
  return value;
}

export async function runOnce(guests: number): Promise<ScaleRun> {
  setLogSink((level, component, message) => {
    if (level !== 'info') process.stderr.write(`${level} [${component}] ${message}\n`);
  });
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-scale-'));
  const frames = 1024 + DRIVER_DOMAINS * DRIVER_PAGES + guests * GUEST_PAGES;
  const host = new Host({ socket: join(dir, 'socket'), frames, kernelModule: GUEST_KERNEL });
  try {
    await host.boot();
    const drivers: number[] = [];
    const perDriver = Math.ceil(guests / DRIVER_DOMAINS);
    for (let i = 0; i < DRIVER_DOMAINS; i++) {
      const start = await host.startDomain({ name: `driver${i}`, pages: DRIVER_PAGES, vbds: perDriver }, { backDrivers: ['vbd'] });
      drivers.push(start.domid);
    }
    const baseRss = process.memoryUsage().rss;

    const indexes = Array.from({ length: guests }, (_, i) => i);
    const domids: number[] = [];
    let failures = 0;
    let guestHeap = 0;
    const booting = performance.now();
    const cpuBefore = process.cpuUsage();
    const loadBefore = loadavg()[0]!;
    await inTurn(indexes, CONCURRENCY, async (i) => {
      // One disk fits C xenstored's default quotas: a guest gets none of its own,
      // which xenstored would journal with every domain's record (see BENCHMARKS.md).
      const start = await host.startDomain({ name: `guest${i}`, pages: GUEST_PAGES }, { frontDrivers: ['vbd'] });
      domids.push(start.domid);
      const checked = valueOf(host.xenstore, `/local/domain/${start.domid}/${CHECK_NODE}`, GUEST_TIMEOUT_MS);
      checked.catch(() => {});
      await host.plugDevice(diskDevice({ frontendDomid: start.domid, backendDomid: drivers[i % DRIVER_DOMAINS]!, vdev: 'xvda', target: `memory:${DISK_BYTES}` }));
      const check = JSON.parse(await checked) as ScaleCheck;
      guestHeap += check.heapUsed;
      if (!check.ok) {
        failures++;
        process.stderr.write(`guest${i} (domain ${start.domid}): ${check.why}\n`);
      }
    });
    const bootMs = performance.now() - booting;
    const cpu = process.cpuUsage(cpuBefore);
    const bootCpuMs = (cpu.user + cpu.system) / 1000;
    const loadAfter = loadavg()[0]!;
    const rss = process.memoryUsage().rss;
    const mainHeap = process.memoryUsage().heapUsed;

    const tearing = performance.now();
    await inTurn(domids, CONCURRENCY, (domid) => host.destroyDomain(domid));
    const teardownMs = performance.now() - tearing;
    return {
      guests,
      bootMs: Math.round(bootMs),
      bootPerGuestMs: round(bootMs / guests),
      bootCpuMs: Math.round(bootCpuMs),
      bootCpuPerGuestMs: round(bootCpuMs / guests),
      loadAverage: [round(loadBefore), round(loadAfter)],
      teardownMs: Math.round(teardownMs),
      teardownPerGuestMs: round(teardownMs / guests),
      baseRssMiB: round(baseRss / MiB),
      rssMiB: round(rss / MiB),
      rssPerGuestMiB: round((rss - baseRss) / MiB / guests),
      mainHeapMiB: round(mainHeap / MiB),
      guestHeapMiB: round(guestHeap / MiB / guests),
      failures,
    };
  } finally {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }
}

const round = (value: number) => Math.round(value * 100) / 100;

/** One run in a process of its own; its result is the last line it prints. */
function runInChild(guests: number): Promise<ScaleRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--run', String(guests), '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      const last = out.trim().split('\n').at(-1);
      if (code !== 0 || !last) reject(new Error(`the run of ${guests} guests exited with ${code}`));
      else resolve(JSON.parse(last) as ScaleRun);
    });
  });
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const single = args.indexOf('--run');
  if (single >= 0) {
    const result = await runOnce(Number(args[single + 1]));
    process.stdout.write(json ? `${JSON.stringify(result)}\n` : `${describe(result)}\n`);
    return;
  }
  const sizes = (process.env['BENCH_GUESTS'] ?? '100,1000').split(',').map(Number);
  const rounds = Number(process.env['BENCH_ROUNDS'] ?? 1);
  const runs: ScaleRun[] = [];
  // Each run as it ends, with how many are left and the time they should take, on stderr.
  const progress = new RunProgress(rounds * sizes.length);
  for (let r = 0; r < rounds; r++) {
    for (const guests of sizes) {
      const result = await runInChild(guests);
      runs.push(result);
      progress.finished(`round ${r + 1}: ${describe(result)}`);
    }
  }
  const summary = sizes.map((guests) => {
    const mine = runs.filter((run) => run.guests === guests);
    return {
      guests,
      bootMs: median(mine.map((run) => run.bootMs)),
      bootCpuMs: median(mine.map((run) => run.bootCpuMs)),
      rssPerGuestMiB: median(mine.map((run) => run.rssPerGuestMiB)),
    };
  });
  const [small, large] = [summary[0], summary.at(-1)];
  const compared = small && large && small !== large;
  const bootRatio = compared ? round(large.bootMs / small.bootMs) : undefined;
  const cpuRatio = compared ? round(large.bootCpuMs / small.bootCpuMs) : undefined;
  const guestRatio = compared ? large.guests / small.guests : undefined;
  if (json) {
    process.stdout.write(`${JSON.stringify({ runs, summary, bootRatio, cpuRatio, guestRatio })}\n`);
  } else if (compared) {
    process.stdout.write(`${large.guests} / ${small.guests} guests (${guestRatio}x): boot time ${bootRatio}x, boot CPU time ${cpuRatio}x\n`);
  }
}

function describe(run: ScaleRun): string {
  return (
    `${run.guests} guests: booted in ${run.bootMs} ms (${run.bootPerGuestMs} ms each; CPU ${run.bootCpuPerGuestMs} ms each; load ${run.loadAverage.join(' -> ')}), torn down in ${run.teardownMs} ms (${run.teardownPerGuestMs} ms each); ` +
    `RSS ${run.baseRssMiB} -> ${run.rssMiB} MiB (${run.rssPerGuestMiB} MiB per guest), main heap ${run.mainHeapMiB} MiB, guest heap ${run.guestHeapMiB} MiB each` +
    (run.failures > 0 ? `; ${run.failures} FAILED` : '')
  );
}

await main();
