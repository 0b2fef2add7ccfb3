import { parentPort, workerData } from 'node:worker_threads';
import { createLogger, setLogSink, type Logger } from '../log.js';
import { decodeEnvelope, encodeEnvelope, type Envelope } from './envelope.js';

/** What the supervisor hands a worker besides envelopes (shared memory cannot go through msgpackr). */
export interface WorkerBoot {
  name: string;
  domid: number;
  /** Structured-clone data: the platform descriptor with its SharedArrayBuffers. */
  shared: unknown;
}

export interface RoleContext<C> {
  readonly name: string;
  readonly domid: number;
  readonly config: C;
  readonly shared: unknown;
  readonly log: Logger;
  /** Publishes figures the supervisor shows (connections, requests, devices). */
  stats(stats: Record<string, number | string>): void;
}

/** A running role: how to stop it and what to say about its health. */
export interface RoleInstance {
  stop(reason: string): Promise<void>;
  health?(): Record<string, number | string>;
  /** What the supervisor should know once it is ready (a socket path, a port). */
  readonly info?: unknown;
  /**
   * Answers the supervisor's query about `topic` (structured data msgpackr
   * encodes); throws for a topic the role does not know.
   */
  query?(topic: string): unknown;
}

/**
 * The worker side of supervision: waits for `start`, runs the role, says
 * `ready`, answers `health`, forwards its logs, and on `stop` finishes and
 * says `stopped`. An exception nobody caught is reported as a crash before
 * the worker dies, so that the supervisor can log it with its domain and
 * restart it.
 */
export function runRole<C>(start: (ctx: RoleContext<C>) => Promise<RoleInstance>): void {
  const port = parentPort;
  if (!port) throw new Error('a role runs in a worker thread');
  const boot = workerData as WorkerBoot;
  const send = (envelope: Envelope) => port.postMessage(encodeEnvelope(envelope));
  const began = Date.now();
  setLogSink((level, component, message) => send({ kind: 'log', level, component, message }));
  const log = createLogger(boot.name);

  const crash = (err: unknown) => {
    const error = err instanceof Error ? err : new Error(String(err));
    send({ kind: 'crash', error: error.message, stack: error.stack });
    process.exit(1);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);

  let instance: RoleInstance | undefined;
  /** A query's answer, or why there is none: never a crash of the role. */
  const answer = (id: number, topic: string) => {
    const role = instance;
    void (async () => {
      if (!role?.query) throw new Error(`${boot.name} answers no queries${role ? '' : ' yet'}`);
      return role.query(topic);
    })().then(
      (value) => send({ kind: 'answer', id, value }),
      (err: unknown) => send({ kind: 'answer', id, error: err instanceof Error ? err.message : String(err) }),
    );
  };
  port.on('message', (data: unknown) => {
    let envelope: Envelope;
    try {
      envelope = decodeEnvelope(data);
    } catch (err) {
      log.warn(`ignoring a mesh message: ${(err as Error).message}`);
      return;
    }
    switch (envelope.kind) {
      case 'start':
        start({
          name: boot.name,
          domid: boot.domid,
          config: envelope.config as C,
          shared: boot.shared,
          log,
          stats: (stats) => send({ kind: 'stats', stats }),
        }).then((running) => {
          instance = running;
          send({ kind: 'ready', info: running.info ?? null });
        }, crash);
        break;
      case 'health':
        send({
          kind: 'health',
          id: envelope.id,
          report: { uptimeMs: Date.now() - began, heapUsed: process.memoryUsage().heapUsed, detail: instance?.health?.() ?? {} },
        });
        break;
      case 'query':
        answer(envelope.id, envelope.topic);
        break;
      case 'stop':
        (instance ? instance.stop(envelope.reason) : Promise.resolve()).then(() => {
          send({ kind: 'stopped' });
          port.close();
        }, crash);
        break;
      default:
        log.warn(`unexpected ${envelope.kind} message`);
    }
  });
}
