/**
 * The guest's kernel for `npm run bench:blk`: the real kernel role
 * (startKernel), plus a load generator that runs inside the guest's worker,
 * where its disk (blkfront's BlockDevice) lives.
 *
 * The benchmark's driver writes a workload as JSON to the guest's
 * `data/bench` node; the guest runs it on the disk with `depth` concurrent
 * closed-loop workers and writes what it measured to `data/bench-result`.
 * xenstore is only the control channel: the I/O goes over the rings.
 *
 * The closed-loop load generator is exported so that the driver runs the
 * same one over Node's fs; the role only starts when this module is loaded
 * as a worker.
 */
import { randomFillSync } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import { BlkfrontDriver } from '../blkfront/driver.js';
import type { BlockDevice } from '../blkfront/disk.js';
import { SECTOR_SIZE } from '../shared/blkif.js';
import type { Logger } from '../shared/log.js';
import { runRole, type RoleInstance } from '../shared/mesh/worker-runtime.js';
import { startKernel, type KernelRoleConfig } from '../host/machine/kernel.js';

/** What the driver asks the guest to run. */
export interface Workload {
  /** Tells one request from the next (and a result from a stale one). */
  readonly id: string;
  /** The disk's id on the front bus (its virtual-device number). */
  readonly device: string;
  readonly pattern: 'random' | 'sequential';
  readonly op: 'read' | 'write';
  readonly blockBytes: number;
  readonly depth: number;
  /** Run this long before measuring (JIT, pools, rings warm up). */
  readonly warmupSeconds: number;
  readonly seconds: number;
}

/** What a run measured, over the measured window only. */
export interface Measured {
  readonly operations: number;
  readonly bytes: number;
  readonly elapsedMs: number;
  /** process.cpuUsage() over the window: every thread of the process. */
  readonly cpuUserUs: number;
  readonly cpuSystemUs: number;
  /** Context switches of every thread of the process over the window: how often a thread went to sleep or was preempted. */
  readonly contextSwitches: number;
}

export type WorkloadResult = ({ readonly id: string } & Measured) | { readonly id: string; readonly error: string };

export const WORKLOAD_NODE = 'data/bench';
export const RESULT_NODE = 'data/bench-result';

/** Context switches so far of every live thread of this process (proc(5): /proc/self/task/<tid>/status). */
export function contextSwitches(): number {
  let total = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const status = readFileSync(`/proc/self/task/${tid}/status`, 'latin1');
      for (const match of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)/gm)) total += Number(match[1]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return total;
}

/** One operation of worker `worker` at byte offset `offset`. */
export type Operation = (worker: number, offset: number) => Promise<void>;

/**
 * Runs `op` from `depth` closed-loop workers (each issues its next
 * operation when the last one completed) over a device of `deviceBytes`,
 * at random block-aligned offsets or sequentially (one shared cursor, so
 * that the workers together read or write one stream, as fio's iodepth
 * does). Warms up, then counts what completes within the measured window.
 */
export async function closedLoop(
  workload: Pick<Workload, 'pattern' | 'blockBytes' | 'depth' | 'warmupSeconds' | 'seconds'>,
  deviceBytes: number,
  op: Operation,
): Promise<Measured> {
  const { blockBytes, depth } = workload;
  const blocks = Math.floor(deviceBytes / blockBytes);
  if (blocks < 1) throw new Error(`a device of ${deviceBytes} bytes holds no block of ${blockBytes}`);
  let cursor = 0;
  const next =
    workload.pattern === 'random'
      ? () => Math.floor(Math.random() * blocks) * blockBytes
      : () => {
          const offset = cursor * blockBytes;
          cursor = cursor + 1 === blocks ? 0 : cursor + 1;
          return offset;
        };
  let operations = 0;
  let stop = false;
  let failure: unknown;
  const loops = Array.from({ length: depth }, async (_, worker) => {
    try {
      while (!stop) {
        await op(worker, next());
        operations++;
      }
    } catch (err) {
      failure ??= err;
      stop = true;
    }
  });
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  await sleep(workload.warmupSeconds * 1000);
  const ops0 = operations;
  const switches0 = contextSwitches();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(workload.seconds * 1000);
  const ops1 = operations;
  const cpu = process.cpuUsage(cpu0);
  const elapsedMs = performance.now() - t0;
  const switches = contextSwitches() - switches0;
  stop = true;
  await Promise.all(loops);
  if (failure !== undefined) throw failure;
  const counted = ops1 - ops0;
  return { operations: counted, bytes: counted * blockBytes, elapsedMs, cpuUserUs: cpu.user, cpuSystemUs: cpu.system, contextSwitches: switches };
}

/**
 * One buffer per worker, as a kernel's I/O has its pages: in the domain's
 * own memory, so that blkfront grants them as they are (no copy), unless
 * the domain has no room for them in a row; then plain ones, which go
 * through bounce pages.
 */
function workerBuffers(disk: BlockDevice, workload: Workload, log: Logger): { buffers: Uint8Array[]; free(): void } {
  const buffers: Uint8Array[] = [];
  try {
    for (let i = 0; i < workload.depth; i++) buffers.push(disk.allocateBuffer(workload.blockBytes));
    return { buffers, free: () => buffers.forEach((buffer) => disk.freeBuffer(buffer)) };
  } catch (err) {
    for (const buffer of buffers) disk.freeBuffer(buffer);
    log.warn(`bench: no room for ${workload.depth} device buffers of ${workload.blockBytes} bytes (${(err as Error).message}): copying through bounce pages`);
    return { buffers: Array.from({ length: workload.depth }, () => new Uint8Array(workload.blockBytes)), free: () => {} };
  }
}

/** The same workload on the guest's disk through blkfront. */
async function runOnDisk(disk: BlockDevice, workload: Workload, log: Logger): Promise<Measured> {
  await disk.whenConnected();
  const info = disk.info;
  if (!info) throw new Error('the disk is not connected');
  const sectors = workload.blockBytes / SECTOR_SIZE;
  if (!Number.isInteger(sectors) || sectors < 1) throw new Error(`${workload.blockBytes} bytes is not a whole number of sectors`);
  const { buffers, free } = workerBuffers(disk, workload, log);
  // A write's buffer is filled once (the data is not what is measured).
  if (workload.op === 'write') for (const buffer of buffers) randomFillSync(buffer);
  const op: Operation =
    workload.op === 'read'
      ? (worker, offset) => disk.readInto(offset / SECTOR_SIZE, buffers[worker]!)
      : (worker, offset) => disk.write(offset / SECTOR_SIZE, buffers[worker]!);
  try {
    return await closedLoop(workload, info.sectors * SECTOR_SIZE, op);
  } finally {
    free();
  }
}

/** The BlockDevice of a frontend device, once the front bus has attached it. */
async function findDisk(driver: BlkfrontDriver, id: string, timeoutMs = 10_000): Promise<BlockDevice> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const frontend = driver.devices.get(id);
    if (frontend) return frontend.disk;
    if (Date.now() > deadline) throw new Error(`no vbd ${id} attached to the front bus (have: ${[...driver.devices.keys()].join(', ') || 'none'})`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

if (!isMainThread) {
  runRole<KernelRoleConfig>(async (ctx): Promise<RoleInstance> => {
    const kernel = await startKernel(ctx);
    const blkfront = kernel.drivers.front.get('vbd');
    // A driver domain (no blkfront) is just the kernel.
    if (!(blkfront instanceof BlkfrontDriver)) return kernel;

    const xs = kernel.xenstore;
    const watcher = await xs.watch(WORKLOAD_NODE);
    let last: string | undefined;
    const serve = async () => {
      for await (const _event of watcher) {
        const text = await xs.tryRead(WORKLOAD_NODE).catch(() => undefined);
        if (text === undefined || text === '') continue;
        let workload: Workload;
        try {
          workload = JSON.parse(text) as Workload;
        } catch {
          continue;
        }
        if (workload.id === last) continue;
        last = workload.id;
        let result: WorkloadResult;
        try {
          result = { id: workload.id, ...(await runOnDisk(await findDisk(blkfront, workload.device), workload, ctx.log)) };
        } catch (err) {
          result = { id: workload.id, error: (err as Error).message };
        }
        await xs.write(RESULT_NODE, JSON.stringify(result));
      }
    };
    serve().catch((err: Error) => ctx.log.error(`bench: ${err.message}`));
    return {
      info: kernel.info,
      health: () => kernel.health?.() ?? {},
      async stop(reason) {
        await watcher.close().catch(() => {});
        await kernel.stop(reason);
      },
    };
  });
}
