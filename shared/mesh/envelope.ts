import { Packr } from 'msgpackr';

/**
 * The mesh plane's messages: supervision between the supervisor (main
 * thread) and its workers, encoded with msgpackr and posted over the
 * workers' MessagePorts. Nothing a request needs travels here; this is
 * start and stop, health, logs, statistics, queries and crash reports.
 */
export type Envelope =
  /** Supervisor to worker: begin, with the role's configuration. */
  | { kind: 'start'; config: unknown }
  /** Worker to supervisor: it serves, with whatever it wants known (a socket path, a port). */
  | { kind: 'ready'; info: unknown }
  /** Supervisor to worker: finish cleanly. */
  | { kind: 'stop'; reason: string }
  /** Worker to supervisor: it has stopped and may be terminated. */
  | { kind: 'stopped' }
  /** Supervisor to worker: are you alive? Worker to supervisor: the answer. */
  | { kind: 'health'; id: number; report?: HealthReport }
  | { kind: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; component: string; message: string }
  | { kind: 'stats'; stats: Record<string, number | string> }
  /** Supervisor to worker: what does the role know of `topic` (its block devices' counters)? */
  | { kind: 'query'; id: number; topic: string }
  /** Worker to supervisor: the query's answer, or why there is none. */
  | { kind: 'answer'; id: number; value?: unknown; error?: string }
  /** Worker to supervisor: it is about to die of this. */
  | { kind: 'crash'; error: string; stack: string | undefined };

export interface HealthReport {
  uptimeMs: number;
  heapUsed: number;
  /** Role-specific figures: connections, requests, devices. */
  detail: Record<string, number | string>;
}

const packr = new Packr({ useRecords: false, moreTypes: false });

export function encodeEnvelope(envelope: Envelope): Uint8Array {
  return packr.pack(envelope);
}

/** Decodes an envelope; anything that is not one is refused with an Error. */
export function decodeEnvelope(data: unknown): Envelope {
  if (!(data instanceof Uint8Array)) throw new Error('mesh message is not an encoded envelope');
  const value = packr.unpack(data) as Envelope;
  if (!value || typeof value !== 'object' || typeof (value as { kind?: unknown }).kind !== 'string') {
    throw new Error('mesh message has no kind');
  }
  return value;
}
