/**
 * Real Xen: Xen 4.17 under QEMU (TCG) with a Debian dom0, and Linux PV guests whose disks are served by
 * xenmesh's userspace backend (XENMESH_XEN_BACKEND=xenmesh, the default) or by the kernel's xen-blkback
 * (XENMESH_XEN_BACKEND=kernel, to check the harness itself against the reference backend). This file is the host's side: it fetches and builds what the VM is made of
 * (test/xen/vm/, each step skipped when up to date), boots the VM (once, or twice: see BOOTS), follows its serial log, and turns
 * the markers dom0's scenarios print there into assertions:
 *   XENTEST BEGIN <scenario> | INFO <text> | DATA <key>=<value> | PASS <scenario> | FAIL <scenario>: <reason>
 *   XENTEST DONE
 * QEMU is always stopped at the end. The scenarios themselves run inside the VM (test/xen/dom0/xentest/);
 * test/xen/README.md describes them. Not part of `npm test` (its name does not end in .test.js).
 *
 * env: XENMESH_XEN_BACKEND    kernel | xenmesh
 *      XENMESH_XEN_XENSTORED  xenmesh (default) | c: the xenstored dom0 runs. Unset with the scenario xsbench
 *                             alone (npm run bench:xen-xenstore): boots with each in turn (XENMESH_XSBENCH_PAIRS)
 *      XENMESH_XEN_SCENARIOS  all (default) or a comma-separated list
 *      XENMESH_XEN_TIMEOUT    seconds for the whole run, builds included (default 1500)
 *      XENMESH_XEN_DIR, KV, MEM, DOM0_MEM, CPU, XENMESH_LOG, XENMESH_BACKEND_ARGS, XENMESH_STRACE,
 *      XENMESH_BLOCK_SCRIPT, FORCE   passed on to the scripts (test/xen/vm/*.sh)
 * Run it with a tap timeout above XENMESH_XEN_TIMEOUT (the project's default of 300 s is far too short):
 *   npm run build --silent && tap --disable-coverage -t 2400 dist/test/xen/real-xen.xen.js
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const VM_DIR = fileURLToPath(new URL('../../../test/xen/vm/', import.meta.url));
const WORK_DIR = process.env.XENMESH_XEN_DIR ?? '/tmp/xenmesh-xen';
const SERIAL_LOG = join(WORK_DIR, 'serial.log');
const RESULTS = join(WORK_DIR, 'results.json');
const ALL_SCENARIOS = ['xenstore', 'driverdomain', 'negotiated', 'basic', 'hotplug', 'lifecycle', 'saverestore'];
const SCENARIO_LIST = process.env.XENMESH_XEN_SCENARIOS ?? 'all';
const SCENARIOS = SCENARIO_LIST === 'all' ? ALL_SCENARIOS : SCENARIO_LIST.split(',').filter(Boolean);
const BACKEND = process.env.XENMESH_XEN_BACKEND ?? 'xenmesh';
const XENSTORED = process.env.XENMESH_XEN_XENSTORED ?? 'xenmesh';

/** Time limits, in seconds. */
const TOTAL_SECONDS = Number(process.env.XENMESH_XEN_TIMEOUT ?? 1500);
const FETCH_SECONDS = 600; // ~75 MB of Debian packages
const BUILD_SECONDS = 300; // one image build
const START_SECONDS = 30; // run-vm.sh returns once QEMU is started
const DOM0_UP_SECONDS = 300; // QEMU started -> dom0 has xenstored and xenconsoled up
const PANIC_GRACE_SECONDS = 5; // a panic was seen -> stop (after the rest of its message)
const POLL_MS = 500;

const started = Date.now();
const elapsed = (since = started) => (Date.now() - since) / 1000;
const remaining = () => TOTAL_SECONDS - elapsed();
/** Progress goes to stderr as it happens: a run takes many minutes, and the assertions come at the end. */
const progress = (line: string) => process.stderr.write(`[xen ${elapsed().toFixed(0).padStart(4)}s] ${line}\n`);

const timings: Array<[string, number]> = [];
async function phase<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try {
    return await fn();
  } finally {
    timings.push([name, elapsed(t0)]);
    progress(`phase ${name}: ${elapsed(t0).toFixed(1)}s`);
  }
}

/** Run one of test/xen/vm's scripts, its output echoed as progress; resolves with its exit code. */
function script(name: string, seconds: number, env: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn('bash', [join(VM_DIR, name)], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group, so that a timeout ends all of it
    });
    const limit = Math.max(1, Math.min(seconds, remaining()));
    const timer = setTimeout(() => {
      progress(`${name}: no end after ${limit.toFixed(0)}s, killed`);
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone already
      }
    }, limit * 1000);
    let pending = '';
    const echo = (chunk: Buffer) => {
      const lines = (pending + chunk.toString()).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) progress(`${name}: ${line}`);
    };
    child.stdout.on('data', echo);
    child.stderr.on('data', echo);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (pending) progress(`${name}: ${pending}`);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

let vmStarted = false;
function stopVm() {
  if (!vmStarted) return;
  vmStarted = false;
  const r = spawnSync('bash', [join(VM_DIR, 'stop-vm.sh')], { encoding: 'utf8', timeout: 30_000 });
  progress(`stop-vm.sh: ${(r.stdout + r.stderr).trim()}`);
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    stopVm();
    process.exit(1);
  });
}
process.on('exit', stopVm);

interface Scenario {
  name: string;
  result?: 'pass' | 'fail';
  reason?: string;
  seconds?: number;
  info: string[];
  data: Record<string, string>;
}

interface Run {
  dom0Up: boolean;
  done: boolean;
  /** Why the run ended before XENTEST DONE, if it did. */
  abort?: string;
  /** Seconds from QEMU's start to dom0's daemons being up. */
  bootSeconds?: number;
  scenarios: Map<string, Scenario>;
  /** INFO and DATA outside any scenario (dom0's boot, the backend's start and log). */
  info: string[];
  data: Record<string, string>;
}

const MARKER = /XENTEST (BEGIN|INFO|DATA|PASS|FAIL|DONE)\b ?(.*)$/;
/** Lines that mean the VM will not get anywhere: the hypervisor or dom0's kernel gave up. (A guest's panic
 * reaches the serial console only inside an INFO marker, and ends only its scenario.) */
const PANIC = /Panic on CPU|Kernel panic - not syncing/;

/** Follow the serial log from QEMU's start until XENTEST DONE, a panic, QEMU's end, or the time limit. */
async function follow(qemuPid: number): Promise<Run> {
  const run: Run = { dom0Up: false, done: false, scenarios: new Map(), info: [], data: {} };
  const t0 = Date.now();
  let offset = 0;
  let pending = '';
  let current: Scenario | undefined;
  let panicAt: number | undefined;
  let scenarioStart = Date.now();
  const scenario = (name: string) => {
    let s = run.scenarios.get(name);
    if (!s) run.scenarios.set(name, (s = { name, info: [], data: {} }));
    return s;
  };
  const handle = (line: string) => {
    if (panicAt === undefined && PANIC.test(line) && !line.includes('XENTEST ')) {
      panicAt = Date.now();
      progress(`serial: ${line}`);
    }
    const m = MARKER.exec(line);
    if (!m) return;
    const [, kind, text = ''] = m;
    progress(`XENTEST ${kind} ${text}`);
    switch (kind) {
      case 'BEGIN':
        current = scenario(text.trim());
        scenarioStart = Date.now();
        break;
      case 'INFO':
        if (!run.dom0Up && text.startsWith('dom0 xenstored and xenconsoled up')) {
          run.dom0Up = true;
          run.bootSeconds = elapsed(t0);
        }
        (current ?? run).info.push(text);
        break;
      case 'DATA': {
        const eq = text.indexOf('=');
        if (eq > 0) (current ? current.data : run.data)[text.slice(0, eq)] = text.slice(eq + 1);
        break;
      }
      case 'PASS':
      case 'FAIL': {
        const colon = text.indexOf(':');
        const name = (kind === 'FAIL' && colon > 0 ? text.slice(0, colon) : text).trim();
        const s = scenario(name);
        s.result = kind === 'PASS' ? 'pass' : 'fail';
        if (kind === 'FAIL') s.reason = colon > 0 ? text.slice(colon + 1).trim() : 'no reason given';
        s.seconds = elapsed(scenarioStart);
        timings.push([`scenario ${name}`, s.seconds]);
        current = undefined;
        break;
      }
      case 'DONE':
        run.done = true;
        break;
    }
  };
  const log = await waitForFile(SERIAL_LOG, START_SECONDS);
  if (!log) return { ...run, abort: `no serial log ${SERIAL_LOG}` };
  try {
    const buf = Buffer.alloc(1 << 16);
    while (!run.done) {
      const { bytesRead } = await log.read(buf, 0, buf.length, offset);
      if (bytesRead > 0) {
        offset += bytesRead;
        const lines = (pending + buf.subarray(0, bytesRead).toString('latin1')).split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) handle(line.replace(/\r/g, ''));
        continue;
      }
      if (panicAt !== undefined && elapsed(panicAt) > PANIC_GRACE_SECONDS) return { ...run, abort: 'panic on the serial console' };
      if (!alive(qemuPid)) return { ...run, abort: 'QEMU exited' };
      if (!run.dom0Up && elapsed(t0) > DOM0_UP_SECONDS) return { ...run, abort: `dom0 was not up within ${DOM0_UP_SECONDS}s` };
      if (remaining() <= 0) return { ...run, abort: `the run took more than ${TOTAL_SECONDS}s (XENMESH_XEN_TIMEOUT)` };
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    return run;
  } finally {
    await log.close();
  }
}

async function waitForFile(path: string, seconds: number) {
  const t0 = Date.now();
  while (elapsed(t0) < seconds) {
    if (existsSync(path)) return open(path, 'r');
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return undefined;
}

function alive(pid: number) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** One boot of the VM: which xenstored dom0 runs, and the scenarios it runs. */
interface Boot {
  readonly xenstored: string;
  readonly scenarios: readonly string[];
}

/** Pairs of boots (one with each xenstored, the order alternating) for the xenstore benchmark. */
const XSBENCH_PAIRS = Number(process.env.XENMESH_XSBENCH_PAIRS ?? 2);
const BENCHMARK = SCENARIO_LIST === 'xsbench' && process.env.XENMESH_XEN_XENSTORED === undefined;

/**
 * The boots of a run: one with the chosen xenstored for the scenarios; for the xenstore benchmark alone
 * (`npm run bench:xen-xenstore`), boots with Xen's C xenstored and with xenmesh's in turn, the order
 * rotated from pair to pair.
 */
const BOOTS: readonly Boot[] = BENCHMARK
  ? Array.from({ length: XSBENCH_PAIRS }, (_, i) => (i % 2 === 0 ? ['c', 'xenmesh'] : ['xenmesh', 'c']))
      .flat()
      .map((xenstored) => ({ xenstored, scenarios: ['xsbench'] }))
  : [{ xenstored: XENSTORED, scenarios: SCENARIOS }];

/** Boots the VM once, follows it to its end and asserts on its scenarios; the run, or undefined if it never started. */
async function boot(t: Test, index: number, spec: Boot): Promise<Run | undefined> {
  const label = `boot ${index + 1} (xenstored ${spec.xenstored})`;
  await script('stop-vm.sh', START_SECONDS); // a QEMU left over by an interrupted run
  vmStarted = true;
  // The benchmark's boots serve no disks: no block backend of ours runs beside the daemons it times.
  const backend = BENCHMARK ? 'kernel' : BACKEND;
  const code = await script('run-vm.sh', START_SECONDS, { XENTEST: spec.scenarios.join(','), BACKEND: backend, XENSTORED: spec.xenstored });
  if (code !== 0) {
    t.fail(`${label}: run-vm.sh exited with ${code}`);
    return undefined;
  }
  const qemuPid = Number(readFileSync(join(WORK_DIR, 'qemu.pid'), 'utf8'));
  let run: Run;
  try {
    run = await phase(`vm ${label}`, () => follow(qemuPid));
  } finally {
    stopVm();
  }
  // Kept per boot: the next boot starts a new serial log.
  if (existsSync(SERIAL_LOG)) copyFileSync(SERIAL_LOG, join(WORK_DIR, `serial-${index + 1}-${spec.xenstored}.log`));
  if (run.bootSeconds !== undefined) timings.push([`${label}: QEMU start to dom0 daemons up`, run.bootSeconds]);

  t.ok(run.dom0Up, `${label}: dom0 booted and started xenstored and xenconsoled`);
  for (const name of spec.scenarios) {
    const s = run.scenarios.get(name);
    if (s?.result === 'pass') {
      t.pass(`${label}: ${name} (${s.seconds?.toFixed(0)}s)`);
    } else {
      t.fail(`${label}: ${name}: ${s?.reason ?? (s ? 'began but never ended' : 'never began')}`, {
        info: s?.info.slice(-40),
        data: s?.data,
      });
    }
  }
  for (const s of run.scenarios.values()) {
    if (!spec.scenarios.includes(s.name)) t.fail(`${label}: dom0 ran a scenario it was not asked for: ${s.name}`);
  }
  t.ok(run.done, `${label}: dom0 reported XENTEST DONE`, run.abort ? { abort: run.abort, serialLog: SERIAL_LOG } : {});
  t.equal(run.data['xenstored'], spec.xenstored, `${label}: dom0 ran the xenstored it was asked for`);
  t.notOk(run.data['xenstored.gone'], `${label}: xenstored served to the end`, { info: run.info.slice(-40) });
  return run;
}

/** The xsbench figures of the boots with one xenstored: each step's median over every round (ms). */
function xsbenchFigures(runs: ReadonlyArray<Run | undefined>): Record<string, number[]> | undefined {
  const values = new Map<string, number[]>();
  for (const run of runs) {
    const data = run?.scenarios.get('xsbench')?.data;
    if (!data) return undefined;
    for (const [key, value] of Object.entries(data)) {
      const step = /^xsbench\.(\w+)\.r\d+$/.exec(key)?.[1] ?? (key === 'xsbench.test-xenstore-ms' ? 'test-xenstore' : undefined);
      if (step) values.set(step, [...(values.get(step) ?? []), Number(value)]);
    }
  }
  return values.size > 0 ? Object.fromEntries(values) : undefined;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

t.test(`real Xen 4.17, ${BACKEND} backend: ${BOOTS.map((b) => `xenstored ${b.xenstored}: ${b.scenarios.join(', ')}`).join('; ')}`, async (t) => {
  progress(`work dir ${WORK_DIR}; backend ${BACKEND}; boots ${BOOTS.map((b) => `${b.xenstored}:${b.scenarios.join(',')}`).join(' ')}; time limit ${TOTAL_SECONDS}s`);
  for (const [name, seconds] of [
    ['fetch.sh', FETCH_SECONDS],
    ['build-domu.sh', BUILD_SECONDS],
    ['build-dom0.sh', BUILD_SECONDS],
  ] as const) {
    const code = await phase(name.replace(/\.sh$/, ''), () => script(name, seconds));
    if (code !== 0) {
      t.fail(`${name} exited with ${code}`);
      return;
    }
  }

  const runs: Array<Run | undefined> = [];
  for (const [index, spec] of BOOTS.entries()) runs.push(await boot(t, index, spec));

  // The same batch against both daemons, on boots of the same VM taken in turn.
  let xsbench: Record<string, { c: string; xenmesh: string; ratio: number }> | undefined;
  if (BENCHMARK) {
    const c = xsbenchFigures(runs.filter((_, i) => BOOTS[i]!.xenstored === 'c'));
    const ours = xsbenchFigures(runs.filter((_, i) => BOOTS[i]!.xenstored === 'xenmesh'));
    if (c && ours) {
      xsbench = {};
      const shown = (v: number[]) => `${median(v)} (${Math.min(...v)}-${Math.max(...v)})`;
      for (const step of Object.keys(c)) {
        if (ours[step]) xsbench[step] = { c: shown(c[step]!), xenmesh: shown(ours[step]!), ratio: median(ours[step]!) / median(c[step]!) };
      }
      const line = `xsbench, ms: median (range) with C xenstored | with xenmesh's | ratio: ${Object.entries(xsbench).map(([k, v]) => `${k} ${v.c} | ${v.xenmesh} | ${v.ratio.toFixed(2)}`).join('; ')}`;
      progress(line);
      t.comment(line);
    }
  }

  timings.push(['total', elapsed()]);
  const summary = `timings: ${timings.map(([n, s]) => `${n} ${s.toFixed(1)}s`).join('; ')}`;
  progress(summary);
  t.comment(summary);
  t.comment(`serial logs: ${WORK_DIR}/serial-<boot>-<xenstored>.log; results: ${RESULTS}`);
  writeFileSync(
    RESULTS,
    JSON.stringify(
      { backend: BACKEND, boots: BOOTS.map((spec, i) => ({ ...spec, run: runs[i] && { ...runs[i], scenarios: [...runs[i]!.scenarios.values()] } })), xsbench, timings },
      null,
      2,
    ),
  );
});
