/**
 * A `xenmesh up` host in a fresh temporary directory, for tests that drive
 * it as an operator does: with xenmesh commands over its toolstack socket,
 * with xenstore-utils, and with commands piped to its prompt.
 */
import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, waitFor, type RunResult } from './daemon.js';

export const XENMESH = fileURLToPath(new URL('../../bin/xenmesh.js', import.meta.url));
/** The line `xenmesh up` prints once the host runs. */
const RUNNING = 'Ctrl-C or SIGTERM stops the host';
const BOOT_TIMEOUT_MS = 30_000;
/** The size of the images the tests make: 16 MiB, sparse. */
export const TEST_IMAGE_BYTES = 16 * 1024 * 1024;

export interface XenmeshHost {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly socket: string;
  /** The guest's disk image (xvda). */
  readonly image: string;
  stdout(): string;
  stderr(): string;
  /** Makes a sparse image in the host's directory and returns its path. */
  makeImage(name: string, bytes?: number): string;
  /** Runs `xenmesh <args> --socket <the host's>`. */
  xenmesh(...args: string[]): Promise<RunResult>;
  /** Runs a xenstore tool against the host's xenstored. */
  xenstore(tool: string, ...args: string[]): Promise<RunResult>;
  /** Types a line at the host's prompt and waits until its output or errors match `until`. */
  type(line: string, until: RegExp): Promise<void>;
}

/** Boots `xenmesh up`, its prompt reading a pipe, and waits until it runs; it is killed when the test ends. */
export async function startXenmeshHost(t: Test, prefix: string): Promise<XenmeshHost> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const socket = join(dir, 'socket');
  const makeImage = (name: string, bytes = TEST_IMAGE_BYTES) => {
    const path = join(dir, name);
    const fd = openSync(path, 'w');
    ftruncateSync(fd, bytes);
    closeSync(fd);
    return path;
  };
  const image = makeImage('guest.img');
  const child = spawn(process.execPath, [XENMESH, 'up', '--socket', socket, '--image', image], { stdio: ['pipe', 'pipe', 'pipe'] });
  const exit = new Promise<void>((resolve) => child.on('exit', () => resolve()));
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
    dir,
    socket,
    image,
    stdout: () => stdout,
    stderr: () => stderr,
    makeImage,
    xenmesh: (...args) => run(process.execPath, [XENMESH, ...args, '--socket', socket]),
    xenstore: (tool, ...args) => run(tool, args, env),
    type: async (line, until) => {
      const [outFrom, errFrom] = [stdout.length, stderr.length];
      child.stdin!.write(`${line}\n`);
      await waitFor(() => until.test(stdout.slice(outFrom)) || until.test(stderr.slice(errFrom)), `'${line}' at the prompt to answer ${until}`, 60_000);
    },
  };
}
