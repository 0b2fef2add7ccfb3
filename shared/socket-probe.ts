/**
 * Whether a Unix socket path is served, before anything takes it over.
 *
 * A listener replaces a socket file left by a daemon that died (as
 * xenstored does), but the same rename would silently steal the path of
 * one that runs: its clients would reach the newcomer, and its socket
 * would be deleted when the newcomer exits. So the path is connected to
 * first: a socket that answers is in use and is refused; one whose
 * connection is refused (ECONNREFUSED: nobody listens) is stale and may be
 * replaced. And a socket is only removed on exit if it is still the file
 * its listener created (same device and inode), never a successor's.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';

/** What is at a socket path: nothing, a socket nobody listens on, or something else that must not be replaced. */
export type SocketProbe = { readonly state: 'absent' | 'stale' } | { readonly state: 'served' | 'unusable'; readonly reason: string };

/**
 * How long a connection may take before the path counts as served: a
 * local connect() answers at once unless the listener's backlog is full,
 * which only a live, busy listener has.
 */
const PROBE_TIMEOUT_MS = 2000;

/** The path already has a listener, or something that is not a stale socket. */
export class SocketInUseError extends Error {
  override readonly name = 'SocketInUseError';
  constructor(
    readonly path: string,
    reason: string,
    /** Something listens there, as opposed to a file that is not a socket. */
    readonly served: boolean,
  ) {
    super(`${path} ${reason}`);
  }
}

/** Looks at a socket path and connects to it if it is a socket. */
export async function probeSocket(path: string): Promise<SocketProbe> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    // Nothing this user can see (missing, or in a directory it cannot search):
    // nothing to take over, and the listener says why it cannot listen there.
    return { state: 'absent' };
  }
  if (!isSocket) return { state: 'unusable', reason: 'exists and is not a socket, so it is not replaced' };
  return new Promise<SocketProbe>((resolve) => {
    const socket = connect(path);
    const done = (probe: SocketProbe) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(probe);
    };
    const timer = setTimeout(() => done({ state: 'served', reason: 'is already served (it accepts connections)' }), PROBE_TIMEOUT_MS);
    socket.once('connect', () => done({ state: 'served', reason: 'is already served by a running host or daemon' }));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED') done({ state: 'stale' });
      else if (err.code === 'ENOENT') done({ state: 'absent' });
      // EAGAIN: a listener whose backlog is full. EACCES: someone else's, whose owner it is to remove it.
      else done({ state: 'served', reason: `is in use (connecting to it: ${err.code ?? err.message})` });
    });
  });
}

/**
 * Throws a SocketInUseError if something serves `path` (or it is not a
 * socket); resolves if it is free or stale, and so may be (re)placed.
 */
export async function refuseServedSocket(path: string): Promise<void> {
  const probe = await probeSocket(path);
  if (probe.state === 'served' || probe.state === 'unusable') throw new SocketInUseError(path, probe.reason, probe.state === 'served');
}

/** Which file a socket is: what tells it from a successor's at the same path. */
export interface SocketIdentity {
  readonly dev: number;
  readonly ino: number;
}

/** The identity of the socket file at `path`. */
export function socketIdentity(path: string): SocketIdentity {
  const { dev, ino } = lstatSync(path);
  return { dev, ino };
}

/**
 * Removes the socket at `path` if it is still the one `identity` names;
 * one that another listener has put there since is left alone. True if
 * removed.
 */
export function removeOwnSocket(path: string, identity: SocketIdentity | undefined): boolean {
  if (!identity) return false;
  try {
    const now = lstatSync(path);
    if (now.dev !== identity.dev || now.ino !== identity.ino) return false;
    unlinkSync(path);
    return true;
  } catch {
    return false;
  }
}
