import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isXsError } from '../../shared/errors.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import type { Connection } from '../../xenstore/daemon/connection.js';
import { XenStoreSocketServer } from '../../xenstore/daemon/socket-server.js';
import { XenStoreDaemon, type DaemonOptions } from '../../xenstore/daemon/xenstored.js';
import { LoopbackBackend } from './loopback.js';

export interface RunningDaemon {
  daemon: XenStoreDaemon;
  backend: LoopbackBackend;
  socketPath: string;
  dir: string;
  /** A new socket client (dom0). */
  client(): Promise<XenStoreClient>;
  /** Introduces a domain and returns a client acting as it over its (loopback) ring. */
  domain(domid: number): Promise<XenStoreClient>;
  /** Creates `/local/domain/<domid>/data` owned by the domain, as libxl lays it out. */
  makeDataDirectory(domid: number): Promise<void>;
  /** The daemon's connection serving a domain. */
  connectionOf(domid: number): Connection;
  close(): Promise<void>;
}

/** Starts a daemon in this process on a socket in a fresh temporary directory. */
export async function startDaemon(options: DaemonOptions = {}): Promise<RunningDaemon> {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-test-'));
  const socketPath = join(dir, 'socket');
  const backend = new LoopbackBackend();
  const daemon = new XenStoreDaemon({ backend, ...options });
  const server = new XenStoreSocketServer(daemon, socketPath);
  await server.listen();
  const clients: XenStoreClient[] = [];
  return {
    daemon,
    backend,
    socketPath,
    dir,
    async client() {
      const client = await XenStoreClient.connect(socketPath);
      clients.push(client);
      return client;
    },
    async domain(domid: number) {
      daemon.introduce(domid, 0n, 1);
      const client = backend.clientFor(domid);
      clients.push(client);
      return client;
    },
    async makeDataDirectory(domid: number) {
      const dom0 = await XenStoreClient.connect(socketPath);
      await dom0.mkdir(`/local/domain/${domid}/data`);
      await dom0.setPermissions(`/local/domain/${domid}/data`, [{ domid, access: 'none' }]);
      dom0.close();
    },
    connectionOf(domid: number) {
      const conn = [...daemon.connections].find((c) => c.domid === domid && c.transport.kind === 'ring');
      if (!conn) throw new Error(`domain ${domid} has no connection`);
      return conn;
    },
    async close() {
      for (const client of clients) client.close();
      daemon.shutdown();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs an external program without blocking the event loop the daemon under test shares. */
export function run(file: string, args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() });
      },
    );
  });
}

/** The errno a request fails with, or 'OK'. */
export async function errno(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'OK';
  } catch (err) {
    return isXsError(err) ? err.errno : String(err);
  }
}
