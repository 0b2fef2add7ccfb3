/**
 * Minimal leveled logging to stderr. Every line names its component so that
 * logs from many workers of the mesh stay readable when interleaved.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const LEVEL_ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

function thresholdFromEnv(): number {
  const wanted = (process.env['XENMESH_LOG'] ?? 'info') as LogLevel;
  return LEVEL_ORDER[wanted] ?? LEVEL_ORDER.info;
}

export type LogSink = (level: LogLevel, component: string, message: string) => void;

/** Where a finished line (newline included) goes in the thread that prints it. */
export type LogWriter = (line: string) => void;

const writeToStderr: LogWriter = (line) => {
  process.stderr.write(line);
};

let threshold = thresholdFromEnv();
let writer: LogWriter = writeToStderr;
let sink: LogSink = (level, component, message) => {
  writer(`${new Date().toISOString()} ${level.padEnd(5)} [${component}] ${message}\n`);
};

/**
 * Replaces where the main thread's finished lines are written (workers'
 * lines reach it through the supervisor); `undefined` puts stderr back.
 * A terminal prompt uses it to print log lines above itself.
 */
export function setLogWriter(newWriter: LogWriter | undefined): void {
  writer = newWriter ?? writeToStderr;
}

/** Replaces where log lines go (a worker forwards them to the supervisor). */
export function setLogSink(newSink: LogSink): void {
  sink = newSink;
}

export function setLogLevel(level: LogLevel): void {
  threshold = LEVEL_ORDER[level];
}

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export function createLogger(component: string): Logger {
  const emit = (level: LogLevel) => (message: string) => {
    if (LEVEL_ORDER[level] >= threshold) sink(level, component, message);
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}
