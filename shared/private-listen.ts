/**
 * Listening on a Unix socket that only its owner can connect to, from the
 * moment it can be found at its path.
 *
 * listen() creates the socket file with the process umask applied, and a
 * chmod afterwards leaves a window in which, under a permissive umask,
 * anyone may connect. Setting umask around listen() is no answer: umask is
 * process-wide, so every thread's files in that window would get it too,
 * and worker threads (xenstored runs in one inside the host) may not change
 * it at all. Instead the socket is bound in a fresh directory of mode 0700
 * (mkdtemp() makes it so, whatever the umask), which nobody else can search
 * and so nobody else can connect through; it is given mode 0600 there, and
 * only then renamed to its path, which is atomic and also replaces a stale
 * socket left by a daemon that did not stop; a socket that is served is
 * never replaced (see socket-probe.ts).
 */
import { chmodSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import type { Server } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { checkSocketDirectory } from './socket-directory.js';
import { refuseServedSocket, socketIdentity, type SocketIdentity } from './socket-probe.js';

/** Only the owner may connect: the socket acts for dom0. */
const SOCKET_MODE = 0o600;
/** What a socket's directory is created with if it is missing: xenstored's /var/run/xenstored. */
const DIRECTORY_MODE = 0o755;
/** Short, since a Unix socket path may be at most 107 bytes long (sun_path). */
const PRIVATE_DIR_PREFIX = '.sock-';

/**
 * Makes `server` listen on `path` with mode 0600 and no window in between.
 * The socket's directory is created if missing; one that others could write
 * to is refused (see checkSocketDirectory), and so, with a
 * SocketInUseError, is a path that another listener serves. Resolves with
 * the identity of the socket file, for removeOwnSocket.
 */
export async function listenPrivately(server: Server, path: string): Promise<SocketIdentity> {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: DIRECTORY_MODE });
  checkSocketDirectory(dir);
  // The private directory must be on the socket's filesystem for rename() to work.
  const privateDir = mkdtempSync(join(dir, PRIVATE_DIR_PREFIX));
  try {
    const bound = join(privateDir, basename(path));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(bound, () => {
        server.off('error', reject);
        resolve();
      });
    });
    try {
      chmodSync(bound, SOCKET_MODE);
      // As late as can be before the rename, so that a listener that came meanwhile is seen.
      await refuseServedSocket(path);
      const identity = socketIdentity(bound);
      renameSync(bound, path);
      return identity;
    } catch (err) {
      server.close();
      throw err;
    }
  } finally {
    rmSync(privateDir, { recursive: true, force: true });
  }
}
