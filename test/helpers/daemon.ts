import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isXsError } from '../../shared/errors.js';
import { EmbeddedPlatform } from '../../shared/embedded/platform.js';
import { EventDispatcher } from '../../shared/event-dispatcher.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import { RingClientTransport } from '../../xenstore/client/ring-transport.js';
import type { Connection } from '../../xenstore/daemon/connection.js';
import { DetachedBackend } from '../../xenstore/daemon/domain-backend.js';
import { PlatformDomainBackend } from '../../xenstore/daemon/platform-backend.js';
import { takeSavedState, writeSavedState } from '../../xenstore/daemon/saved-state.js';
import { XenStoreSocketServer } from '../../xenstore/daemon/socket-server.js';
import { XenStoreDaemon, type DaemonOptions } from '../../xenstore/daemon/xenstored.js';
import { buildDomain, type StartInfo } from '../../host/toolstack/domain-builder.js';

/** Machine memory for a test host: 16 MiB. */
const TEST_MACHINE_FRAMES = 4096;
/** Memory of each test domain: 256 KiB. */
const TEST_DOMAIN_PAGES = 64;

export interface RunningDaemon {
  /** The daemon serving now (a new one after restart()). */
  daemon: XenStoreDaemon;
  platform: EmbeddedPlatform;
  socketPath: string;
  dir: string;
  /** A new socket client (dom0). */
  client(): Promise<XenStoreClient>;
  /** dom0's own xenstore ring, as its kernel would use it (privileged, like the socket). */
  dom0Ring(): Promise<XenStoreClient>;
  /** Creates a domain in the hypervisor (running, not introduced yet), as a toolstack does first. */
  build(domid: number): StartInfo;
  /** Creates (if need be) and introduces a domain; returns a client acting as it over its xenstore ring. */
  domain(domid: number): Promise<XenStoreClient>;
  /** The domain's end of its ring (to stop it reading, or reconnect it). */
  ringOf(domid: number): RingClientTransport;
  /** What the domain was told at boot. */
  startInfo(domid: number): StartInfo;
  /** Creates `/local/domain/<domid>/data` owned by the domain, as libxl lays it out. */
  makeDataDirectory(domid: number): Promise<void>;
  /** The daemon's connection serving a domain. */
  connectionOf(domid: number): Connection;
  /**
   * Replaces the daemon with a new one that takes over its saved state, as
   * the host's planned xenstored restart does: socket clients are cut off,
   * domains find their rings reset.
   */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export interface TestDaemonOptions extends DaemonOptions {
  /**
   * Run with no hypervisor behind the daemon, where every domain id may
   * exist, as `xenmesh xenstored` alone does; for comparisons with Xen's
   * xenstored under its stand-in hypervisor, which behaves the same way.
   */
  detached?: boolean;
  /** Machine memory in pages (default 16 MiB). */
  frames?: number;
}

/**
 * Starts a daemon in this process on a socket in a fresh temporary
 * directory, with an embedded machine behind it whose domains reach it
 * over real xenstore rings.
 */
export async function startDaemon(options: TestDaemonOptions = {}): Promise<RunningDaemon> {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-test-'));
  const socketPath = join(dir, 'socket');
  const platform = EmbeddedPlatform.create(options.frames ?? TEST_MACHINE_FRAMES);
  platform.createDomain({ domid: 0, name: 'Domain-0', pages: TEST_DOMAIN_PAGES });
  platform.unpauseDomain(0);
  const { detached, frames: _frames, ...daemonOptions } = options;
  const newDaemon = () => new XenStoreDaemon({ backend: detached ? new DetachedBackend() : new PlatformDomainBackend(platform, 0), ...daemonOptions });
  const daemon = newDaemon();
  let server = new XenStoreSocketServer(daemon, socketPath);
  await server.listen();
  const clients: XenStoreClient[] = [];
  const rings = new Map<number, RingClientTransport>();
  const starts = new Map<number, StartInfo>();
  const dispatchers: EventDispatcher[] = [];

  const build = (domid: number): StartInfo => {
    const known = starts.get(domid);
    if (known && env.platform.domainInfo(domid)) return known;
    const start = buildDomain(platform, { domid, name: `guest-${domid}`, pages: TEST_DOMAIN_PAGES });
    platform.unpauseDomain(domid);
    starts.set(domid, start);
    return start;
  };

  const openRing = (start: StartInfo): XenStoreClient => {
    const domain = platform.domain(start.domid);
    const events = new EventDispatcher(domain.openEventChannels());
    dispatchers.push(events);
    const transport = RingClientTransport.open(domain, events, start.storePfn, start.storePort);
    rings.set(start.domid, transport);
    const client = new XenStoreClient(transport);
    clients.push(client);
    return client;
  };

  const env: RunningDaemon = {
    daemon,
    platform,
    socketPath,
    dir,
    async client() {
      const client = await XenStoreClient.connect(socketPath);
      clients.push(client);
      return client;
    },
    async dom0Ring() {
      const start = buildDomain(platform, { domid: 0, name: 'Domain-0', pages: TEST_DOMAIN_PAGES });
      starts.set(0, start);
      env.daemon.introduce(0, BigInt(start.storePfn), start.storePort);
      return openRing(start);
    },
    build,
    async domain(domid: number) {
      const start = build(domid);
      env.daemon.introduce(domid, BigInt(start.storePfn), start.storePort);
      return openRing(start);
    },
    ringOf(domid: number) {
      const ring = rings.get(domid);
      if (!ring) throw new Error(`domain ${domid} has no ring`);
      return ring;
    },
    startInfo(domid: number) {
      const start = starts.get(domid);
      if (!start) throw new Error(`domain ${domid} was not built`);
      return start;
    },
    async makeDataDirectory(domid: number) {
      build(domid);
      const dom0 = await XenStoreClient.connect(socketPath);
      await dom0.mkdir(`/local/domain/${domid}/data`);
      await dom0.setPermissions(`/local/domain/${domid}/data`, [{ domid, access: 'none' }]);
      dom0.close();
    },
    connectionOf(domid: number) {
      const conn = [...env.daemon.connections].find((c) => c.domid === domid && c.transport.kind === 'ring');
      if (!conn) throw new Error(`domain ${domid} has no connection`);
      return conn;
    },
    async restart() {
      // Through a file in the migration stream, as the host's xenstored worker hands it over.
      const stateFile = join(dir, 'state');
      writeSavedState(stateFile, env.daemon.saveState());
      env.daemon.shutdown();
      await server.close();
      const next = newDaemon();
      next.restoreState(takeSavedState(stateFile)!);
      server = new XenStoreSocketServer(next, socketPath);
      await server.listen();
      env.daemon = next;
    },
    async close() {
      for (const client of clients) client.close();
      env.daemon.shutdown();
      for (const events of dispatchers) events.channels.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return env;
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

/** Polls until `predicate` holds (the daemon reacts to the hypervisor asynchronously). */
export async function waitFor(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
