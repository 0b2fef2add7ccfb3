/**
 * `npm run bench:blk`: the whole block stack (blkfront → ring → blkback →
 * I/O pool → image file), driven from inside the guest's kernel worker
 * (blk-bench-kernel.ts), next to three baselines measured in the same run
 * on the same image file:
 *
 * - Node's own fs (fs.read / fs.write, a pool of buffers, `depth`
 *   closed-loop workers) in this process;
 * - fio with io_uring (libaio if io_uring does not work here), buffered;
 * - nbdkit's file plugin serving the image on a Unix socket, driven by
 *   fio's nbd engine.
 *
 * The stack runs as two candidates: `ours` with the backend's default I/O
 * engine, and `ours-pool` with XENMESH_IO_ENGINE=pool in the environment
 * its workers start with, which sends every request through the piscina
 * pool.
 *
 * Workloads: 4 KiB random reads and writes at depths 1, 32 and 128, and
 * 1 MiB sequential reads and writes at depth 4; each with the image on
 * tmpfs (what the stack itself costs) and on a disk-backed file system.
 * The image is filled once before anything is measured, so it is wholly in
 * the page cache for every run; after each write run it is synced, so that
 * every run starts with no dirty pages.
 *
 * Rounds: a workload is measured in BENCH_ROUNDS rounds (at least 3); each
 * round runs every candidate once, in an order rotated by one from round to
 * round, so that no candidate always runs first or right after a write
 * flush, and a burst of load on the machine hits several candidates rather
 * than all runs of one. Every figure is the median over the rounds with the
 * range (min–max); a ratio (ours / fs, ...) is taken within each round,
 * between runs seconds apart, and then given as the median and range of
 * those per-round ratios.
 *
 * CPU time per request is that of every process taking part, over the
 * measured window: for ours the whole host process (every worker: the
 * guest's load generator, blkfront, blkback, the I/O pool, xenstored);
 * for fs this process; for fio what fio and its job processes used, as
 * their parent sees it when they exit (this includes io_uring's kernel
 * workers, which fio's own usr_cpu/sys_cpu do not); for nbdkit that plus
 * nbdkit's own from /proc/<pid>/stat. Both stacks live in this process,
 * so the CPU time of ours, ours-pool and fs includes the other stack's
 * idle threads (asleep: next to nothing).
 *
 * `--json` prints the results on stdout as one JSON document (the tables
 * go to stderr with the progress lines). npm writes a banner of its own to
 * stdout first: `npm run -s bench:blk -- --json` leaves stdout to the
 * document alone.
 *
 *
 *   { "method": { cores, node, fioEngine, imageMiB, seconds, warmupSeconds,
 *                 rounds, candidates, skipped: [{ candidate, reason }] },
 *     "results": [ one object per (workload, location, candidate):
 *       { workload, location, candidate, unit: "IOPS" | "MB/s",
 *         rounds: [ { round, position, rate, cpuUsPerRequest,
 *                     switchesPerRequest, ratioToFs,
 *                     operations, bytes, seconds } ],
 *         rate, cpuUsPerRequest, switchesPerRequest, ratioToFs } ] }
 *
 * `rate` is in `unit`; `position` is where in its round the run came (0:
 * first). Each summary is { median, min, max } over the rounds;
 * switchesPerRequest is null where it is not known (fio, nbdkit), and
 * ratioToFs (this candidate's rate over fs's in the same round) is null
 * for fs itself or when fs was not run.
 *
 * A candidate whose tool is missing (fio; nbdkit, or a fio without the nbd
 * engine) is skipped with a note, and listed under method.skipped.
 *
 * Environment: BENCH_SECONDS (measured seconds per run, default 2.5),
 * BENCH_WARMUP (seconds, default 0.5), BENCH_ROUNDS (default 3),
 * BENCH_IMAGE_MIB (default 1024), BENCH_LOCATIONS (tmpfs,disk),
 * BENCH_CANDIDATES (ours,ours-pool,fs,fio,nbdkit), BENCH_ONLY (a regular
 * expression on the workload's name).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  read,
  readFileSync,
  rmSync,
  statfsSync,
  write,
  writeSync,
} from 'node:fs';
import { connect } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setLogLevel } from '../shared/log.js';
import { ByteProgress, RunProgress } from '../shared/progress.js';
import { Host } from '../host/machine/host.js';
import { devicePaths, diskDevice } from '../host/toolstack/devices.js';
import { readStateAt, waitForState } from '../xenbus/read.js';
import { XenbusState, stateName } from '../xenbus/state.js';
import { RESULT_NODE, WORKLOAD_NODE, closedLoop, type Measured, type Workload, type WorkloadResult } from './blk-bench-kernel.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? 2.5);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 3);
/** Fewer rounds give no median worth the name and no range. */
const MIN_ROUNDS = 3;
const JSON_OUTPUT = process.argv.includes('--json');
const WARMUP_SECONDS = Number(process.env['BENCH_WARMUP'] ?? 0.5);
const IMAGE_BYTES = Number(process.env['BENCH_IMAGE_MIB'] ?? 1024) * 2 ** 20;
const ONLY = process.env['BENCH_ONLY'] ? new RegExp(process.env['BENCH_ONLY']) : undefined;
const KIB = 1024;
const MIB = 1024 * 1024;
/** tmpfs's f_type (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;
/** Machine memory and the guest's: enough for its data pages at depth 128 and for 1 MiB requests. */
const FRAMES = 65536;
const GUEST_PAGES = 8192;
const DRIVER_PAGES = 1024;
const CONNECT_TIMEOUT_MS = 15_000;

type Candidate = 'ours' | 'ours-pool' | 'fs' | 'fio' | 'nbdkit';
const ALL_CANDIDATES: Candidate[] = ['ours', 'ours-pool', 'fs', 'fio', 'nbdkit'];
const WANTED_CANDIDATES = (process.env['BENCH_CANDIDATES']?.split(',') ?? ALL_CANDIDATES) as Candidate[];
/** The candidates that run the stack, and the I/O engine each asks the backend for (undefined: its default). */
const STACK_ENGINES: Partial<Record<Candidate, string | undefined>> = { ours: undefined, 'ours-pool': 'pool' };
const isStack = (c: Candidate) => c in STACK_ENGINES;

interface Spec {
  readonly name: string;
  readonly pattern: 'random' | 'sequential';
  readonly op: 'read' | 'write';
  readonly blockBytes: number;
  readonly depth: number;
  /** What the table shows: requests or megabytes (10^6 bytes) per second. */
  readonly unit: 'IOPS' | 'MB/s';
}

const WORKLOADS: Spec[] = [
  ...(['read', 'write'] as const).flatMap((op) =>
    [1, 32, 128].map((depth): Spec => ({ name: `4 KiB random ${op}, depth ${depth}`, pattern: 'random', op, blockBytes: 4 * KIB, depth, unit: 'IOPS' })),
  ),
  ...(['read', 'write'] as const).map((op): Spec => ({ name: `1 MiB sequential ${op}, depth 4`, pattern: 'sequential', op, blockBytes: MIB, depth: 4, unit: 'MB/s' })),
].filter((spec) => !ONLY || ONLY.test(spec.name));

interface Location {
  readonly name: string;
  readonly dir: string;
}

/** What one candidate did in one run. */
interface Figure {
  readonly operations: number;
  readonly bytes: number;
  readonly seconds: number;
  /** CPU seconds of every process taking part. */
  readonly cpuSeconds: number;
  /** Of cpuSeconds, in the kernel (ours and fs). */
  readonly systemSeconds?: number;
  /** Context switches of the process's threads per request (ours and fs). */
  readonly switchesPerRequest?: number;
  /** fio's own usr_cpu + sys_cpu, for comparison (fio and nbdkit runs). */
  readonly fioReportedCpuSeconds?: number;
}

// ---- cleanup -------------------------------------------------------------------------

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();
/** Hosts booted and not yet shut down: the signal handler shuts them down. */
const liveHosts = new Set<Host>();
/** A signal came: the handler cleans up and exits; the main flow just unwinds. */
let aborting = false;

/** Kills every process we started, and whatever they started (each leads its own process group). */
function killChildren(): void {
  for (const child of children) {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) continue;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function removeTempDirs(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

function tempDir(parent: string): string {
  const dir = mkdtempSync(join(parent, 'xenmesh-blk-'));
  tempDirs.add(dir);
  return dir;
}

process.on('exit', () => {
  killChildren();
  removeTempDirs();
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`\n${signal}: cleaning up\n`);
    aborting = true;
    killChildren();
    const hosts = [...liveHosts];
    liveHosts.clear();
    const stopped = Promise.all(hosts.map((host) => host.shutdown().catch(() => {})));
    void Promise.race([stopped, new Promise((resolve) => setTimeout(resolve, 10_000))]).then(() => {
      removeTempDirs();
      process.exit(130);
    });
  });
}

interface Exited {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Starts a process in a group of its own (so that it and its children can be killed together), tracked for cleanup. */
function start(command: string, args: string[]): { child: ChildProcess; exited: Promise<Exited> } {
  const child = spawn(command, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<Exited>((resolve, reject) => {
    child.once('error', (err) => {
      children.delete(child);
      reject(err);
    });
    child.once('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, exited };
}

async function stop(process_: { child: ChildProcess; exited: Promise<Exited> }): Promise<void> {
  const { child } = process_;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, 3000);
  await process_.exited.catch(() => {});
  clearTimeout(timer);
}

// ---- tools ---------------------------------------------------------------------------

/** Runs a tool to check it is there; a clear message if it is not. */
function requireTool(command: string, args: string[], pkg: string): string {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.error) {
    const code = (result.error as NodeJS.ErrnoException).code;
    throw new Error(`${command} is ${code === 'ENOENT' ? 'not installed' : `not usable (${code})`}: apt-get install -y ${pkg}`);
  }
  if (result.status !== 0) throw new Error(`\`${command} ${args.join(' ')}\` failed (exit ${result.status}): ${result.stderr.trim()}`);
  return `${result.stdout}${result.stderr}`;
}

const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

/** utime + stime of a live process, all its threads, in seconds. */
function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of proc(5), counted from field 3 (state) here.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/**
 * Runs fio under a shell that, once fio has exited and been reaped,
 * reports its own cutime and cstime: what fio and every process and
 * thread under it used (fio forks its jobs; io_uring's kernel workers
 * are threads of the job).
 */
async function fio(args: string[], dir: string): Promise<{ json: FioJob; cpuSeconds: number }> {
  const output = join(dir, 'fio.json');
  rmSync(output, { force: true });
  const script = 'fio "$@"; rc=$?; read -r stat < /proc/$$/stat; echo "CHILDREN-CPU ${stat##*) }" >&2; exit $rc';
  const { exited } = start('bash', ['-c', script, 'fio', ...args, '--output-format=json', `--output=${output}`]);
  const result = await exited;
  const text = existsSync(output) ? readFileSync(output, 'utf8') : '';
  const brace = text.indexOf('{');
  if (result.code !== 0 || brace < 0) {
    throw new Error(`fio ${args.join(' ')} failed (exit ${result.code ?? result.signal}): ${`${result.stdout}${result.stderr}${text}`.trim().slice(0, 2000)}`);
  }
  const report = JSON.parse(text.slice(brace)) as { jobs: FioJob[] };
  const job = report.jobs[0];
  if (!job) throw new Error('fio reported no job');
  if (job.error !== 0) throw new Error(`fio's job failed with error ${job.error}`);
  const marker = /CHILDREN-CPU (.*)/.exec(result.stderr);
  if (!marker) throw new Error('could not read the CPU time fio used');
  const fields = marker[1]!.trim().split(' ');
  // cutime and cstime: fields 16 and 17 of proc(5), counted from field 3 here.
  return { json: job, cpuSeconds: (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS };
}

interface FioJob {
  readonly error: number;
  readonly job_runtime: number;
  readonly usr_cpu: number;
  readonly sys_cpu: number;
  readonly read: { readonly total_ios: number; readonly io_bytes: number };
  readonly write: { readonly total_ios: number; readonly io_bytes: number };
}

function fioArgs(spec: Spec): string[] {
  const rw = spec.pattern === 'random' ? `rand${spec.op}` : spec.op;
  return [
    '--name=bench',
    `--rw=${rw}`,
    `--bs=${spec.blockBytes}`,
    `--iodepth=${spec.depth}`,
    `--runtime=${Math.round(SECONDS * 1000)}ms`,
    '--time_based',
    // Uniformly random offsets, each drawn afresh, as the other candidates draw them.
    '--norandommap',
    '--randrepeat=0',
  ];
}

function fioFigure(job: FioJob, cpuSeconds: number): Figure {
  const seconds = job.job_runtime / 1000;
  return {
    operations: job.read.total_ios + job.write.total_ios,
    bytes: job.read.io_bytes + job.write.io_bytes,
    seconds,
    cpuSeconds,
    fioReportedCpuSeconds: ((job.usr_cpu + job.sys_cpu) / 100) * seconds,
  };
}

/** io_uring if fio can use it here (a kernel or seccomp policy may refuse it), else libaio. */
async function pickEngine(dir: string): Promise<string> {
  const probe = join(dir, 'probe.img');
  const fd = openSync(probe, 'w');
  writeSync(fd, Buffer.alloc(MIB, 1));
  closeSync(fd);
  try {
    await fio(['--name=probe', `--filename=${probe}`, '--ioengine=io_uring', '--rw=randread', '--bs=4k', '--runtime=100ms', '--time_based'], dir);
    return 'io_uring';
  } catch (err) {
    process.stderr.write(`io_uring does not work here (${(err as Error).message.split('\n')[0]}); using libaio\n`);
    return 'libaio';
  } finally {
    rmSync(probe, { force: true });
  }
}

// ---- the image -----------------------------------------------------------------------

/** A disk-backed directory for temp files: whichever of /var/tmp and /tmp is not tmpfs. */
function diskBackedDir(): string {
  for (const dir of ['/var/tmp', '/tmp', tmpdir()]) {
    try {
      if (statfsSync(dir).type !== TMPFS_MAGIC) return dir;
    } catch {
      // not there
    }
  }
  throw new Error('neither /var/tmp nor /tmp is on a disk-backed file system');
}

/** Creates the image sparse, then writes all of it once (so that reads hit real data) and syncs it. */
function makeImage(path: string): void {
  const fd = openSync(path, 'wx', 0o600);
  try {
    ftruncateSync(fd, IMAGE_BYTES);
    const chunk = randomFillSync(Buffer.alloc(MIB));
    const progress = new ByteProgress(`filling ${path}`, IMAGE_BYTES);
    for (let offset = 0; offset < IMAGE_BYTES; offset += MIB) {
      chunk.writeUInt32LE(offset / MIB, 0);
      const length = Math.min(MIB, IMAGE_BYTES - offset);
      writeSync(fd, chunk, 0, length, offset);
      progress.update(offset + length);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function syncImage(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** How much of the image is in the page cache (util-linux's fincore), if it can tell. */
function cachedPercent(path: string): number | undefined {
  const result = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' });
  const bytes = Number(result.stdout?.trim());
  return result.status === 0 && Number.isFinite(bytes) ? (100 * bytes) / IMAGE_BYTES : undefined;
}

// ---- the candidates ------------------------------------------------------------------

interface Stack {
  readonly host: Host;
  readonly guest: number;
  readonly device: string;
}

/**
 * An embedded host: dom0 with xenstored, a driver domain serving the image,
 * a guest with it as xvda. With an I/O engine, XENMESH_IO_ENGINE holds it
 * while the host and its domains start: each worker takes a copy of the
 * environment when it starts, so the backend sees it and the next host
 * does not.
 */
async function bootStack(image: string, dir: string, ioEngine: string | undefined): Promise<Stack> {
  if (ioEngine === undefined) return bootHost(image, dir);
  process.env['XENMESH_IO_ENGINE'] = ioEngine;
  try {
    return await bootHost(image, dir);
  } finally {
    delete process.env['XENMESH_IO_ENGINE'];
  }
}

async function bootHost(image: string, dir: string): Promise<Stack> {
  const host = new Host({ socket: join(dir, 'xenstored.sock'), frames: FRAMES, kernelModule: new URL('./blk-bench-kernel.js', import.meta.url) });
  liveHosts.add(host);
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: DRIVER_PAGES }, { backDrivers: ['vbd'] });
  const guest = await host.startDomain({ name: 'guest', pages: GUEST_PAGES }, { frontDrivers: ['vbd'] });
  const spec = diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev: 'xvda', target: image });
  const paths = devicePaths(spec);
  await host.plugDevice(spec);
  const [front, back] = await Promise.all([
    waitForState(host.xenstore, `${paths.frontend}/state`, [XenbusState.Connected], CONNECT_TIMEOUT_MS),
    waitForState(host.xenstore, `${paths.backend}/state`, [XenbusState.Connected], CONNECT_TIMEOUT_MS),
  ]);
  if (front === undefined || back === undefined) {
    const error = await host.xenstore.tryRead(`/local/domain/${driver.domid}/error/backend/vbd/${guest.domid}/${spec.devid}/error`).catch(() => undefined);
    throw new Error(
      `the disk did not connect within ${CONNECT_TIMEOUT_MS} ms (frontend ${stateName(await readStateAt(host.xenstore, `${paths.frontend}/state`))}, ` +
        `backend ${stateName(await readStateAt(host.xenstore, `${paths.backend}/state`))})${error ? `: ${error}` : ''}`,
    );
  }
  return { host, guest: guest.domid, device: String(spec.devid) };
}

/** Shuts down every host still up (unless a signal handler took them over). */
async function shutdownHosts(): Promise<void> {
  const hosts = [...liveHosts];
  liveHosts.clear();
  await Promise.all(hosts.map((host) => host.shutdown().catch(() => {})));
}

let nextId = 0;

/** Asks the guest to run the workload on its disk and waits for what it measured. */
async function runOurs(stack: Stack, spec: Spec): Promise<Figure> {
  const xs = stack.host.xenstore;
  const home = `/local/domain/${stack.guest}`;
  const workload: Workload = {
    id: `${process.pid}-${nextId++}`,
    device: stack.device,
    pattern: spec.pattern,
    op: spec.op,
    blockBytes: spec.blockBytes,
    depth: spec.depth,
    warmupSeconds: WARMUP_SECONDS,
    seconds: SECONDS,
  };
  const timeoutMs = (SECONDS + WARMUP_SECONDS) * 1000 + 30_000;
  const watcher = await xs.watch(`${home}/${RESULT_NODE}`);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void watcher.close().catch(() => {});
  }, timeoutMs);
  try {
    await xs.write(`${home}/${WORKLOAD_NODE}`, JSON.stringify(workload));
    for await (const _event of watcher) {
      const text = await xs.tryRead(`${home}/${RESULT_NODE}`);
      if (!text) continue;
      const result = JSON.parse(text) as WorkloadResult;
      if (result.id !== workload.id) continue;
      if ('error' in result) throw new Error(`the guest failed the workload: ${result.error}`);
      return measuredFigure(result);
    }
    throw new Error(timedOut ? `the guest did not answer within ${timeoutMs} ms` : 'the xenstore connection closed');
  } finally {
    clearTimeout(timer);
    await watcher.close().catch(() => {});
  }
}

function measuredFigure(m: Measured): Figure {
  return {
    operations: m.operations,
    bytes: m.bytes,
    seconds: m.elapsedMs / 1000,
    cpuSeconds: (m.cpuUserUs + m.cpuSystemUs) / 1e6,
    systemSeconds: m.cpuSystemUs / 1e6,
    switchesPerRequest: m.operations > 0 ? m.contextSwitches / m.operations : NaN,
  };
}

/** Node's fs in this process: fs.read / fs.write on one descriptor, a buffer per worker. */
async function runFs(image: string, spec: Spec): Promise<Figure> {
  const fd = openSync(image, 'r+');
  try {
    const buffers = Array.from({ length: spec.depth }, () => randomFillSync(Buffer.alloc(spec.blockBytes)));
    const op = (worker: number, offset: number) =>
      new Promise<void>((resolve, reject) => {
        const done = (err: NodeJS.ErrnoException | null) => (err ? reject(err) : resolve());
        if (spec.op === 'read') read(fd, buffers[worker]!, 0, spec.blockBytes, offset, done);
        else write(fd, buffers[worker]!, 0, spec.blockBytes, offset, done);
      });
    const measured = await closedLoop({ ...spec, warmupSeconds: WARMUP_SECONDS, seconds: SECONDS }, IMAGE_BYTES, op);
    return measuredFigure(measured);
  } finally {
    closeSync(fd);
  }
}

async function runFio(engine: string, image: string, spec: Spec, dir: string): Promise<Figure> {
  const { json, cpuSeconds } = await fio([...fioArgs(spec), `--ioengine=${engine}`, `--filename=${image}`, '--direct=0', '--invalidate=0'], dir);
  return fioFigure(json, cpuSeconds);
}

interface Nbdkit {
  readonly process: { child: ChildProcess; exited: Promise<Exited> };
  readonly socket: string;
}

/** nbdkit's file plugin serving the image on a Unix socket; resolves once it accepts connections. */
async function startNbdkit(image: string, dir: string): Promise<Nbdkit> {
  const socket = join(dir, 'nbdkit.sock');
  const process_ = start('nbdkit', ['--foreground', '--exit-with-parent', '--unix', socket, 'file', image]);
  let exited: Exited | undefined;
  let failed: Error | undefined;
  process_.exited.then(
    (e) => (exited = e),
    (err: Error) => (failed = err),
  );
  for (let i = 0; i < 200; i++) {
    if (failed) throw new Error(`nbdkit did not start: ${failed.message}`);
    if (exited) throw new Error(`nbdkit exited at once (${exited.code ?? exited.signal}): ${exited.stderr.trim()}`);
    if (existsSync(socket)) {
      const ok = await new Promise<boolean>((resolve) => {
        const probe = connect(socket);
        probe.once('connect', () => {
          probe.destroy();
          resolve(true);
        });
        probe.once('error', () => resolve(false));
      });
      if (ok) return { process: process_, socket };
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  await stop(process_);
  throw new Error('nbdkit did not listen on its socket within 5 s');
}

async function runNbdkit(nbdkit: Nbdkit, spec: Spec, dir: string): Promise<Figure> {
  const pid = nbdkit.process.child.pid!;
  const before = processCpuSeconds(pid);
  const { json, cpuSeconds } = await fio([...fioArgs(spec), '--ioengine=nbd', `--uri=nbd+unix:///?socket=${nbdkit.socket}`], dir);
  const server = processCpuSeconds(pid) - before;
  return fioFigure(json, cpuSeconds + server);
}

// ---- rounds and their summaries --------------------------------------------------------

/** One run of one candidate, and where in its round it came. */
interface Run {
  readonly round: number;
  readonly position: number;
  readonly figure: Figure;
}

interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
}

/** Per workload, per candidate: its runs, one per round, in round order. */
type Results = Map<string, Partial<Record<Candidate, Run[]>>>;

const rate = (spec: Spec, f: Figure) => (spec.unit === 'IOPS' ? f.operations / f.seconds : f.bytes / 1e6 / f.seconds);
const cpuPerRequest = (f: Figure) => (f.operations > 0 ? (f.cpuSeconds * 1e6) / f.operations : NaN);

function median(sorted: number[]): number {
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: median(sorted), min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

/** The candidates in the order of round `round`: rotated by one each round. */
function rotated<T>(items: readonly T[], round: number): T[] {
  const shift = round % items.length;
  return [...items.slice(shift), ...items.slice(0, shift)];
}

/** `of`'s rate over `to`'s, taken within each round (undefined unless both ran in every round). */
function roundRatios(spec: Spec, of: Run[] | undefined, to: Run[] | undefined): number[] | undefined {
  if (!of || !to || of.length !== to.length) return undefined;
  return of.map((run, i) => rate(spec, run.figure) / rate(spec, to[i]!.figure));
}

// ---- the run -------------------------------------------------------------------------

function describe(spec: Spec, candidate: Candidate, f: Figure): string {
  const extra =
    f.fioReportedCpuSeconds !== undefined
      ? ` (fio's own usr+sys: ${((f.fioReportedCpuSeconds * 1e6) / f.operations).toFixed(1)} µs)`
      : f.systemSeconds !== undefined
        ? ` (${((100 * f.systemSeconds) / f.cpuSeconds).toFixed(0)}% in the kernel; ${f.switchesPerRequest!.toFixed(1)} context switches per request)`
        : '';
  return `${candidate.padEnd(9)} ${fmt(rate(spec, f)).padStart(9)} ${spec.unit}, ${cpuPerRequest(f).toFixed(1)} µs CPU per request${extra}`;
}

/** What a location's runs need: the image, and the servers booted for it. */
interface Bench {
  readonly image: string;
  readonly control: string;
  readonly engine: string;
  readonly stacks: Partial<Record<Candidate, Stack>>;
  readonly nbdkit?: Nbdkit;
}

async function runCandidate(bench: Bench, candidate: Candidate, spec: Spec): Promise<Figure> {
  switch (candidate) {
    case 'ours':
    case 'ours-pool':
      return runOurs(bench.stacks[candidate]!, spec);
    case 'fs':
      return runFs(bench.image, spec);
    case 'fio':
      return runFio(bench.engine, bench.image, spec, bench.control);
    case 'nbdkit':
      return runNbdkit(bench.nbdkit!, spec, bench.control);
  }
}

/** Counts every run of the benchmark, set once the candidates and locations are known. */
let runProgress: RunProgress;

/** Every round of one workload: each candidate once per round, the order rotated from round to round. */
async function measureWorkload(bench: Bench, candidates: Candidate[], spec: Spec, location: Location): Promise<Partial<Record<Candidate, Run[]>>> {
  const runs: Partial<Record<Candidate, Run[]>> = {};
  for (let round = 0; round < ROUNDS; round++) {
    const order = rotated(candidates, round);
    for (const [position, candidate] of order.entries()) {
      const figure = await runCandidate(bench, candidate, spec);
      (runs[candidate] ??= []).push({ round, position, figure });
      runProgress.finished(`${location.name}, ${spec.name}, round ${round + 1}/${ROUNDS}: ${describe(spec, candidate, figure)}`);
      // Every run starts with no dirty pages.
      if (spec.op === 'write') syncImage(bench.image);
    }
  }
  return runs;
}

async function measureLocation(location: Location, candidates: Candidate[], engine: string): Promise<Results> {
  const dir = tempDir(location.dir);
  const control = tempDir(tmpdir());
  const image = join(dir, 'disk.img');
  const began = Date.now();
  makeImage(image);
  const cached = cachedPercent(image);
  process.stderr.write(
    `${location.name}: ${image}, ${IMAGE_BYTES / MIB} MiB, filled and synced in ${((Date.now() - began) / 1000).toFixed(1)} s` +
      `${cached === undefined ? '' : `, ${cached.toFixed(0)}% in the page cache`}\n`,
  );
  const results: Results = new Map();
  const stacks: Partial<Record<Candidate, Stack>> = {};
  let nbdkit: Nbdkit | undefined;
  try {
    for (const candidate of candidates.filter(isStack)) {
      const stackDir = join(control, candidate);
      mkdirSync(stackDir);
      stacks[candidate] = await bootStack(image, stackDir, STACK_ENGINES[candidate]);
    }
    if (candidates.includes('nbdkit')) nbdkit = await startNbdkit(image, control);
    const bench: Bench = { image, control, engine, stacks, ...(nbdkit ? { nbdkit } : {}) };
    for (const spec of WORKLOADS) results.set(spec.name, await measureWorkload(bench, candidates, spec, location));
  } finally {
    if (nbdkit) await stop(nbdkit.process);
    for (const stack of Object.values(stacks)) {
      // Unless a signal handler took it over.
      if (liveHosts.delete(stack.host)) await stack.host.shutdown();
    }
    for (const d of [dir, control]) {
      rmSync(d, { recursive: true, force: true });
      tempDirs.delete(d);
    }
  }
  return results;
}

// ---- output --------------------------------------------------------------------------

const LABEL: Record<Candidate, string> = { ours: 'ours', 'ours-pool': 'ours-pool', fs: 'Node fs', fio: 'fio', nbdkit: 'nbdkit (fio nbd)' };
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
/** A median with its range, e.g. `66,312 (61,004–70,118)`. */
const withRange = (s: Spread, format: (n: number) => string) => `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
const fixed = (digits: number) => (n: number) => n.toFixed(digits);

/** Which ratios the tables show: each stack over each baseline, and the pool engine over the default one. */
function ratioPairs(candidates: Candidate[]): [Candidate, Candidate][] {
  const stacks = candidates.filter(isStack);
  const baselines = candidates.filter((c) => !isStack(c));
  const pairs = stacks.flatMap((s) => baselines.map((b): [Candidate, Candidate] => [s, b]));
  if (stacks.includes('ours') && stacks.includes('ours-pool')) pairs.push(['ours-pool', 'ours']);
  return pairs;
}

function tables(results: Results, candidates: Candidate[], engine: string): string {
  const label = (c: Candidate) => (c === 'fio' ? `fio (${engine})` : LABEL[c]);
  const lines: string[] = [];
  const section = (title: string, columns: string[], cell: (spec: Spec, row: Partial<Record<Candidate, Run[]>>, column: number) => string, withUnit: boolean) => {
    lines.push(`| ${title} | ${columns.join(' | ')} |`);
    lines.push(`| --- |${columns.map(() => ' ---: |').join('')}`);
    for (const spec of WORKLOADS) {
      const row = results.get(spec.name);
      if (!row) continue;
      lines.push(`| ${spec.name}${withUnit ? ` (${spec.unit})` : ''} | ${columns.map((_, i) => cell(spec, row, i)).join(' | ')} |`);
    }
    lines.push('');
  };
  const figureCell = (value: (spec: Spec, f: Figure) => number | undefined, format: (n: number) => string) => (spec: Spec, row: Partial<Record<Candidate, Run[]>>, c: Candidate) => {
    const values = row[c]?.map((run) => value(spec, run.figure));
    return values && values.every((v) => v !== undefined) ? withRange(spread(values as number[]), format) : '–';
  };

  const rateCell = figureCell(rate, fmt);
  section('workload', candidates.map(label), (spec, row, i) => rateCell(spec, row, candidates[i]!), true);

  const pairs = ratioPairs(candidates);
  if (pairs.length > 0) {
    section('ratio of rates, per round', pairs.map(([of, to]) => `${LABEL[of]} / ${LABEL[to]}`), (spec, row, i) => {
      const [of, to] = pairs[i]!;
      const ratios = roundRatios(spec, row[of], row[to]);
      return ratios ? withRange(spread(ratios), fixed(2)) : '–';
    }, false);
  }

  const cpuCell = figureCell((_, f) => cpuPerRequest(f), fixed(1));
  section('CPU µs per request', candidates.map((c) => (c === 'nbdkit' ? 'nbdkit + fio' : label(c))), (spec, row, i) => cpuCell(spec, row, candidates[i]!), false);

  const switching = candidates.filter((c) => isStack(c) || c === 'fs');
  if (switching.length > 0) {
    const switchCell = figureCell((_, f) => f.switchesPerRequest, fixed(2));
    section('context switches per request', switching.map(label), (spec, row, i) => switchCell(spec, row, switching[i]!), false);
  }
  return lines.join('\n');
}

/** One JSON object per (workload, location, candidate); the schema is in the file's header. */
function jsonResults(location: Location, results: Results, candidates: Candidate[]): object[] {
  const objects: object[] = [];
  for (const spec of WORKLOADS) {
    const row = results.get(spec.name);
    if (!row) continue;
    for (const candidate of candidates) {
      const runs = row[candidate];
      if (!runs) continue;
      const ratios = candidate === 'fs' ? undefined : roundRatios(spec, runs, row.fs);
      const switches = runs.map((run) => run.figure.switchesPerRequest);
      const knownSwitches = switches.every((v) => v !== undefined) ? (switches as number[]) : undefined;
      objects.push({
        workload: spec.name,
        location: location.name,
        candidate,
        unit: spec.unit,
        rounds: runs.map((run, i) => ({
          round: run.round,
          position: run.position,
          rate: rate(spec, run.figure),
          cpuUsPerRequest: cpuPerRequest(run.figure),
          switchesPerRequest: run.figure.switchesPerRequest ?? null,
          ratioToFs: ratios?.[i] ?? null,
          operations: run.figure.operations,
          bytes: run.figure.bytes,
          seconds: run.figure.seconds,
        })),
        rate: spread(runs.map((run) => rate(spec, run.figure))),
        cpuUsPerRequest: spread(runs.map((run) => cpuPerRequest(run.figure))),
        switchesPerRequest: knownSwitches ? spread(knownSwitches) : null,
        ratioToFs: ratios ? spread(ratios) : null,
      });
    }
  }
  return objects;
}

// ---- setup ---------------------------------------------------------------------------

interface Skipped {
  readonly candidate: Candidate;
  readonly reason: string;
}

/** Why a tool cannot be used here, or undefined if it can. */
function toolProblem(command: string, args: string[], pkg: string): string | undefined {
  try {
    requireTool(command, args, pkg);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** The wanted candidates whose tools are here; the others with the reason. */
function availableCandidates(): { candidates: Candidate[]; skipped: Skipped[] } {
  const skipped: Skipped[] = [];
  const skip = (candidate: Candidate, reason: string) => WANTED_CANDIDATES.includes(candidate) && skipped.push({ candidate, reason });
  if (WANTED_CANDIDATES.includes('fio') || WANTED_CANDIDATES.includes('nbdkit')) {
    const fioProblem = toolProblem('fio', ['--version'], 'fio');
    if (fioProblem) {
      skip('fio', fioProblem);
      skip('nbdkit', `it is driven by fio's nbd engine, and ${fioProblem}`);
    } else if (WANTED_CANDIDATES.includes('nbdkit')) {
      const engines = requireTool('fio', ['--enghelp'], 'fio');
      const nbdkitProblem = !/\bnbd\b/.test(engines)
        ? "this fio has no nbd engine (fio --enghelp); Debian's fio 3.33 has it"
        : (toolProblem('nbdkit', ['--version'], 'nbdkit') ?? toolProblem('nbdkit', ['file', '--version'], 'nbdkit'));
      if (nbdkitProblem) skip('nbdkit', nbdkitProblem);
    }
  }
  const candidates = WANTED_CANDIDATES.filter((c) => !skipped.some((s) => s.candidate === c));
  return { candidates, skipped };
}

/** What stands for fio's engine when fio does not run. */
const NO_FIO = 'none';

/** The engine fio runs with: io_uring if it works here, else libaio. */
async function fioEngine(): Promise<string> {
  const engines = requireTool('fio', ['--enghelp'], 'fio');
  if (!/\bio_uring\b/.test(engines)) return 'libaio';
  const probeDir = tempDir(tmpdir());
  try {
    return await pickEngine(probeDir);
  } finally {
    rmSync(probeDir, { recursive: true, force: true });
    tempDirs.delete(probeDir);
  }
}

function checkSettings(): void {
  const unknown = WANTED_CANDIDATES.filter((c) => !ALL_CANDIDATES.includes(c));
  if (unknown.length > 0) throw new Error(`unknown candidates ${unknown.join(', ')} (known: ${ALL_CANDIDATES.join(', ')})`);
  if (WORKLOADS.length === 0) throw new Error(`BENCH_ONLY=${process.env['BENCH_ONLY']} matches no workload`);
  if (!Number.isInteger(ROUNDS) || ROUNDS < MIN_ROUNDS) {
    throw new Error(
      `BENCH_ROUNDS=${process.env['BENCH_ROUNDS']}: at least ${MIN_ROUNDS} rounds are needed, so that every figure is a median with a range rather than a single run`,
    );
  }
}

async function main(): Promise<void> {
  setLogLevel('warn');
  checkSettings();
  const { candidates, skipped } = availableCandidates();
  for (const { candidate, reason } of skipped) process.stderr.write(`skipping ${candidate}: ${reason}\n`);
  if (candidates.length === 0) throw new Error('no candidate is left to run');
  const engine = candidates.includes('fio') || candidates.includes('nbdkit') ? await fioEngine() : NO_FIO;

  const wanted = (process.env['BENCH_LOCATIONS'] ?? 'tmpfs,disk').split(',');
  const locations: Location[] = [];
  if (wanted.includes('tmpfs')) locations.push({ name: 'tmpfs', dir: '/dev/shm' });
  if (wanted.includes('disk')) locations.push({ name: 'disk', dir: diskBackedDir() });
  if (locations.length === 0) throw new Error('BENCH_LOCATIONS names neither tmpfs nor disk');

  const began = Date.now();
  runProgress = new RunProgress(locations.length * WORKLOADS.length * ROUNDS * candidates.length);
  const all: [Location, Results][] = [];
  for (const location of locations) all.push([location, await measureLocation(location, candidates, engine)]);

  // In JSON mode stdout carries the document alone; the tables go with the progress lines.
  const print = JSON_OUTPUT ? (line: string) => process.stderr.write(`${line}\n`) : (line: string) => console.log(line);
  print(
    `block devices, ${cpus().length} cores, Node ${process.version}${engine === NO_FIO ? '' : `, fio ${engine}`}; image ${IMAGE_BYTES / MIB} MiB, ` +
      `in the page cache; each figure the median (min–max) of ${ROUNDS} interleaved rounds, a run of ${SECONDS} s per candidate ` +
      `per round (after ${WARMUP_SECONDS} s of warm-up for ours and fs), the order rotated each round; ratios taken per round; ` +
      `whole benchmark ${((Date.now() - began) / 1000).toFixed(0)} s`,
  );
  for (const { candidate, reason } of skipped) print(`skipped ${candidate}: ${reason}`);
  for (const [location, results] of all) {
    print('');
    print(`### image on ${location.name === 'tmpfs' ? 'tmpfs (/dev/shm)' : `disk (${location.dir}, ${fsTypeName(location.dir)})`}`);
    print('');
    print(tables(results, candidates, engine));
  }
  if (JSON_OUTPUT) {
    const method = {
      cores: cpus().length,
      node: process.version,
      fioEngine: engine,
      imageMiB: IMAGE_BYTES / MIB,
      seconds: SECONDS,
      warmupSeconds: WARMUP_SECONDS,
      rounds: ROUNDS,
      candidates,
      skipped,
    };
    const results = all.flatMap(([location, r]) => jsonResults(location, r, candidates));
    process.stdout.write(`${JSON.stringify({ method, results }, null, 2)}\n`);
  }
}

/** The file system's type as mounted (findmnt), which stat -f cannot tell apart within the ext family. */
function fsTypeName(dir: string): string {
  const result = spawnSync('findmnt', ['-n', '-o', 'FSTYPE', '-T', dir], { encoding: 'utf8' });
  return result.status === 0 && result.stdout.trim() ? result.stdout.trim() : 'disk-backed';
}

try {
  await main();
} catch (err) {
  if (aborting) await new Promise(() => {}); // the signal handler exits
  process.stderr.write(`bench:blk: ${(err as Error).message}\n`);
  killChildren();
  await shutdownHosts();
  removeTempDirs();
  process.exitCode = 1;
}
