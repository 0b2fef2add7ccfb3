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
 * Workloads: 4 KiB random reads and writes at depths 1, 32 and 128, and
 * 1 MiB sequential reads and writes at depth 4; each with the image on
 * tmpfs (what the stack itself costs) and on a disk-backed file system.
 * The image is filled once before anything is measured, so it is wholly in
 * the page cache for every run; after each write run it is synced, so that
 * every run starts with no dirty pages.
 *
 * CPU time per request is that of every process taking part, over the
 * measured window: for ours the whole host process (every worker: the
 * guest's load generator, blkfront, blkback, the I/O pool, xenstored);
 * for fs this process; for fio what fio and its job processes used, as
 * their parent sees it when they exit (this includes io_uring's kernel
 * workers, which fio's own usr_cpu/sys_cpu do not); for nbdkit that plus
 * nbdkit's own from /proc/<pid>/stat.
 *
 * Environment: BENCH_SECONDS (measured seconds per run, default 2.5),
 * BENCH_WARMUP (seconds, default 0.5), BENCH_IMAGE_MIB (default 1024),
 * BENCH_LOCATIONS (tmpfs,disk), BENCH_CANDIDATES (ours,fs,fio,nbdkit),
 * BENCH_ONLY (a regular expression on the workload's name).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
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
import { Host } from '../host/host.js';
import { devicePaths, diskDevice } from '../host/devices.js';
import { readStateAt, waitForState } from '../xenbus/read.js';
import { XenbusState, stateName } from '../xenbus/state.js';
import { RESULT_NODE, WORKLOAD_NODE, closedLoop, type Measured, type Workload, type WorkloadResult } from './blk-bench-kernel.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? 2.5);
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

type Candidate = 'ours' | 'fs' | 'fio' | 'nbdkit';
const ALL_CANDIDATES: Candidate[] = ['ours', 'fs', 'fio', 'nbdkit'];
const CANDIDATES = (process.env['BENCH_CANDIDATES']?.split(',') ?? ALL_CANDIDATES) as Candidate[];

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
let liveHost: Host | undefined;
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
    const host = liveHost;
    liveHost = undefined;
    const stopped = host ? host.shutdown().catch(() => {}) : Promise.resolve();
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
    for (let offset = 0; offset < IMAGE_BYTES; offset += MIB) {
      chunk.writeUInt32LE(offset / MIB, 0);
      writeSync(fd, chunk, 0, Math.min(MIB, IMAGE_BYTES - offset), offset);
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

/** An embedded host: dom0 with xenstored, a driver domain serving the image, a guest with it as xvda. */
async function bootStack(image: string, dir: string): Promise<Stack> {
  const host = new Host({ socket: join(dir, 'xenstored.sock'), frames: FRAMES, kernelModule: new URL('./blk-bench-kernel.js', import.meta.url) });
  liveHost = host;
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

// ---- the run -------------------------------------------------------------------------

type Results = Map<string, Partial<Record<Candidate, Figure>>>;

const rate = (spec: Spec, f: Figure) => (spec.unit === 'IOPS' ? f.operations / f.seconds : f.bytes / 1e6 / f.seconds);
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
const cpuPerRequest = (f: Figure) => (f.operations > 0 ? (f.cpuSeconds * 1e6) / f.operations : NaN);

function describe(spec: Spec, candidate: Candidate, f: Figure): string {
  const extra =
    f.fioReportedCpuSeconds !== undefined
      ? ` (fio's own usr+sys: ${((f.fioReportedCpuSeconds * 1e6) / f.operations).toFixed(1)} µs)`
      : f.systemSeconds !== undefined
        ? ` (${((100 * f.systemSeconds) / f.cpuSeconds).toFixed(0)}% in the kernel; ${f.switchesPerRequest!.toFixed(1)} context switches per request)`
        : '';
  return `${candidate.padEnd(6)} ${fmt(rate(spec, f)).padStart(9)} ${spec.unit}, ${cpuPerRequest(f).toFixed(1)} µs CPU per request${extra}`;
}

async function measureLocation(location: Location, engine: string): Promise<Results> {
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
  let stack: Stack | undefined;
  let nbdkit: Nbdkit | undefined;
  try {
    if (CANDIDATES.includes('ours')) stack = await bootStack(image, control);
    if (CANDIDATES.includes('nbdkit')) nbdkit = await startNbdkit(image, control);
    for (const spec of WORKLOADS) {
      const row: Partial<Record<Candidate, Figure>> = {};
      results.set(spec.name, row);
      for (const candidate of CANDIDATES) {
        let figure: Figure;
        switch (candidate) {
          case 'ours':
            figure = await runOurs(stack!, spec);
            break;
          case 'fs':
            figure = await runFs(image, spec);
            break;
          case 'fio':
            figure = await runFio(engine, image, spec, control);
            break;
          case 'nbdkit':
            figure = await runNbdkit(nbdkit!, spec, control);
            break;
        }
        row[candidate] = figure;
        process.stderr.write(`${location.name}, ${spec.name}: ${describe(spec, candidate, figure)}\n`);
        // Every run starts with no dirty pages.
        if (spec.op === 'write') syncImage(image);
      }
    }
  } finally {
    if (nbdkit) await stop(nbdkit.process);
    // Unless a signal handler took it over.
    if (stack && liveHost === stack.host) {
      liveHost = undefined;
      await stack.host.shutdown();
    }
    for (const d of [dir, control]) {
      rmSync(d, { recursive: true, force: true });
      tempDirs.delete(d);
    }
  }
  return results;
}

const LABEL: Record<Candidate, string> = { ours: 'ours', fs: 'Node fs', fio: 'fio', nbdkit: 'nbdkit (fio nbd)' };

function table(results: Results, engine: string): string {
  const lines: string[] = [];
  const label = (c: Candidate) => (c === 'fio' ? `fio (${engine})` : LABEL[c]);
  const baselines = CANDIDATES.filter((c) => c !== 'ours');
  const withOurs = CANDIDATES.includes('ours');
  lines.push(`| workload | ${CANDIDATES.map(label).join(' | ')} |${withOurs ? baselines.map((b) => ` ours / ${LABEL[b]} |`).join('') : ''}`);
  lines.push(`| --- |${CANDIDATES.map(() => ' ---: |').join('')}${withOurs ? baselines.map(() => ' ---: |').join('') : ''}`);
  for (const spec of WORKLOADS) {
    const row = results.get(spec.name);
    if (!row) continue;
    const cells = CANDIDATES.map((c) => (row[c] ? fmt(rate(spec, row[c])) : '–'));
    const ratios = withOurs ? baselines.map((b) => (row.ours && row[b] ? (rate(spec, row.ours) / rate(spec, row[b])).toFixed(2) : '–')) : [];
    lines.push(`| ${spec.name} (${spec.unit}) | ${[...cells, ...ratios].join(' | ')} |`);
  }
  lines.push('');
  lines.push(`| CPU µs per request | ${CANDIDATES.map((c) => (c === 'nbdkit' ? 'nbdkit + fio' : label(c))).join(' | ')} |`);
  lines.push(`| --- |${CANDIDATES.map(() => ' ---: |').join('')}`);
  for (const spec of WORKLOADS) {
    const row = results.get(spec.name);
    if (!row) continue;
    lines.push(`| ${spec.name} | ${CANDIDATES.map((c) => (row[c] ? cpuPerRequest(row[c]).toFixed(1) : '–')).join(' | ')} |`);
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  setLogLevel('warn');
  const unknown = CANDIDATES.filter((c) => !ALL_CANDIDATES.includes(c));
  if (unknown.length > 0) throw new Error(`unknown candidates ${unknown.join(', ')} (known: ${ALL_CANDIDATES.join(', ')})`);
  if (WORKLOADS.length === 0) throw new Error(`BENCH_ONLY=${process.env['BENCH_ONLY']} matches no workload`);
  let engine = 'io_uring';
  if (CANDIDATES.includes('fio') || CANDIDATES.includes('nbdkit')) {
    requireTool('fio', ['--version'], 'fio');
    const engines = requireTool('fio', ['--enghelp'], 'fio');
    if (CANDIDATES.includes('nbdkit') && !/\bnbd\b/.test(engines)) throw new Error("this fio has no nbd engine (fio --enghelp); Debian's fio 3.33 has it");
    if (CANDIDATES.includes('nbdkit')) {
      requireTool('nbdkit', ['--version'], 'nbdkit');
      requireTool('nbdkit', ['file', '--version'], 'nbdkit');
    }
    const probeDir = tempDir(tmpdir());
    engine = /\bio_uring\b/.test(engines) ? await pickEngine(probeDir) : 'libaio';
    rmSync(probeDir, { recursive: true, force: true });
    tempDirs.delete(probeDir);
  }

  const wanted = (process.env['BENCH_LOCATIONS'] ?? 'tmpfs,disk').split(',');
  const locations: Location[] = [];
  if (wanted.includes('tmpfs')) locations.push({ name: 'tmpfs', dir: '/dev/shm' });
  if (wanted.includes('disk')) locations.push({ name: 'disk', dir: diskBackedDir() });
  if (locations.length === 0) throw new Error('BENCH_LOCATIONS names neither tmpfs nor disk');

  const began = Date.now();
  const all: [Location, Results][] = [];
  for (const location of locations) all.push([location, await measureLocation(location, engine)]);

  console.log(
    `block devices, ${cpus().length} cores, Node ${process.version}, fio ${engine}; image ${IMAGE_BYTES / MIB} MiB, ` +
      `in the page cache; each figure one run of ${SECONDS} s (after ${WARMUP_SECONDS} s of warm-up for ours and fs); ` +
      `whole benchmark ${((Date.now() - began) / 1000).toFixed(0)} s`,
  );
  for (const [location, results] of all) {
    console.log('');
    console.log(`### image on ${location.name === 'tmpfs' ? 'tmpfs (/dev/shm)' : `disk (${location.dir}, ${fsTypeName(location.dir)})`}`);
    console.log('');
    console.log(table(results, engine));
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
  if (liveHost) await liveHost.shutdown().catch(() => {});
  removeTempDirs();
  process.exitCode = 1;
}
