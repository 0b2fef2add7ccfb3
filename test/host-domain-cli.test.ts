/**
 * Driving the domains of a running `xenmesh up` as a user does: with
 * `xenmesh domain <action> <domain>` over the host's toolstack socket, with
 * raw JSON lines on that socket, and with commands typed (here piped) at the
 * host's prompt; refusals are clear and never take the host down.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DomainActionError, type ToolstackAction, type DomainActionOptions } from '../control/actions.js';
import { SHUTDOWN_TIMEOUT_MS } from '../host/machine/host.js';
import { MAX_LINE_LENGTH, OWN_VERSION, toolstackSocketPath } from '../host/cli/toolstack-protocol.js';
import { ToolstackServer } from '../host/cli/toolstack-server.js';
import { run, waitFor } from './helpers/daemon.js';
import { leaveStaleSocket } from './helpers/stale-socket.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
/** The line `xenmesh up` prints once the host runs. */
const RUNNING = 'Ctrl-C or SIGTERM stops the host';
const BOOT_TIMEOUT_MS = 30_000;
/** How long a domain gets to come back, or go, after the command returned. */
const SETTLE_TIMEOUT_MS = 20_000;
/** The guest's disk, xvda. */
const GUEST_VBD = 51712;
/** The size of the guest's disk image: 64 MiB, sparse. */
const GUEST_IMAGE_BYTES = 64 * 1024 * 1024;

/** Creates (or empties and sizes again) the guest's image, sparse. */
function makeImage(path: string): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, GUEST_IMAGE_BYTES);
  closeSync(fd);
}

interface RunningHost {
  child: ChildProcess;
  socket: string;
  /** The guest's disk image. */
  image: string;
  toolstack: string;
  stdout(): string;
  stderr(): string;
  exit: Promise<number | null>;
  /** Runs `xenmesh domain` against this host. */
  domain(...args: string[]): ReturnType<typeof run>;
  /** Runs a xenstore tool against this host's xenstored. */
  xenstore(tool: string, ...args: string[]): ReturnType<typeof run>;
}

/** Boots `xenmesh up` in a fresh temporary directory and waits until it runs. */
async function startHost(t: Test, stdin: 'ignore' | 'pipe'): Promise<RunningHost> {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-domain-'));
  const socket = join(dir, 'socket');
  const image = join(dir, 'guest.img');
  makeImage(image);
  const child = spawn(process.execPath, [XENMESH, 'up', '--socket', socket, '--image', image], { stdio: [stdin, 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await waitFor(() => stdout.includes(RUNNING) || child.exitCode !== null, 'the host to run', BOOT_TIMEOUT_MS).catch(() => {});
  if (!stdout.includes(RUNNING)) throw new Error(`the host did not come up:\n${stdout}\n${stderr}`);
  const env = { XENSTORED_PATH: socket };
  return {
    child,
    socket,
    image,
    toolstack: toolstackSocketPath(socket),
    stdout: () => stdout,
    stderr: () => stderr,
    exit,
    domain: (...args) => run(process.execPath, [XENMESH, 'domain', ...args, '--socket', socket]),
    xenstore: (tool, ...args) => run(tool, args, env),
  };
}

/** Polls an asynchronous condition (a xenstore tool's answer) until it holds. */
async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = SETTLE_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The domid of the domain xenstore knows by that name, if any. */
async function domidNamed(host: RunningHost, name: string): Promise<string | undefined> {
  const list = await host.xenstore('xenstore-list', '/local/domain');
  for (const domid of list.stdout.split('\n').filter(Boolean)) {
    if ((await host.xenstore('xenstore-read', `/local/domain/${domid}/name`)).stdout === `${name}\n`) return domid;
  }
  return undefined;
}

/** Sends raw text on a toolstack socket and collects every line the host answers until it hangs up. */
function exchange(path: string, text: string, expectedLines: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    let received = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer in time; got ${JSON.stringify(received)}`));
    }, SETTLE_TIMEOUT_MS);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(text));
    socket.on('data', (chunk: string) => {
      received += chunk;
      if (received.split('\n').length > expectedLines) socket.end();
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(received.split('\n').filter(Boolean));
    });
  });
}

/** A reply line, without the version every reply carries (checked in toolstack-protocol.test.ts). */
const parse = (line: string | undefined) => {
  const { version: _version, ...reply } = JSON.parse(line ?? 'null') as { version: unknown; ok: boolean; message?: string; error?: string };
  return reply;
};

t.test('xenmesh domain --help', async (t) => {
  const help = await run(process.execPath, [XENMESH, 'domain', '--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /^Usage: xenmesh domain <action> <domain>/);
  for (const action of ['shutdown', 'reboot', 'halt', 'suspend', 'resume', 'pause', 'unpause', 'destroy', 'sysrq']) t.match(help.stdout, new RegExp(`^  ${action} <domain>`, 'm'), `it lists ${action}`);
  for (const option of ['--socket PATH', '--timeout SECONDS', '--halt', '--backend DOMAIN']) t.match(help.stdout, option, `and ${option}`);
  t.match(help.stdout, '/var/run/xenstored/socket', 'with the default socket of xenmesh up');
  const top = await run(process.execPath, [XENMESH, '--help']);
  t.match(top.stdout, /^  domain +/m, 'xenmesh --help lists the command');
});

t.test('bad arguments are refused with the usage', async (t) => {
  const cases: [string[], RegExp][] = [
    [['frobnicate', 'guest'], /^xenmesh domain: unknown action 'frobnicate'; the actions are shutdown, reboot/],
    [['reboot'], /^xenmesh domain: reboot needs a domain/],
    [[], /^xenmesh domain: which action\?/],
    [['sysrq', 'guest'], /^xenmesh domain: sysrq needs a key/],
    [['sysrq', 'guest', 'ab'], /^xenmesh domain: a SysRq key is one printable character, such as s or b; "ab" is not$/m],
    [['sysrq', 'guest', '\x01'], /^xenmesh domain: a SysRq key is one printable character, such as s or b; "\\u0001" is not$/m],
    [['sysrq', 'guest', 'é'], /^xenmesh domain: a SysRq key is one printable character, such as s or b; "é" is not$/m],
    [['reboot', 'guest', 'extra'], /^xenmesh domain: unexpected argument 'extra'/],
    [['reboot', 'guest', '--halt'], /^xenmesh domain: --halt goes with shutdown only/],
    [['shutdown', 'guest', '--backend', 'driver'], /^xenmesh domain: --backend goes with resume only/],
    [['shutdown', 'guest', '--timeout', 'soon'], /^xenmesh domain: --timeout must be a positive number/],
    [['shutdown', 'guest', '--timeout', '-5'], /^xenmesh domain: --timeout must be a positive number of seconds$/m],
    [['shutdown', 'guest', '--timeout'], /^xenmesh domain: option '--timeout <seconds>' argument missing$/m],
    [['shutdown', 'guest', '--bogus'], /^xenmesh domain: .*'--bogus'/],
  ];
  for (const [args, error] of cases) {
    const result = await run(process.execPath, [XENMESH, 'domain', ...args]);
    t.equal(result.code, 1, `${args.join(' ') || '(nothing)'}: exit status 1`);
    t.match(result.stderr, error, 'says what is wrong');
    t.match(result.stderr, /\nUsage: xenmesh domain /, 'and shows the usage');
    t.equal(result.stdout, '', 'and prints nothing else');
  }
});

t.test('no host on the socket', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-domain-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'socket');
  const result = await run(process.execPath, [XENMESH, 'domain', 'shutdown', 'guest', '--socket', socket]);
  t.equal(result.code, 1);
  t.match(result.stderr, `xenmesh domain: no xenmesh host is running on ${socket}`, 'it says no host runs there');
  t.match(result.stderr, `${socket}.toolstack`, 'and where it looked');
  // A socket file left by a host that died is no host either.
  writeFileSync(`${socket}.toolstack`, '');
  const stale = await run(process.execPath, [XENMESH, 'domain', 'shutdown', 'guest', '--socket', socket]);
  t.equal(stale.code, 1);
  t.match(stale.stderr, 'xenmesh domain: no xenmesh host is running on');
});

t.test('the toolstack socket, in process', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-toolstack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'socket.toolstack');
  leaveStaleSocket(path);
  const asked: string[] = [];
  const control = async (action: ToolstackAction, domain: string | undefined, options: DomainActionOptions) => {
    asked.push(`${action} ${domain} ${JSON.stringify(options)}`);
    if (domain === 'slow') await new Promise((resolve) => setTimeout(resolve, 300));
    if (domain === 'nosuch') throw new DomainActionError(`no domain '${domain}'`);
    if (domain === 'broken') throw new Error('the toolstack broke');
    return `${action} ${domain}: done`;
  };
  const server = new ToolstackServer(control, path);
  await server.listen();
  t.teardown(() => server.close());

  const request = (action: string, domain: unknown, options?: object) => `${JSON.stringify({ version: OWN_VERSION, action, domain, options })}\n`;
  const [slow, fast] = await Promise.all([
    exchange(path, request('reboot', 'slow'), 1).then((lines) => ({ lines, at: Date.now() })),
    exchange(path, request('destroy', 'fast'), 1).then((lines) => ({ lines, at: Date.now() })),
  ]);
  t.same(parse(slow.lines[0]), { ok: true, message: 'reboot slow: done' }, 'clients are answered');
  t.same(parse(fast.lines[0]), { ok: true, message: 'destroy fast: done' });
  t.ok(fast.at < slow.at, 'and do not wait for each other');

  const several = await exchange(
    path,
    [request('reboot', 'slow'), request('shutdown', 2, { halt: true, timeoutMs: 5000 }), request('resume', 'x', { backend: 'driver' }), request('sysrq', 'x', { key: 's' })].join(''),
    4,
  );
  t.same(
    several.map((line) => parse(line).message),
    ['reboot slow: done', 'shutdown 2: done', 'resume x: done', 'sysrq x: done'],
    'several requests on one connection are answered in order, a domid as a number too',
  );
  t.same(asked.slice(-3), ['shutdown 2 {"halt":true,"timeoutMs":5000}', 'resume x {"backend":"driver"}', 'sysrq x {"key":"s"}'], 'with their options');

  const refusals = await exchange(
    path,
    [
      '{"action": "reboot", "domain": \n',
      '[1, 2]\n',
      request('frobnicate', 'guest'),
      request('reboot', ''),
      request('reboot', 'guest', { hald: true }),
      request('shutdown', 'guest', { halt: 'yes' }),
      request('shutdown', 'guest', { timeoutMs: -1 }),
      `${JSON.stringify({ version: OWN_VERSION, action: 'reboot', domain: 'guest', extra: 1 })}\n`,
      request('reboot', 'nosuch'),
      request('reboot', 'broken'),
    ].join(''),
    10,
  );
  t.same(
    refusals.map((line) => parse(line).ok),
    Array(10).fill(false),
    'bad requests and refusals get an error answer each',
  );
  const errors = refusals.map((line) => parse(line).error);
  t.match(errors, [/not valid JSON/, /a request is a JSON object/, /unknown action "frobnicate"; the actions are/, /"domain" must name a domain/, /unknown option 'hald'/, /option 'halt' must be a boolean/, /'timeoutMs' must be a positive number/, /unknown field 'extra'/, /^no domain 'nosuch'$/, /^the toolstack broke$/]);

  const long = await exchange(path, 'x'.repeat(MAX_LINE_LENGTH + 10), 1);
  t.match(parse(long[0]).error, /longer than/, 'a line without end is refused, and the connection closed');

  const unterminated = await new Promise<string>((resolve, reject) => {
    const socket = createConnection(path, () => socket.end(request('destroy', 'last').trimEnd()));
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('end', () => resolve(received));
    socket.on('error', reject);
  });
  t.same(parse(unterminated.trim()), { ok: true, message: 'destroy last: done' }, 'a client that closes its end after its request still gets the answer');

  t.same(parse((await exchange(path, request('destroy', 'again'), 1))[0]), { ok: true, message: 'destroy again: done' }, 'and the server still serves');
  await server.close();
  t.notOk(existsSync(path), 'closing removes the socket file');
});

t.test('xenmesh domain against a running host', async (t) => {
  const host = await startHost(t, 'ignore');
  t.match(host.stdout(), `The toolstack is listening on ${host.toolstack}`, 'xenmesh up says where the toolstack listens');
  t.ok(existsSync(host.toolstack), 'next to xenstored\'s socket');

  t.test('an unknown domain is refused clearly', async (t) => {
    const result = await host.domain('reboot', 'nosuch');
    t.equal(result.code, 1);
    t.match(result.stderr, /^xenmesh domain: .*'?nosuch'?/, 'the error names the domain');
    t.notMatch(result.stderr, /not implemented|Error:|\n +at /, 'as a sentence, not a stack');
    t.equal(result.stdout, '');
  });

  t.test('bad JSON on the socket gets an error answer and the host serves on', async (t) => {
    const [bad, alsoBad] = await Promise.all([
      exchange(host.toolstack, `{"action": "reboot"\n${JSON.stringify({ version: OWN_VERSION, action: 'frobnicate', domain: 'guest' })}\n`, 2),
      exchange(host.toolstack, 'not json at all\n', 1),
    ]);
    t.match(parse(bad[0]), { ok: false, error: /not valid JSON/ }, 'bad JSON is answered with an error');
    t.match(parse(bad[1]), { ok: false, error: /unknown action "frobnicate"/ }, 'so is an unknown action, on the same connection');
    t.match(parse(alsoBad[0]), { ok: false, error: /not valid JSON/ }, 'several clients at once');
    t.equal(host.child.exitCode, null, 'the host still runs');
    const again = await host.domain('reboot', 'nosuch');
    t.equal(again.code, 1);
    t.match(again.stderr, /nosuch/, 'and still answers');
  });

  t.test('reboot brings the guest back with its disk', async (t) => {
    const result = await host.domain('reboot', 'guest');
    t.equal(result.code, 0, 'exit status 0', { stderr: result.stderr });
    t.match(result.stdout, /guest/, 'it says what happened to the guest');
    let domid: string | undefined;
    await eventually('a running guest with its disk Connected', async () => {
      domid = await domidNamed(host, 'guest');
      if (domid === undefined) return false;
      return (await host.xenstore('xenstore-read', `/local/domain/${domid}/device/vbd/${GUEST_VBD}/state`)).stdout === '4\n';
    });
    t.ok(domid, `the guest runs again as domain ${domid}, its disk Connected`);
  });

  t.test('shutdown takes the guest away', async (t) => {
    const domid = await domidNamed(host, 'guest');
    t.ok(domid, 'there is a guest to shut down');
    const result = await host.domain('shutdown', 'guest');
    t.equal(result.code, 0, 'exit status 0', { stderr: result.stderr });
    t.match(result.stdout, /guest/, 'it says what happened to the guest');
    await eventually(`/local/domain/${domid} to go`, async () => (await host.xenstore('xenstore-exists', `/local/domain/${domid}`)).code !== 0);
    t.pass(`/local/domain/${domid} is gone`);
    t.equal(await domidNamed(host, 'guest'), undefined, 'no domain is named guest any more');
    t.equal(host.child.exitCode, null, 'the host runs on');
  });

  t.test('SIGTERM stops the host and removes the toolstack socket', async (t) => {
    host.child.kill('SIGTERM');
    t.equal(await host.exit, 0);
    t.notOk(existsSync(host.toolstack), 'the toolstack socket is gone');
    t.notOk(existsSync(host.socket), 'and xenstored\'s');
  });
});

t.test('a disk whose image went away: resume and reboot refuse, saying so, before a domain runs without it', async (t) => {
  const host = await startHost(t, 'ignore');
  const suspended = await host.domain('suspend', 'guest');
  t.equal(suspended.code, 0, 'the guest suspends', { stderr: suspended.stderr });
  rmSync(host.image);

  const refused = await host.domain('resume', 'guest');
  t.equal(refused.code, 1, 'resume: exit status 1');
  t.equal(refused.stderr, `xenmesh domain: domain guest (2) stays suspended: disk xvda: ${host.image} does not exist\n`, 'resume: one line naming the disk, its image and what is wrong');
  t.equal((await host.xenstore('xenstore-exists', `/local/domain/1/backend/vbd/2/${GUEST_VBD}`)).code, 1, 'resume: no backend was given to the disk');

  makeImage(host.image);
  const resumed = await host.domain('resume', 'guest');
  t.equal(resumed.code, 0, 'with the image back, resume works', { stderr: resumed.stderr });
  t.match(resumed.stdout, /resumed; 2 device\(s\) reconnected/);

  rmSync(host.image);
  writeFileSync(host.image, '');
  const rebooted = await host.domain('reboot', 'guest');
  t.equal(rebooted.code, 1, 'reboot: exit status 1');
  t.equal(
    rebooted.stderr,
    `xenmesh domain: domain guest (2) shut down to reboot, but was not started again: disk xvda: ${host.image} is empty (a disk needs at least one 512-byte sector)\n`,
    'reboot: one line naming the disk, its image and what is wrong',
  );
  t.equal(await domidNamed(host, 'guest'), undefined, 'reboot: no guest was created without its disk');
  t.equal(host.child.exitCode, null, 'the host runs on');
  t.equal((await host.xenstore('xenstore-read', '/local/domain/1/name')).stdout, 'driver\n', 'with the driver domain');
});

t.test('SIGTERM during a reboot: the host exits in bounded time, and the reboot is answered', async (t) => {
  const host = await startHost(t, 'ignore');
  const rebooting = host.domain('reboot', 'guest');
  // The moment the toolstack begins the reboot: the guest has shut down and is about to be destroyed and built again.
  await waitFor(() => /domain guest \(2\) shut down: reboot/.test(host.stderr()), 'the guest to shut down for reboot', SETTLE_TIMEOUT_MS);
  const signalled = Date.now();
  host.child.kill('SIGTERM');
  // Exiting takes the host's own bound at most, and a moment for the process to go.
  const code = await Promise.race([host.exit, new Promise<string>((resolve) => setTimeout(() => resolve('still running'), SHUTDOWN_TIMEOUT_MS + 2000))]);
  t.equal(code, 0, `the host exits, status 0 (after ${Date.now() - signalled} ms)`, { stderr: host.stderr().slice(-2000) });
  const reboot = await rebooting;
  t.equal(reboot.code, 1, 'the reboot is not said to have happened');
  t.match(reboot.stderr, /^xenmesh domain: .+/, `the client is told something: ${reboot.stderr.trim()}`);
});

t.test('the prompt of xenmesh up', async (t) => {
  const host = await startHost(t, 'pipe');
  const hint = new RegExp(`${RUNNING}\\.\\n.*\\bhelp\\b`);
  await waitFor(() => hint.test(host.stdout()) && /^echo 0 .*$/m.test(host.stdout()), 'the hint, and the status that ends the start-up output', SETTLE_TIMEOUT_MS);
  t.pass('a hint about help follows the Running line');
  const stdin = host.child.stdin!;
  const typed = async (line: string, what: string, seen: () => boolean) => {
    stdin.write(`${line}\n`);
    await waitFor(seen, what, SETTLE_TIMEOUT_MS);
  };
  const after = host.stdout().length;
  await typed('status', 'the status', () => /^vbd xvda .*$/m.test(host.stdout().slice(after)));
  const status = host.stdout().slice(after);
  t.match(status, /^domid +name +state +worker/m, 'status prints the domains');
  t.match(status, /^2 +guest +running +kernel:guest ready/m, 'with the guest');
  t.match(status, /^vbd xvda +guest \(2\) +Connected +driver \(1\) +Connected +connected$/m, 'and the devices');

  await typed('help', 'the help', () => host.stdout().includes('Commands'));
  for (const command of ['shutdown <domain>', 'halt <domain>', 'reboot <domain>', 'suspend <domain>', 'resume <domain> [backend-domain]', 'destroy <domain>', 'sysrq <domain> <key>', 'status', 'help', 'quit']) {
    t.match(host.stdout(), new RegExp(`^  ${command.replace(/[[\]]/g, '\\$&')} `, 'm'), `help lists ${command}`);
  }

  await typed('frobnicate the guest', 'an error', () => /error: unknown command 'frobnicate'/.test(host.stderr()));
  t.pass('a nonsense command gets an error line');
  await typed('sysrq guest', 'a usage error', () => /error: usage: sysrq <domain> <key>/.test(host.stderr()));
  t.pass('a command without its arguments gets its usage');
  await typed('sysrq guest é', 'a key refused', () => /^error: a SysRq key is one printable character, such as s or b; "é" is not$/m.test(host.stderr()));
  t.pass('a SysRq key that is not one printable ASCII character is refused');
  await typed('reboot nosuch', 'a refusal', () => /^error: .*nosuch/m.test(host.stderr()));
  t.pass('an action the toolstack refuses gets its error');
  t.equal(host.child.exitCode, null, 'the host keeps running');
  t.equal((await host.xenstore('xenstore-read', '/local/domain/2/name')).stdout, 'guest\n', 'and serving');

  stdin.write('quit\n');
  t.equal(await host.exit, 0, 'quit stops the host, exit status 0');
  t.notOk(existsSync(host.toolstack), 'the toolstack socket is gone');
  t.notOk(existsSync(host.socket), 'and xenstored\'s');
});

t.test('the end of input ends the prompt, not the host', async (t) => {
  const host = await startHost(t, 'pipe');
  host.child.stdin!.end();
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.equal(host.child.exitCode, null, 'the host runs on');
  t.equal((await host.xenstore('xenstore-read', '/local/domain/2/name')).stdout, 'guest\n', 'and serves');
  host.child.kill('SIGTERM');
  t.equal(await host.exit, 0, 'until SIGTERM');
});
