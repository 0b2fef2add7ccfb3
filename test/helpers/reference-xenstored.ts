import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './daemon.js';

/** Xen's C xenstored as Debian ships it with the tools we test against. */
export const XEN_XENSTORED = '/usr/lib/xen-4.17/bin/xenstored';

const SHIM_SOURCE = fileURLToPath(new URL('../../../test/native/xen-hypervisor-shim.c', import.meta.url));

export interface ReferenceDaemon {
  socketPath: string;
  close(): Promise<void>;
}

/**
 * Starts Xen's own C xenstored with a stand-in for the hypervisor (see
 * test/native/xen-hypervisor-shim.c) on a private socket, so that tests can
 * ask it what unmodified Xen clients print for the same commands.
 */
export async function startReferenceXenstored(): Promise<ReferenceDaemon> {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-ref-'));
  const shim = join(dir, 'xen-hypervisor-shim.so');
  const built = await run('cc', ['-shared', '-fPIC', '-O2', '-o', shim, SHIM_SOURCE, '-ldl']);
  if (built.code !== 0) throw new Error(`building the hypervisor shim failed:\n${built.stderr}`);
  const socketPath = join(dir, 'socket');
  const child: ChildProcess = spawn(XEN_XENSTORED, ['-N'], {
    env: { ...process.env, XENSTORED_PATH: socketPath, LD_PRELOAD: shim },
    stdio: ['ignore', 'ignore', 'pipe'],
    cwd: dir,
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const deadline = Date.now() + 10_000;
  while (!existsSync(socketPath)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`Xen's xenstored did not start: ${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    socketPath,
    async close() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
