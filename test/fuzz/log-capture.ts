/**
 * The log lines of the code under fuzzing, captured instead of printed:
 * fuzzing makes the daemon and the backend log every refusal, which would
 * bury the report, and an internal error they log (an exception caught and
 * turned into EIO or a dropped client) is itself a defect the fuzzer
 * reports.
 */
import { setLogSink, type LogLevel } from '../../shared/log.js';

export interface LogLine {
  readonly level: LogLevel;
  readonly component: string;
  readonly message: string;
}

/** What a caught exception looks like in the logs of xenstored and the block backend. */
const INTERNAL_ERROR = /internal error|TypeError|RangeError|ReferenceError|is not a function|Cannot read propert/;

/** Lines kept for a report: the latest ones. */
const KEEP = 200;

export class LogCapture {
  private lines: LogLine[] = [];
  private internal: LogLine[] = [];

  /** Routes every log line here from now on. */
  install(): void {
    setLogSink((level, component, message) => {
      const line = { level, component, message };
      this.lines.push(line);
      if (this.lines.length > KEEP) this.lines.shift();
      if ((level === 'error' || level === 'warn') && INTERNAL_ERROR.test(message)) this.internal.push(line);
    });
  }

  /** Starts a new batch: forgets earlier lines. */
  reset(): void {
    this.lines = [];
    this.internal = [];
  }

  /** Internal errors logged since the last reset. */
  get internalErrors(): readonly LogLine[] {
    return this.internal;
  }

  /** The latest warnings and errors, for a report. */
  recentProblems(count = 12): string[] {
    return this.lines
      .filter((l) => l.level === 'warn' || l.level === 'error')
      .slice(-count)
      .map(format);
  }
}

export function format(line: LogLine): string {
  return `${line.level} [${line.component}] ${line.message.split('\n')[0]}`;
}
