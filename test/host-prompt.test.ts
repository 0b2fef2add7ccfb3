/**
 * The prompt of `xenmesh up` as a user sees it: at a terminal (a
 * pseudo-terminal here), log lines that arrive while the prompt waits are
 * printed above it and the prompt is drawn again with what was typed; with
 * the output redirected to a file, not one escape sequence goes into the
 * file; the start-up output ends with the status; `tree` prints xenstore's
 * tree on request.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, waitFor } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
/** Runs a command on a pseudo-terminal; what it is given on stdin is typed there. */
const PTY_RUN = fileURLToPath(new URL('../../test/python/pty_run.py', import.meta.url));
const BOOT_TIMEOUT_MS = 30_000;
const SETTLE_TIMEOUT_MS = 20_000;
const PROMPT = 'xenmesh> ';
const ESC = '\x1b';
/** The last row of the status that `xenmesh up` prints at start-up: the echo device. */
const ECHO_ROW = /^echo 0 +\S+ \(\d+\) +Connected +\S+ \(\d+\) +Connected +connected\r?$/m;
/** What the guest's control driver logs for SysRq s: a log line sent while the prompt waits. */
const SYSRQ_LOG = "control: SysRq 's'";

interface Started {
  stdout(): string;
  stderr(): string;
  type(text: string): void;
  exit: Promise<number | null>;
  /** Runs a xenstore tool against the host's xenstored. */
  xenstore(tool: string, ...args: string[]): ReturnType<typeof run>;
}

/**
 * Starts `xenmesh up` on a fresh image in a temporary directory: with its
 * stdin piped, or on a pseudo-terminal (`pty`), optionally with its stdout
 * redirected to `stdoutFile`. Killed when the test ends.
 */
function start(t: Test, how: { pty: boolean; stdoutFile?: (dir: string) => string }): Started & { dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-prompt-'));
  const socket = join(dir, 'socket');
  const image = join(dir, 'guest.img');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, 16 * 2 ** 20);
  closeSync(fd);
  const up = [process.execPath, XENMESH, 'up', '--socket', socket, '--image', image];
  const redirect = how.stdoutFile ? ['--stdout', how.stdoutFile(dir)] : [];
  const [file, ...args] = how.pty ? ['/usr/bin/python3', PTY_RUN, ...redirect, '--', ...up] : up;
  const child = spawn(file!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString('latin1')));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString('latin1')));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir,
    stdout: () => stdout,
    stderr: () => stderr,
    type: (text) => child.stdin!.write(text),
    exit,
    xenstore: (tool, ...toolArgs) => run(tool, toolArgs, { XENSTORED_PATH: socket }),
  };
}

t.test('at a terminal, a log line is printed above the prompt, which is drawn again with what was typed', async (t) => {
  const host = start(t, { pty: true });
  await waitFor(() => ECHO_ROW.test(host.stdout()), 'the status at start-up', BOOT_TIMEOUT_MS);
  await waitFor(() => host.stdout().endsWith(`${PROMPT}${ESC}[10G`) || host.stdout().endsWith(PROMPT), 'the prompt', SETTLE_TIMEOUT_MS);
  host.type('sta');
  await waitFor(() => host.stdout().endsWith('sta'), 'the terminal to echo what was typed', SETTLE_TIMEOUT_MS);
  const typedAt = host.stdout().length;

  t.equal((await host.xenstore('xenstore-write', '/local/domain/2/control/sysrq', 's')).code, 0, 'a SysRq sent to the guest makes it log');
  await waitFor(() => host.stdout().slice(typedAt).includes(SYSRQ_LOG), 'the log line', SETTLE_TIMEOUT_MS);
  await waitFor(() => new RegExp(`${SYSRQ_LOG}[^\\n]*\\n(?:\\r|${ESC}\\[[0-9;]*[A-Za-z])*${PROMPT}sta`).test(host.stdout().slice(typedAt)), 'the prompt drawn again', SETTLE_TIMEOUT_MS);
  const screen = host.stdout().slice(typedAt);
  const logStart = screen.indexOf(SYSRQ_LOG);
  const lineStart = screen.slice(screen.lastIndexOf('\n', logStart) + 1, logStart);
  t.match(lineStart, `${ESC}[2K`, 'the prompt\'s line is cleared before the log line is written', { lineStart: JSON.stringify(lineStart) });
  t.notMatch(lineStart, /sta/, 'the log line does not follow what was typed');
  t.match(screen.slice(logStart), new RegExp(`\\n(?:\\r|${ESC}\\[[0-9;]*[A-Za-z])*${PROMPT}sta`), 'below it, the prompt and what was typed so far');

  // The rest of the word completes the command that was begun before the log line.
  const completedAt = host.stdout().length;
  host.type('tus\n');
  await waitFor(() => ECHO_ROW.test(host.stdout().slice(completedAt)), 'the status', SETTLE_TIMEOUT_MS);
  t.match(host.stdout().slice(completedAt), /^domid +name +state +worker/m, 'what was typed before and after the log line is one command: status');

  host.type('quit\n');
  t.equal(await host.exit, 0, 'quit stops the host');
});

t.test('with stdout redirected to a file, not one escape sequence goes into it', async (t) => {
  let file = '';
  const host = start(t, { pty: true, stdoutFile: (dir) => (file = join(dir, 'out.txt')) });
  const written = () => {
    try {
      return readFileSync(file, 'latin1');
    } catch {
      return '';
    }
  };
  await waitFor(() => ECHO_ROW.test(written()), 'the status at start-up', BOOT_TIMEOUT_MS);
  host.type('sta');
  t.equal((await host.xenstore('xenstore-write', '/local/domain/2/control/sysrq', 's')).code, 0, 'a log line arrives while a command is half typed');
  await waitFor(() => host.stdout().includes(SYSRQ_LOG), 'the log line on the terminal', SETTLE_TIMEOUT_MS);
  const after = written().length;
  host.type('tus\ntree /local/domain/1\n');
  await waitFor(() => ECHO_ROW.test(written().slice(after)) && /^\/local\/domain\/1\n(?: .*\n)* name = "driver"/m.test(written()), 'the status and the tree in the file', SETTLE_TIMEOUT_MS);
  host.type('quit\n');
  t.equal(await host.exit, 0, 'quit stops the host');
  const out = written();
  t.notOk(out.includes(ESC), 'the file has no ESC byte', { out: JSON.stringify(out.slice(0, 2000)) });
  t.notMatch(out, PROMPT, 'and no prompt');
  t.match(out, /^domid +name +state +worker/m, 'but the status');
});

t.test('start-up ends with the status; tree prints xenstore\'s tree at a piped prompt', async (t) => {
  const host = start(t, { pty: false });
  await waitFor(() => ECHO_ROW.test(host.stdout()), 'the status at start-up', BOOT_TIMEOUT_MS);
  host.type('tree /local/domain/1\n');
  await waitFor(() => /^\/local\/domain\/1\n/m.test(host.stdout()), 'the tree of the driver domain', SETTLE_TIMEOUT_MS);
  const treeAt = host.stdout().search(/^\/local\/domain\/1\n/m);
  const startup = host.stdout().slice(0, treeAt);
  const lines = startup.trimEnd().split('\n');
  t.match(lines.at(-1), ECHO_ROW, 'the last line of the start-up output is the last row of the devices table', { startup });
  const order = ['Running. Ctrl-C or SIGTERM stops the host.', 'Type help for the commands', 'domid  name', 'device  '].map((text) => startup.indexOf(text));
  t.ok(order.every((at, i) => at >= 0 && (i === 0 || at > order[i - 1]!)), 'the Running line, the hint, the domains, the devices, in that order', { order });
  t.notMatch(startup, /^\/local\/domain\/\d+$/m, 'and no xenstore tree at start-up');

  const tree = host.stdout().slice(treeAt);
  t.match(tree, /^ name = "driver"  \(n0,r1\)$/m, 'tree /local/domain/1 prints that subtree, with permissions');
  t.match(tree, /^  vbd = ""/m, 'down to the devices it serves');

  const rootAt = host.stdout().length;
  host.type('tree\n');
  await waitFor(() => /^ tool = ""/m.test(host.stdout().slice(rootAt)) && /^   2 = ""/m.test(host.stdout().slice(rootAt)), 'the whole tree', SETTLE_TIMEOUT_MS);
  const root = host.stdout().slice(rootAt);
  t.match(root, /^\/\n/, 'tree without a path starts at /');
  t.match(root, /^  domain = ""/m, 'and goes down through /local/domain');

  for (const [line, error] of [
    ['tree /local/domain/9', 'error: no such node: /local/domain/9 (ENOENT)'],
    ['tree /local//domain', 'error: cannot read /local//domain: EINVAL'],
    ['tree / /local', 'error: usage: tree [path]'],
  ] as const) {
    const at = host.stderr().length;
    host.type(`${line}\n`);
    await waitFor(() => host.stderr().slice(at).includes('error: '), `the answer to ${line}`, SETTLE_TIMEOUT_MS);
    t.match(host.stderr().slice(at), error, `${line}: ${error}`);
  }

  host.type('quit\n');
  t.equal(await host.exit, 0, 'quit stops the host');
});
