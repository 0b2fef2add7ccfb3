import type { Test } from 'tap';
import { setLogSink, type LogSink } from '../../shared/log.js';

/** Captures log lines for the duration of a test, then writes them to stderr again. */
export function captureLogs(t: Test): string[] {
  const lines: string[] = [];
  const sink: LogSink = (level, component, message, domain) => lines.push(`${level} [${component}${domain ? ` d${domain.domid}` : ''}] ${message}`);
  setLogSink(sink);
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  return lines;
}
