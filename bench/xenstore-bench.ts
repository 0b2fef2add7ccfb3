/**
 * `npm run bench:xenstore`: throughput and latency of xenstored over its
 * Unix socket, each figure next to a baseline measured in the same run (a
 * bare Node socket server that frames and answers the same requests; see
 * echo-server.ts), reported as a ratio. And WRITE latency with 10,000
 * watches set elsewhere against 10, the daemon against itself.
 *
 * Servers run in their own processes, the load generator in this one, so
 * that on a two-core machine each side has a core.
 */
import { RunProgress } from '../shared/progress.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XsFrameDecoder, XsType, encodeMessage, nulStrings, type XsMessage } from '../shared/xs-wire.js';

/** Each figure is the median of this many alternating runs against the daemon and the baseline. */
const ROUNDS = 3;
const MEASURE_MS = Number(process.env['BENCH_MS'] ?? 2000);
const WARMUP_MS = 500;
const LATENCY_SAMPLES = 2000;
const DIRECTORY_CHILDREN = 10;
/** The watch-count row: WRITE latency with few and with many watches set, none on the written path. */
const FEW_WATCHES = 10;
const MANY_WATCHES = 10_000;
/** Alternating rounds of the watch-count row; each figure is the median of per-round medians. */
const WATCH_ROUNDS = 5;
const VALUE = 'v'.repeat(16);

/** A closed-loop client: one request in flight, the next sent when the reply arrives. */
class LoopClient {
  private readonly socket: Socket;
  private waiting: ((msg: XsMessage) => void) | undefined;
  onEvent: ((msg: XsMessage) => void) | undefined;
  private reqId = 0;

  private constructor(socket: Socket) {
    this.socket = socket;
    const decoder = new XsFrameDecoder(
      (msg) => {
        if (msg.type === XsType.WATCH_EVENT && this.onEvent) return this.onEvent(msg);
        const waiting = this.waiting;
        this.waiting = undefined;
        waiting?.(msg);
      },
      () => socket.destroy(),
    );
    socket.on('data', (chunk) => decoder.push(chunk));
  }

  static open(path: string): Promise<LoopClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.setNoDelay(true);
        resolve(new LoopClient(socket));
      });
    });
  }

  call(type: number, payload: Buffer, txId = 0): Promise<XsMessage> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.socket.write(encodeMessage(type, ++this.reqId, txId, payload));
    });
  }

  /** Sends every request at once; resolves once all are answered. */
  callMany(type: number, payloads: Buffer[]): Promise<void> {
    return new Promise((resolve) => {
      let left = payloads.length;
      const answered = () => {
        if (--left === 0) resolve();
        else this.waiting = answered;
      };
      this.waiting = answered;
      for (const payload of payloads) this.socket.write(encodeMessage(type, ++this.reqId, 0, payload));
    });
  }

  send(type: number, payload: Buffer): void {
    this.socket.write(encodeMessage(type, ++this.reqId, 0, payload));
  }

  close(): void {
    this.socket.destroy();
  }
}

interface Server {
  path: string;
  child: ChildProcess;
}

async function startServer(script: string, args: string[], path: string): Promise<Server> {
  const child = spawn(process.execPath, [script, ...args], { stdio: 'ignore' });
  for (let i = 0; i < 200; i++) {
    try {
      (await LoopClient.open(path)).close();
      return { path, child };
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
  throw new Error(`${script} did not start`);
}

async function stopServer(server: Server): Promise<void> {
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGTERM');
  await exited;
}

type Operation = (client: LoopClient, index: number) => Promise<unknown>;

/** Requests per second with `clients` closed-loop clients running `op`. */
async function throughput(path: string, clients: number, op: Operation): Promise<number> {
  const pool = await Promise.all(Array.from({ length: clients }, () => LoopClient.open(path)));
  let count = 0;
  let counting = false;
  let running = true;
  const loops = pool.map(async (client, index) => {
    while (running) {
      await op(client, index);
      if (counting) count++;
    }
  });
  await new Promise((resolve) => setTimeout(resolve, WARMUP_MS));
  counting = true;
  const start = process.hrtime.bigint();
  await new Promise((resolve) => setTimeout(resolve, MEASURE_MS));
  counting = false;
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  running = false;
  await Promise.all(loops);
  for (const client of pool) client.close();
  return count / elapsed;
}

const read: Operation = (c) => c.call(XsType.READ, nulStrings('/bench/value'));
const write: Operation = (c, i) => c.call(XsType.WRITE, nulStrings(`/bench/w${i}/value`, VALUE).subarray(0, -1));
const directory: Operation = (c) => c.call(XsType.DIRECTORY, nulStrings('/bench/dir'));

/** One read-modify-write transaction per call, each client on its own key. */
const transaction: Operation = async (c, i) => {
  for (;;) {
    const start = await c.call(XsType.TRANSACTION_START, nulStrings(''));
    const tx = Number(start.payload.toString('latin1', 0, start.payload.length - 1));
    await c.call(XsType.READ, nulStrings(`/bench/t${i}`), tx);
    await c.call(XsType.WRITE, nulStrings(`/bench/t${i}`, VALUE).subarray(0, -1), tx);
    const end = await c.call(XsType.TRANSACTION_END, nulStrings('T'), tx);
    if (end.type !== XsType.ERROR) return;
  }
};

/** The same number of framed round trips as one transaction, for the baseline. */
const fourRoundTrips: Operation = async (c) => {
  for (let i = 0; i < 4; i++) await c.call(XsType.READ, nulStrings('/bench/value'));
};

function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Microseconds from sending a WRITE to receiving the watch event it fires. */
async function watchLatency(path: string): Promise<number[]> {
  const watcher = await LoopClient.open(path);
  const writer = await LoopClient.open(path);
  let fired: (() => void) | undefined;
  watcher.onEvent = () => fired?.();
  await watcher.call(XsType.WATCH, nulStrings('/bench/watched', 'token'));
  await new Promise((resolve) => setTimeout(resolve, 50));
  const samples: number[] = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    const event = new Promise<void>((resolve) => (fired = resolve));
    const start = process.hrtime.bigint();
    writer.send(XsType.WRITE, nulStrings('/bench/watched', String(i)).subarray(0, -1));
    await event;
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  watcher.close();
  writer.close();
  return samples.sort((a, b) => a - b);
}

/** Microseconds per round trip to the echo server, the latency baseline. */
async function roundTripLatency(path: string): Promise<number[]> {
  const client = await LoopClient.open(path);
  const samples: number[] = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    const start = process.hrtime.bigint();
    await client.call(XsType.WRITE, nulStrings('/bench/watched', String(i)).subarray(0, -1));
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  client.close();
  return samples.sort((a, b) => a - b);
}

/**
 * Median microseconds from sending a WRITE to its reply while another client
 * holds `count` watches, all on paths the write does not touch: what the
 * watches cost a change they have nothing to do with.
 */
async function writeLatencyWithWatches(path: string, count: number): Promise<number> {
  const watcher = await LoopClient.open(path);
  watcher.onEvent = () => {};
  await watcher.callMany(
    XsType.WATCH,
    Array.from({ length: count }, (_, i) => nulStrings(`/bench/unrelated/w${i}`, 'token')),
  );
  const writer = await LoopClient.open(path);
  const samples: number[] = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    const start = process.hrtime.bigint();
    await writer.call(XsType.WRITE, nulStrings('/bench/watched-elsewhere', String(i)).subarray(0, -1));
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  writer.close();
  watcher.close();
  return median(samples);
}

/** The watch-count row: rounds alternate which of the two goes first, so that drift in the machine's load falls on both. */
async function watchCountLatency(path: string): Promise<{ few: number[]; many: number[]; ratios: number[] }> {
  const few: number[] = [];
  const many: number[] = [];
  const ratios: number[] = [];
  for (let round = 0; round < WATCH_ROUNDS; round++) {
    let f: number;
    let m: number;
    if (round % 2 === 0) {
      f = await writeLatencyWithWatches(path, FEW_WATCHES);
      m = await writeLatencyWithWatches(path, MANY_WATCHES);
    } else {
      m = await writeLatencyWithWatches(path, MANY_WATCHES);
      f = await writeLatencyWithWatches(path, FEW_WATCHES);
    }
    few.push(f);
    many.push(m);
    ratios.push(m / f);
  }
  return { few, many, ratios };
}

async function prepare(path: string): Promise<void> {
  const client = await LoopClient.open(path);
  await client.call(XsType.WRITE, nulStrings('/bench/value', VALUE).subarray(0, -1));
  for (let i = 0; i < DIRECTORY_CHILDREN; i++) await client.call(XsType.WRITE, nulStrings(`/bench/dir/child-${i}`, VALUE).subarray(0, -1));
  client.close();
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-bench-'));
  const here = fileURLToPath(new URL('.', import.meta.url));
  const daemonPath = join(dir, 'xenstored');
  const echoPath = join(dir, 'echo');
  const daemon = await startServer(join(here, '../bin/xenmesh.js'), ['xenstored', '--socket', daemonPath], daemonPath);
  const echo = await startServer(join(here, 'echo-server.js'), [echoPath], echoPath);
  try {
    await prepare(daemonPath);
    const rows: string[] = [];
    const ratios: number[] = [];
    // Four operations at two client counts, against xenstored and the echo baseline, each once per round.
    const progress = new RunProgress(4 * 2 * 2 * ROUNDS);
    for (const [name, op, baselineOp] of [
      ['READ', read, read],
      ['WRITE', write, write],
      ['DIRECTORY', directory, directory],
      ['transaction commit (start, read, write, end)', transaction, fourRoundTrips],
    ] as [string, Operation, Operation][]) {
      for (const clients of [1, 16]) {
        const oursRuns: number[] = [];
        const baseRuns: number[] = [];
        for (let round = 0; round < ROUNDS; round++) {
          oursRuns.push(await throughput(daemonPath, clients, op));
          progress.finished(`${name}, ${clients} clients, round ${round + 1}/${ROUNDS}: xenstored ${fmt(oursRuns.at(-1)!)} per s`);
          baseRuns.push(await throughput(echoPath, clients, baselineOp));
          progress.finished(`${name}, ${clients} clients, round ${round + 1}/${ROUNDS}: echo baseline ${fmt(baseRuns.at(-1)!)} per s`);
        }
        const ours = median(oursRuns);
        const base = median(baseRuns);
        const ratio = ours / base;
        ratios.push(ratio);
        rows.push(`| ${name} | ${clients} | ${fmt(ours)} | ${fmt(base)} | ${ratio.toFixed(2)} |`);
      }
    }
    const watchCount = await watchCountLatency(daemonPath);
    const watch = await watchLatency(daemonPath);
    const rtt = await roundTripLatency(echoPath);
    console.log(`xenstored over its Unix socket, ${cpus().length} cores, Node ${process.version}; each figure the median of ${ROUNDS} runs of ${MEASURE_MS} ms`);
    console.log('');
    console.log('| operation | clients | xenstored per s | echo baseline per s | ratio |');
    console.log('| --- | ---: | ---: | ---: | ---: |');
    for (const row of rows) console.log(row);
    console.log('');
    console.log('| latency (µs) | median | p99 |');
    console.log('| --- | ---: | ---: |');
    console.log(`| watch event: WRITE sent to WATCH_EVENT received | ${percentile(watch, 50).toFixed(0)} | ${percentile(watch, 99).toFixed(0)} |`);
    console.log(`| echo baseline: request to reply | ${percentile(rtt, 50).toFixed(0)} | ${percentile(rtt, 99).toFixed(0)} |`);
    console.log(`| ratio (baseline / watch) | ${(percentile(rtt, 50) / percentile(watch, 50)).toFixed(2)} | ${(percentile(rtt, 99) / percentile(watch, 99)).toFixed(2)} |`);
    console.log('');
    const range = (values: number[], digits: number) => `${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)}`;
    console.log(`| WRITE latency (µs), watches set on unrelated paths | ${fmt(FEW_WATCHES)} watches | ${fmt(MANY_WATCHES)} watches | ratio |`);
    console.log('| --- | ---: | ---: | ---: |');
    console.log(
      `| median of ${WATCH_ROUNDS} alternating rounds (range) | ${median(watchCount.few).toFixed(0)} (${range(watchCount.few, 0)}) | ` +
        `${median(watchCount.many).toFixed(0)} (${range(watchCount.many, 0)}) | ${median(watchCount.ratios).toFixed(2)} (${range(watchCount.ratios, 2)}) |`,
    );
    console.log('');
    console.log(`lowest throughput ratio: ${Math.min(...ratios).toFixed(2)} (aim: at least 0.50)`);
    console.log(`WRITE latency with ${fmt(MANY_WATCHES)} watches against ${fmt(FEW_WATCHES)}: ${median(watchCount.ratios).toFixed(2)} (aim: at most 1.50)`);
  } finally {
    await stopServer(daemon);
    await stopServer(echo);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
