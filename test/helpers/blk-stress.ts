/**
 * A load generator for block devices: random reads, writes and flushes at a
 * given depth, every read checked against a model of the disk, and a
 * watchdog that names any request left unanswered too long (its ring, id
 * and ring index, from the frontend's ring reports) instead of letting the
 * test hang.
 *
 * Operations in flight never overlap where one of them writes, so that the
 * model knows what each read must return whatever order the backend runs
 * them in. Each operation fits one blkif request, so that the backend's
 * count of requests answered tells whether any request ran twice.
 */
import { randomFillSync } from 'node:crypto';
import { SECTOR_SIZE, SECTORS_PER_PAGE } from '../../shared/blkif.js';
import type { BlockDevice } from '../../blkfront/disk.js';
import type { RingReport } from '../../blkfront/queue.js';
import type { EventDispatcher } from '../../shared/event-dispatcher.js';
import type { Prng } from '../fuzz/prng.js';

export type OpKind = 'read' | 'write' | 'flush';

interface Active {
  readonly n: number;
  readonly kind: OpKind;
  readonly sector: number;
  readonly sectors: number;
  readonly startedAt: number;
}

export interface LoadOptions {
  readonly ops: number;
  /** Operations in flight at once. */
  readonly depth: number;
  /** Largest operation, in sectors: at most what one request carries. */
  readonly maxSectors: number;
  /** Called once, when this many operations are answered (a reconnection under load, say). */
  readonly midway?: { readonly after: number; readonly action: () => Promise<void> };
}

export interface LoadResult {
  readonly ops: number;
  readonly reads: number;
  readonly writes: number;
  readonly flushes: number;
  /** What went wrong: reads that returned other data, operations that failed. */
  readonly problems: string[];
}

/** An operation unanswered this long is reported as stuck: an idle machine answers in milliseconds, one loaded many times over in seconds. */
export const DEFAULT_STALL_MS = 5000;
/** How often the watchdog looks. */
const WATCHDOG_PERIOD_MS = 200;
/** Problems kept in full; the rest are counted. */
const MAX_PROBLEMS = 20;

/** Why a run was stopped by the watchdog: the stuck operations and each ring's state. */
export class StuckRequestError extends Error {}

/** The disk's expected content: what every answered write put there. */
export class DiskModel {
  readonly bytes: Uint8Array;

  constructor(readonly sectors: number) {
    this.bytes = new Uint8Array(sectors * SECTOR_SIZE);
  }

  write(sector: number, data: Uint8Array): void {
    this.bytes.set(data, sector * SECTOR_SIZE);
  }

  expect(sector: number, sectors: number): Uint8Array {
    return this.bytes.slice(sector * SECTOR_SIZE, (sector + sectors) * SECTOR_SIZE);
  }
}

/** Sizes skewed small, reaching direct requests of every segment count and, rarely, indirect ones. */
function pickSectors(prng: Prng, max: number): number {
  const direct = Math.min(max, 11 * SECTORS_PER_PAGE);
  return prng.weighted<() => number>([
    [40, () => 1],
    [35, () => prng.int(2, Math.min(max, 16))],
    [20, () => prng.int(1, direct)],
    [5, () => prng.int(1, max)],
  ])();
}

function overlaps(a: { sector: number; sectors: number }, sector: number, sectors: number): boolean {
  return a.sector < sector + sectors && sector < a.sector + a.sectors;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : Math.min(a.length, b.length);
}

/** What the watchdog prints: each stuck operation, then every ring's indexes and oldest unanswered requests. */
export function describeStall(stuck: readonly Active[], reports: readonly (RingReport & { port?: number })[], stallMs: number): string {
  const now = performance.now();
  const lines = [`${stuck.length} operation(s) unanswered for more than ${stallMs} ms:`];
  for (const op of stuck.slice(0, 8)) {
    const on = reports.flatMap((r, q) =>
      r.unanswered.filter((u) => u.kind === op.kind && u.sector === (op.kind === 'flush' ? 0 : op.sector)).map((u) => `ring ${q} id ${u.id} index ${u.index >>> 0}`),
    );
    lines.push(`  #${op.n} ${op.kind} ${op.sector}+${op.sectors}, ${Math.round(now - op.startedAt)} ms: ${on.length ? on.join(' or ') : 'on no ring (waiting in the frontend)'}`);
  }
  reports.forEach((r, q) => {
    const old = r.unanswered.filter((u) => u.ageMs > stallMs);
    lines.push(
      `  ring ${q} (size ${r.size}, port ${r.port ?? '?'}): req_prod_pvt ${r.reqProdPvt} rsp_cons ${r.rspCons} | req_prod ${r.reqProd} req_event ${r.reqEvent} rsp_prod ${r.rspProd} rsp_event ${r.rspEvent}; ` +
        `${r.unanswered.length} unanswered, ${old.length} stuck` +
        (old.length ? `: ${old.slice(0, 4).map((u) => `id ${u.id} index ${u.index} ${u.kind} ${u.sector}+${u.sectors} (${Math.round(u.ageMs)} ms)`).join(', ')}` : ''),
    );
  });
  return lines.join('\n');
}

/**
 * Runs `options.ops` random operations on `disk` at `options.depth`,
 * checking reads against `model`. Rejects with StuckRequestError, naming
 * the requests, if any operation goes unanswered for `stallMs`.
 */
export async function runLoad(
  disk: BlockDevice,
  model: DiskModel,
  prng: Prng,
  options: LoadOptions,
  rings: () => (RingReport & { port?: number })[],
  stallMs = DEFAULT_STALL_MS,
): Promise<LoadResult> {
  const active = new Map<number, Active>();
  const problems: string[] = [];
  let problemCount = 0;
  const problem = (text: string) => {
    if (problemCount++ < MAX_PROBLEMS) problems.push(text);
  };
  const counts = { reads: 0, writes: 0, flushes: 0 };
  let issued = 0;
  let answered = 0;
  let wake: (() => void) | undefined;
  let stalled: Error | undefined;
  const flushChance = 1 / Math.max(16, options.depth);
  let midway: Promise<void> | undefined;

  const fits = (kind: OpKind, sector: number, sectors: number) => {
    for (const op of active.values()) {
      if (op.kind === 'flush') continue;
      if ((kind === 'write' || op.kind === 'write') && overlaps(op, sector, sectors)) return false;
    }
    return true;
  };

  const start = (): boolean => {
    const n = issued;
    let kind: OpKind = prng.chance(flushChance) ? 'flush' : prng.chance(0.55) ? 'write' : 'read';
    let sector = 0;
    let sectors = 0;
    if (kind !== 'flush') {
      sectors = pickSectors(prng, options.maxSectors);
      let tries = 0;
      do sector = prng.below(model.sectors - sectors + 1);
      while (!fits(kind, sector, sectors) && ++tries < 8);
      if (tries === 8) return false;
    }
    const op: Active = { n, kind, sector, sectors, startedAt: performance.now() };
    active.set(n, op);
    issued++;
    let work: Promise<void>;
    if (kind === 'flush') {
      counts.flushes++;
      work = disk.flush();
    } else if (kind === 'write') {
      counts.writes++;
      const data = randomFillSync(new Uint8Array(sectors * SECTOR_SIZE));
      model.write(sector, data);
      work = disk.write(sector, data);
    } else {
      counts.reads++;
      const expected = model.expect(sector, sectors);
      work = disk.read(sector, sectors).then((data) => {
        const at = firstDifference(data, expected);
        if (at >= 0) problem(`#${n} read ${sector}+${sectors}: byte ${at} (sector ${sector + Math.floor(at / SECTOR_SIZE)}) differs from what was written`);
      });
    }
    work
      .catch((err: Error) => problem(`#${n} ${kind} ${sector}+${sectors} failed: ${err.message}`))
      .finally(() => {
        active.delete(n);
        answered++;
        if (options.midway && !midway && answered >= options.midway.after) midway = options.midway.action();
        wake?.();
      });
    return true;
  };

  const watchdog = setInterval(() => {
    const now = performance.now();
    const stuck = [...active.values()].filter((op) => now - op.startedAt > stallMs);
    if (stuck.length === 0 || stalled) return;
    stalled = new StuckRequestError(describeStall(stuck, rings(), stallMs));
    wake?.();
  }, WATCHDOG_PERIOD_MS);
  try {
    while (answered < options.ops) {
      while (issued < options.ops && active.size < options.depth && start()) {}
      if (stalled) throw stalled;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
      if (stalled) throw stalled;
    }
    await midway;
  } finally {
    clearInterval(watchdog);
  }
  if (problemCount > MAX_PROBLEMS) problems.push(`... and ${problemCount - MAX_PROBLEMS} more`);
  return { ops: issued, ...counts, problems };
}

/**
 * Delivers a domain's events late, by a random amount (at once, after the
 * current task's microtasks, on the next turn of the event loop, or after
 * a timer), as a busy vCPU takes its interrupts: the notification itself is
 * raised when it is sent, as a hypercall does, only the handler runs later.
 * Each end thus finds the other at every point of its loops: between a push
 * and its check, between taking the last entry and its final check. Only
 * handlers set from now on are delayed; a late call for a port whose
 * handler was removed or replaced meanwhile is dropped, as an unbound
 * interrupt is never taken.
 */
export function delayEvents(events: EventDispatcher, prng: Prng): () => void {
  const on = events.on.bind(events);
  const off = events.off.bind(events);
  const current = new Map<number, () => void>();
  events.on = (port: number, handler: () => void) => {
    const late = () => {
      if (current.get(port) === late) handler();
    };
    current.set(port, late);
    on(port, () => {
      switch (prng.weighted<'now' | 'micro' | 'immediate' | 'timer'>([[3, 'now'], [2, 'micro'], [3, 'immediate'], [1, 'timer']])) {
        case 'now':
          return late();
        case 'micro':
          return queueMicrotask(late);
        case 'immediate':
          return void setImmediate(late);
        case 'timer':
          return void setTimeout(late, prng.int(0, 2));
      }
    });
  };
  events.off = (port: number) => {
    current.delete(port);
    off(port);
  };
  return () => {
    events.on = on;
    events.off = off;
  };
}
