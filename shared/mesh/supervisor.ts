import { EventEmitter } from 'node:events';
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { createLogger, logLine, type LogLevel } from '../log.js';
import { decodeEnvelope, encodeEnvelope, type Envelope, type HealthReport } from './envelope.js';
import type { WorkerBoot } from './worker-runtime.js';

const log = createLogger('supervisor');

/** How long a worker may take to stop cleanly before it is terminated. */
export const STOP_TIMEOUT_MS = 5000;
/**
 * How long a worker may take to say it is ready: it loads its modules
 * first, which takes well under a second on a real machine but can take
 * over 30 s on a loaded emulated one (a driver domain starting beside
 * another under QEMU's TCG did).
 */
export const START_TIMEOUT_MS = 120_000;

/**
 * What to do when a worker dies unasked: nothing, or start it again, at
 * most `maxRestarts` times within `windowMs`, after `delayMs`.
 */
export type RestartPolicy = { kind: 'never' } | { kind: 'on-failure'; maxRestarts: number; windowMs: number; delayMs: number };

export const DEFAULT_RESTART: RestartPolicy = { kind: 'on-failure', maxRestarts: 5, windowMs: 60_000, delayMs: 100 };

export interface RoleSpec {
  /** Unique within the mesh: `xenstored`, `kernel:guest`. */
  name: string;
  domid: number;
  /** The domain's name, where known, for the worker's log lines. */
  domainName?: string;
  /** The worker's module (compiled JavaScript). */
  module: URL;
  /** The role's configuration, sent in the start envelope. */
  config: unknown;
  /** Structured-clone data for the worker (the platform's shared buffers). */
  shared: unknown;
  restart: RestartPolicy;
  /** Limits of the worker's heap (Node's defaults if absent). */
  resourceLimits?: ResourceLimits;
  /** How long it may take to stop cleanly before it is terminated (STOP_TIMEOUT_MS if absent). */
  stopTimeoutMs?: number;
}

export type WorkerState = 'starting' | 'ready' | 'stopping' | 'stopped' | 'crashed' | 'failed';

export interface WorkerStatus {
  readonly name: string;
  readonly domid: number;
  readonly state: WorkerState;
  readonly restarts: number;
  readonly threadId: number | undefined;
  readonly lastError: string | undefined;
  readonly info: unknown;
  readonly stats: Record<string, number | string>;
}

interface Managed {
  spec: RoleSpec;
  worker: Worker | undefined;
  state: WorkerState;
  restarts: number[];
  totalRestarts: number;
  lastError: string | undefined;
  info: unknown;
  stats: Record<string, number | string>;
  ready: { resolve(): void; reject(err: Error): void } | undefined;
  stopped: (() => void) | undefined;
  /** The stop under way: whoever else asks the worker to stop waits for this one. */
  stopping: Promise<void> | undefined;
}

export interface SupervisorEvents {
  ready: [name: string, info: unknown];
  crash: [name: string, error: string];
  restart: [name: string, attempt: number];
  exit: [name: string, threadId: number];
  stats: [name: string, stats: Record<string, number | string>];
}

/**
 * The mesh supervisor (main thread): starts one worker per role, talks to
 * it in msgpackr envelopes, logs what it says with its domain, notices when
 * it throws or exits, and restarts it by its policy while the rest of the
 * mesh keeps running.
 */
export class Supervisor extends EventEmitter<SupervisorEvents> {
  private readonly managed = new Map<string, Managed>();
  private nextHealthId = 1;
  private readonly healthWaiters = new Map<number, (report: HealthReport) => void>();
  private nextQueryId = 1;
  private readonly queryWaiters = new Map<number, (answer: { value?: unknown; error?: string }) => void>();
  private shuttingDown = false;

  /** Starts a role and resolves once its worker says it is ready. */
  start(spec: RoleSpec): Promise<void> {
    // Whatever asks for a worker once everything is being stopped (a reboot finishing late) gets none.
    if (this.shuttingDown) return Promise.reject(new Error(`${spec.name} not started: the mesh is shutting down`));
    if (this.managed.has(spec.name)) return Promise.reject(new Error(`${spec.name} is already running`));
    const entry: Managed = {
      spec,
      worker: undefined,
      state: 'starting',
      restarts: [],
      totalRestarts: 0,
      lastError: undefined,
      info: undefined,
      stats: {},
      ready: undefined,
      stopped: undefined,
      stopping: undefined,
    };
    this.managed.set(spec.name, entry);
    return this.launch(entry);
  }

  status(): WorkerStatus[] {
    return [...this.managed.values()].map((m) => ({
      name: m.spec.name,
      domid: m.spec.domid,
      state: m.state,
      restarts: m.totalRestarts,
      threadId: m.worker?.threadId,
      lastError: m.lastError,
      info: m.info,
      stats: m.stats,
    }));
  }

  /** Asks a worker how it is; rejects if it does not answer within `timeoutMs`. */
  health(name: string, timeoutMs = 2000): Promise<HealthReport> {
    const entry = this.managed.get(name);
    if (!entry?.worker || entry.state !== 'ready') return Promise.reject(new Error(`${name} is not running`));
    const id = this.nextHealthId++;
    const worker = entry.worker;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.healthWaiters.delete(id);
        reject(new Error(`${name} did not answer a health check`));
      }, timeoutMs);
      this.healthWaiters.set(id, (report) => {
        clearTimeout(timer);
        resolve(report);
      });
      worker.postMessage(encodeEnvelope({ kind: 'health', id }));
    });
  }

  /**
   * Asks a worker what its role knows of `topic` (a kernel serving block
   * devices answers BLOCK_STATS_TOPIC); rejects if it is not running, does
   * not know the topic, or does not answer within `timeoutMs`.
   */
  query(name: string, topic: string, timeoutMs = 2000): Promise<unknown> {
    const entry = this.managed.get(name);
    if (!entry?.worker || entry.state !== 'ready') return Promise.reject(new Error(`${name} is not running`));
    const id = this.nextQueryId++;
    const worker = entry.worker;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.queryWaiters.delete(id);
        reject(new Error(`${name} did not answer the query '${topic}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.queryWaiters.set(id, (answer) => {
        clearTimeout(timer);
        if (answer.error !== undefined) reject(new Error(`${name} cannot answer '${topic}': ${answer.error}`));
        else resolve(answer.value);
      });
      worker.postMessage(encodeEnvelope({ kind: 'query', id, topic }));
    });
  }

  /**
   * Stops one role: asks it to finish, terminates it if it does not. A
   * second stop while one is under way waits for that one (a destroy
   * overlapping a reboot stops the same kernel twice); each settles.
   */
  stop(name: string, reason = 'stop requested'): Promise<void> {
    const entry = this.managed.get(name);
    if (!entry) return Promise.resolve();
    entry.stopping ??= this.stopEntry(entry, reason).finally(() => {
      if (this.managed.get(name) === entry) this.managed.delete(name);
    });
    return entry.stopping;
  }

  /**
   * Terminates a role's worker without asking it, as a crash would end it:
   * its restart policy applies. For tests of crash recovery.
   */
  async kill(name: string): Promise<void> {
    const worker = this.managed.get(name)?.worker;
    if (worker) await worker.terminate();
  }

  /** Stops every role, in the reverse of the order they were started. */
  async stopAll(reason = 'shutting down'): Promise<void> {
    this.shuttingDown = true;
    for (const name of [...this.managed.keys()].reverse()) await this.stop(name, reason);
  }

  /**
   * Terminates every worker at once without asking it to finish: what a
   * shutdown that ran out of time does with what is left. Stops under way
   * settle as their workers exit. Resolves with the roles it terminated.
   */
  async terminateAll(): Promise<string[]> {
    this.shuttingDown = true;
    const entries = [...this.managed.values()];
    this.managed.clear();
    await Promise.all(
      entries.map(async (entry) => {
        entry.state = 'stopping';
        entry.ready?.reject(new Error(`${entry.spec.name} was terminated before it was ready`));
        entry.ready = undefined;
        await entry.worker?.terminate();
        entry.state = 'stopped';
      }),
    );
    return entries.map((entry) => entry.spec.name);
  }

  private launch(entry: Managed): Promise<void> {
    const { spec } = entry;
    const boot: WorkerBoot = { name: spec.name, domid: spec.domid, shared: spec.shared };
    const worker = new Worker(spec.module, { workerData: boot, resourceLimits: spec.resourceLimits });
    entry.worker = worker;
    entry.state = 'starting';
    const ready = new Promise<void>((resolve, reject) => {
      entry.ready = { resolve, reject };
    });
    const timer = setTimeout(() => entry.ready?.reject(new Error(`${spec.name} did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    void ready.finally(() => clearTimeout(timer)).catch(() => {});
    // A worker's threadId reads -1 once it has exited; keep it for the exit report.
    const threadId = worker.threadId;
    worker.on('message', (data: unknown) => this.onMessage(entry, worker, data));
    worker.on('error', (err) => this.onCrash(entry, err.stack ?? err.message));
    worker.on('exit', (code) => this.onExit(entry, worker, threadId, code));
    worker.postMessage(encodeEnvelope({ kind: 'start', config: spec.config }));
    return ready;
  }

  private onMessage(entry: Managed, worker: Worker, data: unknown): void {
    if (entry.worker !== worker) return;
    let envelope: Envelope;
    try {
      envelope = decodeEnvelope(data);
    } catch (err) {
      log.warn(`${entry.spec.name} sent something that is not an envelope: ${(err as Error).message}`);
      return;
    }
    const { name, domid } = entry.spec;
    switch (envelope.kind) {
      case 'ready':
        entry.state = 'ready';
        entry.info = envelope.info;
        entry.ready?.resolve();
        entry.ready = undefined;
        this.emit('ready', name, envelope.info);
        break;
      case 'log':
        logLine(envelope.level as LogLevel, envelope.component, envelope.message, { domid, name: entry.spec.domainName });
        break;
      case 'stats':
        entry.stats = envelope.stats;
        this.emit('stats', name, envelope.stats);
        break;
      case 'health':
        if (envelope.report) this.healthWaiters.get(envelope.id)?.(envelope.report);
        this.healthWaiters.delete(envelope.id);
        break;
      case 'answer':
        this.queryWaiters.get(envelope.id)?.(envelope);
        this.queryWaiters.delete(envelope.id);
        break;
      case 'crash':
        this.onCrash(entry, envelope.stack ?? envelope.error);
        break;
      case 'stopped':
        entry.stopped?.();
        break;
      default:
        log.warn(`${name} sent an unexpected ${envelope.kind}`);
    }
  }

  private onCrash(entry: Managed, error: string): void {
    if (entry.state === 'stopping' || entry.state === 'stopped') return;
    entry.lastError = error;
    entry.state = 'crashed';
    log.error(`${entry.spec.name} (domain ${entry.spec.domid}) crashed: ${error}`);
    this.emit('crash', entry.spec.name, error);
  }

  private onExit(entry: Managed, worker: Worker, threadId: number, code: number): void {
    this.emit('exit', entry.spec.name, threadId);
    if (entry.worker !== worker) return;
    entry.worker = undefined;
    entry.stopped?.();
    if (entry.state === 'stopping' || entry.state === 'stopped') {
      entry.state = 'stopped';
      return;
    }
    if (entry.state !== 'crashed') this.onCrash(entry, `worker exited with code ${code}`);
    entry.ready?.reject(new Error(`${entry.spec.name} died while starting: ${entry.lastError}`));
    entry.ready = undefined;
    this.maybeRestart(entry);
  }

  private maybeRestart(entry: Managed): void {
    const policy = entry.spec.restart;
    if (this.shuttingDown || policy.kind === 'never') {
      entry.state = 'failed';
      return;
    }
    const now = Date.now();
    entry.restarts = entry.restarts.filter((at) => now - at < policy.windowMs);
    if (entry.restarts.length >= policy.maxRestarts) {
      entry.state = 'failed';
      log.error(`${entry.spec.name} failed ${policy.maxRestarts} times within ${policy.windowMs} ms: not restarting it`);
      return;
    }
    entry.restarts.push(now);
    entry.totalRestarts++;
    const attempt = entry.totalRestarts;
    setTimeout(() => {
      if (this.shuttingDown || this.managed.get(entry.spec.name) !== entry) return;
      log.info(`restarting ${entry.spec.name} (domain ${entry.spec.domid}), attempt ${attempt}`);
      this.emit('restart', entry.spec.name, attempt);
      this.launch(entry).catch((err: Error) => log.error(err.message));
    }, policy.delayMs);
  }

  private async stopEntry(entry: Managed, reason: string): Promise<void> {
    const worker = entry.worker;
    // A start waiting for this worker would otherwise wait for ever: a worker stopped while starting never says ready.
    entry.ready?.reject(new Error(`${entry.spec.name} was stopped before it was ready (${reason})`));
    entry.ready = undefined;
    if (!worker) {
      entry.state = 'stopped';
      return;
    }
    entry.state = 'stopping';
    const stopped = new Promise<void>((resolve) => (entry.stopped = resolve));
    worker.postMessage(encodeEnvelope({ kind: 'stop', reason }));
    const timeoutMs = entry.spec.stopTimeoutMs ?? STOP_TIMEOUT_MS;
    const timer = setTimeout(() => {
      log.warn(`${entry.spec.name} did not stop within ${timeoutMs} ms: terminating it`);
      void worker.terminate();
    }, timeoutMs);
    await stopped;
    clearTimeout(timer);
    await worker.terminate();
    entry.state = 'stopped';
  }
}
