/**
 * Leveled logging. Every line names its domain and its component, so that
 * the lines of many workers of the mesh stay readable when interleaved.
 *
 * A worker replaces the sink (setLogSink) to forward its lines to the
 * supervisor, which knows the worker's domain and logs them again in the
 * main thread with it. The main thread formats each line, as text for a
 * terminal or as pino's JSON for a log collector (setLogFormat), and hands
 * the finished line to its writer (setLogWriter: stderr unless the host's
 * prompt takes it, to print lines above itself).
 */
import { isMainThread } from 'node:worker_threads';
import { pino, type Logger as PinoLogger } from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'text' | 'json';

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

/** The environment variable that sets the threshold: debug, info, warn or error. */
export const LOG_LEVEL_ENV = 'XENMESH_LOG';

const LEVEL_ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const DEFAULT_LEVEL: LogLevel = 'info';

/** The domain a line comes from: its domid, and its name where known. */
export interface LogDomain {
  readonly domid: number;
  readonly name?: string;
}

/**
 * Where lines go. `domain` is given for a line logged on behalf of another
 * domain (a worker's, forwarded by the supervisor); without it the line is
 * this process's own (setLogDomain).
 */
export type LogSink = (level: LogLevel, component: string, message: string, domain?: LogDomain) => void;

/** Takes one finished line, with its newline. */
export type LogWriter = (line: string) => void;

export function isLogLevel(word: string): word is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(word);
}

export function isLogFormat(word: string): word is LogFormat {
  return (LOG_FORMATS as readonly string[]).includes(word);
}

/** The threshold XENMESH_LOG asks for, and a warning when it asks for something that is not a level. */
export function levelFromEnv(value: string | undefined): { level: LogLevel; warning?: string } {
  if (value === undefined || value.trim() === '') return { level: DEFAULT_LEVEL };
  const wanted = value.trim().toLowerCase();
  if (isLogLevel(wanted)) return { level: wanted };
  return {
    level: DEFAULT_LEVEL,
    warning: `${LOG_LEVEL_ENV}='${value}' is not a log level (${LOG_LEVELS.join(', ')}): logging at ${DEFAULT_LEVEL}`,
  };
}

const fromEnv = levelFromEnv(process.env[LOG_LEVEL_ENV]);
let threshold = LEVEL_ORDER[fromEnv.level];
// Said once, by the main thread (every worker reads the same environment), with the first line.
let pendingWarning = isMainThread ? fromEnv.warning : undefined;

let format: LogFormat = 'text';
let ownDomain: LogDomain = { domid: 0, name: 'Domain-0' };
const writeToStderr: LogWriter = (line) => {
  process.stderr.write(line);
};
let writer: LogWriter = writeToStderr;

/**
 * pino, in the main thread only, writing synchronously through the writer
 * (no transport: a transport starts a thread of its own). It passes every
 * level: the threshold is applied before a line reaches it.
 */
let json: PinoLogger<never, boolean> | undefined;
function jsonLogger(): PinoLogger<never, boolean> {
  json ??= pino(
    {
      level: 'debug',
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    { write: (line: string) => writer(line) },
  );
  return json;
}

/** The main thread's sink: the line formatted as asked and handed to the writer. */
export const defaultLogSink: LogSink = (level, component, message, domain = ownDomain) => {
  if (format === 'json') {
    jsonLogger()[level]({ domain: { domid: domain.domid, ...(domain.name ? { name: domain.name } : {}) }, component }, message);
    return;
  }
  const where = domain.name ? `d${domain.domid} ${domain.name}` : `d${domain.domid}`;
  writer(`${new Date().toISOString()} ${level.padEnd(5)} [${where}] [${component}] ${message}\n`);
};

let sink: LogSink = defaultLogSink;

/** Replaces where log lines go (a worker forwards them to the supervisor). */
export function setLogSink(newSink: LogSink): void {
  sink = newSink;
}

/** Replaces what writes the main thread's finished lines (stderr by default). */
/**
 * Replaces where the main thread's finished lines are written (workers'
 * lines reach it through the supervisor); `undefined` puts stderr back.
 * A terminal prompt uses it to print log lines above itself.
 */
export function setLogWriter(newWriter: LogWriter | undefined): void {
  writer = newWriter ?? writeToStderr;
}

export function setLogLevel(level: LogLevel): void {
  threshold = LEVEL_ORDER[level];
}

export function setLogFormat(newFormat: LogFormat): void {
  format = newFormat;
}

/** The domain this process runs in, named on its own lines. */
export function setLogDomain(domain: LogDomain): void {
  ownDomain = domain;
}

/** Logs one line at `level`, on behalf of `domain` if it is not this process's own. */
export function logLine(level: LogLevel, component: string, message: string, domain?: LogDomain): void {
  if (LEVEL_ORDER[level] < threshold) return;
  if (pendingWarning !== undefined) {
    const warning = pendingWarning;
    pendingWarning = undefined;
    sink('warn', 'log', warning);
  }
  sink(level, component, message, domain);
}

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export function createLogger(component: string): Logger {
  const emit = (level: LogLevel) => (message: string) => logLine(level, component, message);
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}

/** Applies a command's `--log-format` value; the one-line reason when it is not a format. */
export function applyLogFormatOption(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (!isLogFormat(value)) return `--log-format is ${LOG_FORMATS.join(' or ')}, not '${value}'`;
  setLogFormat(value);
  return undefined;
}

/** What the commands' usage says of --log-format and XENMESH_LOG. */
export const LOG_OPTIONS_USAGE = `  --log-format json|text
                  json: one JSON object a line (pino's: time, level, domain,
                  component, msg) for a log collector; text (the default):
                  one readable line each. ${LOG_LEVEL_ENV}=debug|info|warn|error
                  sets the threshold (default ${DEFAULT_LEVEL})`;
