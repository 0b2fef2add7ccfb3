import { spawnSync } from 'node:child_process';

/**
 * Leaves a Unix socket file at `path` that nobody listens on, as a daemon
 * killed with SIGKILL does. (Node removes the socket files its servers
 * made when they close, so another process binds it and exits.)
 */
export function leaveStaleSocket(path: string): void {
  const made = spawnSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path]);
  if (made.status !== 0) throw new Error(`cannot leave a stale socket at ${path}: ${made.stderr.toString()}`);
}
