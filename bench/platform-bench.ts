/**
 * `npm run bench:platform`: the embedded hypervisor's event channels and
 * xenstore over a domain's ring, each next to a baseline measured in the
 * same run:
 *
 * - event channel round trips between two workers, against two floors:
 *   two threads handing a turn back and forth with bare blocking
 *   Atomics.wait/notify (the floor any shared-memory signalling can
 *   reach), and the same hand-off with Atomics.waitAsync on both sides
 *   (the floor for a worker that keeps its event loop, as every worker of
 *   the stack does);
 * - xenstore READs over a domain's ring, against the same READs from the
 *   same daemon over its Unix socket.
 *
 * Rounds: BENCH_ROUNDS (default 3, at least 3) rounds, each running every
 * measure of a comparison once in an order rotated from round to round.
 * Figures are medians with their range (min–max); ratios are taken within
 * a round and given as the median and range of those. BENCH_MS is the
 * length of one run (default 2000).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { setLogLevel } from '../shared/log.js';
import { RunProgress } from '../shared/progress.js';
import { Host } from '../host/machine/host.js';
import type { StartInfo } from '../host/toolstack/domain-builder.js';
import { rotated, spread, withRange } from './rounds.js';

const DURATION_MS = Number(process.env['BENCH_MS'] ?? 2000);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 3);
/** The reads in flight xenstore's ring and socket are measured at. */
const IN_FLIGHT_DEPTHS = [1, 16] as const;
/** Fewer rounds give no median worth the name and no range. */
const MIN_ROUNDS = 3;
const WORKER = new URL('./platform-bench-worker.js', import.meta.url);

function run<T>(data: unknown): { worker: Worker; result: Promise<T> } {
  const worker = new Worker(WORKER, { workerData: data });
  const result = new Promise<T>((resolve, reject) => {
    worker.on('message', resolve);
    worker.on('error', reject);
  });
  return { worker, result };
}

/**
 * Runs every measure once per round, the order rotated from round to
 * round, so that none always goes first and a burst of load on the machine
 * falls on several of them; returns each one's figures in round order.
 */
async function interleaved<K extends string>(measures: Record<K, () => Promise<number>>, progress: RunProgress, what: string): Promise<Record<K, number[]>> {
  const names = Object.keys(measures) as K[];
  const figures = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<K, number[]>;
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of rotated(names, round)) {
      const figure = await measures[name]();
      figures[name].push(figure);
      progress.finished(`${what}, ${name}, round ${round + 1}/${ROUNDS}: ${fmt(figure)} per s`);
    }
  }
  return figures;
}

/** `of`'s figure over `to`'s within each round. */
const roundRatios = (of: number[], to: number[]) => of.map((value, i) => value / to[i]!);

/** Two threads ping-ponging a turn with blocking Atomics.wait/notify: round trips per second. */
async function atomicsFloor(): Promise<number> {
  return pingPong('atomics-ping', 'atomics-pong');
}

/** The same with Atomics.waitAsync on both sides, each worker keeping its event loop. */
async function atomicsAsyncFloor(): Promise<number> {
  return pingPong('atomics-async-ping', 'atomics-async-pong');
}

async function pingPong(pingJob: string, pongJob: string): Promise<number> {
  const flag = new SharedArrayBuffer(4);
  const pong = run({ job: pongJob, flag });
  const ping = run<{ trips: number }>({ job: pingJob, flag, durationMs: DURATION_MS });
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

/**
 * Runs `measure` with a fresh reader domain, destroyed after: the reader
 * worker closes the domain's xenstore ring when done, so a ring serves one
 * run.
 */
async function withReaderDomain(host: Host, measure: (start: StartInfo) => Promise<number>): Promise<number> {
  const start = await host.toolstack.createDomain({ name: `reader-${nextReader++}`, pages: 64 });
  try {
    return await measure(start);
  } finally {
    await host.toolstack.destroyDomain(start.domid);
  }
}
let nextReader = 0;

/** READs per second of the reader domain's name over its own ring. */
async function ringReads(host: Host, inFlight: number): Promise<number> {
  return withReaderDomain(host, async (start) => {
    const ring = run<{ reads: number }>({ job: 'xenstore-ring-reads', descriptor: host.platform.descriptor, start, inFlight, durationMs: DURATION_MS });
    const { reads } = await ring.result;
    await ring.worker.terminate();
    return reads / (DURATION_MS / 1000);
  });
}

/** READs per second of the same node over the daemon's Unix socket. */
async function socketReads(host: Host, inFlight: number): Promise<number> {
  return withReaderDomain(host, async (start) => {
    const socket = run<{ reads: number }>({
      job: 'xenstore-socket-reads',
      socket: host.options.socket,
      path: `/local/domain/${start.domid}/name`,
      inFlight,
      durationMs: DURATION_MS,
    });
    const { reads } = await socket.result;
    await socket.worker.terminate();
    return reads / (DURATION_MS / 1000);
  });
}

/** READs per second over a reader domain's ring and over the socket, interleaved. */
async function xenstoreReads(host: Host, inFlight: number, progress: RunProgress): Promise<{ ring: number[]; socket: number[] }> {
  return interleaved({ ring: () => ringReads(host, inFlight), socket: () => socketReads(host, inFlight) }, progress, `xenstore reads, ${inFlight} in flight`);
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
const ratio = (n: number) => n.toFixed(2);

function row(measure: string, platform: number[], baseline: number[]): string {
  return `| ${measure} | ${withRange(spread(platform), fmt)} | ${withRange(spread(baseline), fmt)} | ${withRange(spread(roundRatios(platform, baseline)), ratio)} |`;
}

async function main(): Promise<void> {
  setLogLevel('warn');
  if (!Number.isInteger(ROUNDS) || ROUNDS < MIN_ROUNDS) {
    throw new Error(`BENCH_ROUNDS=${process.env['BENCH_ROUNDS']}: at least ${MIN_ROUNDS} rounds are needed, so that every figure is a median with a range rather than a single run`);
  }
  // Three signalling measures, then ring and socket reads at two depths, each once per round.
  const progress = new RunProgress(ROUNDS * (3 + 2 * IN_FLIGHT_DEPTHS.length));
  const signalling = await interleaved({ evtchn: eventChannelTrips, blocking: atomicsFloor, async: atomicsAsyncFloor }, progress, 'signalling');

  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-bench-'));
  const host = new Host({ socket: join(dir, 'socket'), frames: 8192 });
  const reads: Record<number, { ring: number[]; socket: number[] }> = {};
  try {
    await host.boot();
    for (const inFlight of IN_FLIGHT_DEPTHS) reads[inFlight] = await xenstoreReads(host, inFlight, progress);
  } finally {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }

  console.log(
    `embedded platform, ${cpus().length} cores, Node ${process.version}; each figure the median (min–max) of ${ROUNDS} interleaved rounds ` +
      `of ${DURATION_MS} ms runs, the order rotated each round; ratios taken per round`,
  );
  console.log('');
  console.log('| measure | platform per s | baseline per s | ratio |');
  console.log('| --- | ---: | ---: | ---: |');
  console.log(row('event channel round trips between two workers (baseline: bare blocking Atomics.wait/notify ping-pong)', signalling.evtchn, signalling.blocking));
  console.log(row('event channel round trips between two workers (baseline: bare Atomics.waitAsync/notify ping-pong)', signalling.evtchn, signalling.async));
  for (const inFlight of [1, 16]) {
    console.log(row(`xenstore READs over a domain ring, ${inFlight} in flight (baseline: the same over the Unix socket)`, reads[inFlight]!.ring, reads[inFlight]!.socket));
  }
}

await main();
