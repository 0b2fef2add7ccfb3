/**
 * `npm run bench:platform`: the embedded hypervisor's event channels and
 * xenstore over a domain's ring, each next to a baseline measured in the
 * same run:
 *
 * - event channel round trips between two workers, against two threads
 *   handing a turn back and forth with bare Atomics.wait/notify (the floor
 *   any shared-memory signalling can reach);
 * - xenstore READs over a domain's ring, against the same READs from the
 *   same daemon over its Unix socket.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { setLogLevel } from '../shared/log.js';
import { Host } from '../host/host.js';

const DURATION_MS = Number(process.env['BENCH_MS'] ?? 2000);
const ROUNDS = 3;
const WORKER = new URL('./platform-bench-worker.js', import.meta.url);

function run<T>(data: unknown): { worker: Worker; result: Promise<T> } {
  const worker = new Worker(WORKER, { workerData: data });
  const result = new Promise<T>((resolve, reject) => {
    worker.on('message', resolve);
    worker.on('error', reject);
  });
  return { worker, result };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function atomicsFloor(): Promise<number> {
  const flag = new SharedArrayBuffer(4);
  const pong = run({ job: 'atomics-pong', flag });
  const ping = run<{ trips: number }>({ job: 'atomics-ping', flag, durationMs: DURATION_MS });
  const { trips } = await ping.result;
  await pong.result;
  await Promise.all([ping.worker.terminate(), pong.worker.terminate()]);
  return trips / (DURATION_MS / 1000);
}

async function eventChannelTrips(): Promise<number> {
  const platform = EmbeddedPlatform.create(1024);
  for (const domid of [1, 2]) {
    platform.createDomain({ domid, name: `d${domid}`, pages: 16 });
    platform.unpauseDomain(domid);
  }
  const port = platform.allocateUnboundPort(1, 2);
  const pong = run<{ ready?: boolean }>({ job: 'evtchn-pong', descriptor: platform.descriptor, domid: 2, remoteDomid: 1, remotePort: port });
  await new Promise((resolve) => pong.worker.once('message', resolve));
  const ping = run<{ trips: number }>({ job: 'evtchn-ping', descriptor: platform.descriptor, domid: 1, port, durationMs: DURATION_MS });
  const { trips } = await ping.result;
  pong.worker.postMessage('stop');
  await Promise.all([ping.worker.terminate(), pong.worker.terminate()]);
  return trips / (DURATION_MS / 1000);
}

async function xenstoreReads(host: Host, inFlight: number): Promise<{ ring: number; socket: number }> {
  const start = await host.toolstack.createDomain({ name: `reader-${inFlight}-${Date.now()}`, pages: 64 });
  const ring = run<{ reads: number }>({ job: 'xenstore-ring-reads', descriptor: host.platform.descriptor, start, inFlight, durationMs: DURATION_MS });
  const ringReads = (await ring.result).reads;
  await ring.worker.terminate();
  const socket = run<{ reads: number }>({
    job: 'xenstore-socket-reads',
    socket: host.options.socket,
    path: `/local/domain/${start.domid}/name`,
    inFlight,
    durationMs: DURATION_MS,
  });
  const socketReads = (await socket.result).reads;
  await socket.worker.terminate();
  await host.toolstack.destroyDomain(start.domid);
  return { ring: ringReads / (DURATION_MS / 1000), socket: socketReads / (DURATION_MS / 1000) };
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

async function main(): Promise<void> {
  setLogLevel('warn');
  const floor: number[] = [];
  const trips: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    floor.push(await atomicsFloor());
    trips.push(await eventChannelTrips());
  }

  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-bench-'));
  const host = new Host({ socket: join(dir, 'socket'), frames: 8192 });
  await host.boot();
  const reads: Record<number, { ring: number[]; socket: number[] }> = { 1: { ring: [], socket: [] }, 16: { ring: [], socket: [] } };
  try {
    for (let i = 0; i < ROUNDS; i++) {
      for (const inFlight of [1, 16]) {
        const r = await xenstoreReads(host, inFlight);
        reads[inFlight]!.ring.push(r.ring);
        reads[inFlight]!.socket.push(r.socket);
      }
    }
  } finally {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }

  console.log(`embedded platform, ${cpus().length} cores, Node ${process.version}; each figure the median of ${ROUNDS} runs of ${DURATION_MS} ms`);
  console.log('');
  console.log('| measure | platform per s | baseline per s | ratio |');
  console.log('| --- | ---: | ---: | ---: |');
  console.log(`| event channel round trips between two workers (baseline: bare Atomics.wait/notify ping-pong) | ${fmt(median(trips))} | ${fmt(median(floor))} | ${(median(trips) / median(floor)).toFixed(2)} |`);
  for (const inFlight of [1, 16]) {
    const ring = median(reads[inFlight]!.ring);
    const socket = median(reads[inFlight]!.socket);
    console.log(`| xenstore READs over a domain ring, ${inFlight} in flight (baseline: the same over the Unix socket) | ${fmt(ring)} | ${fmt(socket)} | ${(ring / socket).toFixed(2)} |`);
  }
}

await main();
