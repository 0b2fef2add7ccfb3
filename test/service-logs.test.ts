/**
 * Logs for a log collector: with --log-format json every line `xenmesh
 * xenstored` and `xenmesh up` write is one JSON object with its time,
 * level, domain, component and message, and a worker's lines carry the
 * worker's domain. XENMESH_LOG that is not a level is said in one line.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { levelFromEnv } from '../shared/log.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));

interface LogRecord {
  time: string;
  level: string;
  domain: { domid: number; name?: string };
  component: string;
  msg: string;
}

/** Every line of `text`, parsed; a line that is not a log record fails the test with the line. */
function records(t: Test, text: string): LogRecord[] {
  const lines = text.split('\n').filter((line) => line !== '');
  const parsed: LogRecord[] = [];
  for (const line of lines) {
    let record: LogRecord;
    try {
      record = JSON.parse(line) as LogRecord;
    } catch {
      t.fail(`a line that is not JSON: ${line}`);
      continue;
    }
    const complete =
      typeof record.time === 'string' &&
      !Number.isNaN(Date.parse(record.time)) &&
      ['debug', 'info', 'warn', 'error'].includes(record.level) &&
      typeof record.domain?.domid === 'number' &&
      typeof record.component === 'string' &&
      typeof record.msg === 'string';
    if (!complete) t.fail(`a record without time, level, domain, component or msg: ${line}`);
    parsed.push(record);
  }
  return parsed;
}

/** Runs xenmesh with stdin closed until `until` is seen on stderr, then sends SIGTERM; resolves with what it wrote. */
function runUntil(args: string[], env: NodeJS.ProcessEnv, until: RegExp): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [XENMESH, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  let signalled = false;
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const check = () => {
    if (!signalled && until.test(stdout + stderr)) {
      signalled = true;
      child.kill('SIGTERM');
    }
  };
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    check();
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    check();
  });
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}

t.test('XENMESH_LOG: a level, in any case, or a one-line warning', async (t) => {
  t.same(levelFromEnv(undefined), { level: 'info' });
  t.same(levelFromEnv('DEBUG'), { level: 'debug' });
  t.same(levelFromEnv(' warn '), { level: 'warn' });
  for (const bad of ['verbose', '3', 'info,debug']) {
    const { level, warning } = levelFromEnv(bad);
    t.equal(level, 'info', `'${bad}' logs at info`);
    t.match(warning, new RegExp(`^XENMESH_LOG='${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' is not a log level`), `and says why ('${bad}')`);
    t.notMatch(warning, /\n/, 'in one line');
  }
});

t.test('xenmesh xenstored --log-format json: every line a record of dom0', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-logs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const result = await runUntil(
    ['xenstored', '--socket', join(dir, 'socket'), '--log-format', 'json'],
    { ...process.env, XENMESH_LOG: 'chatty' },
    /serving xenstore/,
  );
  t.equal(result.code, 0, 'it stops cleanly', { stderr: result.stderr });
  const logged = records(t, result.stderr);
  t.ok(logged.some((r) => r.component === 'xenstored' && r.level === 'info' && /^serving xenstore on /.test(r.msg)), 'it says it serves');
  t.ok(logged.some((r) => r.level === 'warn' && /XENMESH_LOG='chatty' is not a log level/.test(r.msg)), 'the bad XENMESH_LOG is a warning, in JSON too');
  t.ok(logged.every((r) => r.domain.domid === 0 && r.domain.name === 'Domain-0'), 'every line is dom0\'s');
  t.ok(logged.some((r) => r.msg === 'SIGTERM: stopping'), 'and says it stops');
});

t.test('xenmesh xenstored --log-format refuses what is not a format, in one line', async (t) => {
  for (const bad of ['yaml', '']) {
    const result = await runUntil(['xenstored', '--socket', join(tmpdir(), 'never-made'), '--log-format', bad], process.env, /$^/);
    t.equal(result.code, 1, `'${bad}' is refused`);
    t.equal(result.stderr, `xenmesh xenstored: --log-format is text or json, not '${bad}'\n`);
  }
});

t.test('xenmesh up --log-format json: lines from the workers carry their domains', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-logs-up-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  const result = await runUntil(
    ['up', '--socket', socket, '--log-format', 'json'],
    { ...process.env, XDG_DATA_HOME: dir, XENMESH_LOG: 'debug' },
    /Running\. Ctrl-C/,
  );
  t.equal(result.code, 0, 'it boots and stops', { stderr: result.stderr });
  t.notOk(existsSync(socket), 'and leaves no socket');
  const logged = records(t, result.stderr);
  t.ok(logged.length > 0, 'it logs');
  const xenstored = logged.filter((r) => r.component === 'xenstored');
  t.ok(xenstored.length > 0 && xenstored.every((r) => r.domain.domid === 0), "xenstored's worker speaks as dom0");
  const fromDomains = logged.filter((r) => r.domain.domid !== 0);
  t.ok(fromDomains.length > 0, 'lines come from the other domains', { components: [...new Set(logged.map((r) => `${r.component} d${r.domain.domid}`))] });
  // `xenmesh up` creates the driver domain first (domid 1), then the guest (domid 2).
  const expected: Record<number, string> = { 1: 'driver', 2: 'guest' };
  const misnamed = fromDomains.filter((r) => expected[r.domain.domid] !== r.domain.name);
  t.same(misnamed, [], 'each named as the toolstack named it');
});
