/**
 * Where xenmesh keeps its sockets when the command line names none. Root
 * gets xenstored's own place, so that Xen's tools find it without being
 * told; any other user gets a place of their own, so that the defaults
 * work without root and two users never meet on one socket.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** Where C xenstored listens, and where xenstore-utils look first. */
export const XENSTORED_SOCKET_PATH = '/var/run/xenstored/socket';

/** The socket's name in a user's own directory. */
const USER_SOCKET_NAME = 'xenstored.socket';

/**
 * The xenstored socket a command uses by default: xenstored's own where
 * this user may create it (its directory is writable, or can be made in a
 * writable /var/run), else under $XDG_RUNTIME_DIR/xenmesh, else under
 * the user's state directory ($XDG_STATE_HOME or ~/.local/state)/xenmesh.
 * Every command of the same user reaches the same answer.
 */
export function defaultSocketPath(): string {
  if (mayCreateIn(dirname(XENSTORED_SOCKET_PATH))) return XENSTORED_SOCKET_PATH;
  const runtime = process.env['XDG_RUNTIME_DIR'];
  if (runtime) return join(runtime, 'xenmesh', USER_SOCKET_NAME);
  const state = process.env['XDG_STATE_HOME'] || join(homedir(), '.local', 'state');
  return join(state, 'xenmesh', USER_SOCKET_NAME);
}

/** True if this process can create files in `dir`, or create `dir` itself in its parent. */
function mayCreateIn(dir: string): boolean {
  try {
    if (statSync(dir).isDirectory()) {
      accessSync(dir, constants.W_OK | constants.X_OK);
      return true;
    }
    return false;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return false;
  }
  try {
    accessSync(dirname(dir), constants.W_OK | constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * defaultSocketPath()'s choice in words, for usage texts: short lines,
 * joined by a newline and `indent`, to sit in a column of options.
 */
export function defaultSocketHelp(indent: string): string {
  return [`${XENSTORED_SOCKET_PATH} for root; for other users`, `$XDG_RUNTIME_DIR/xenmesh/${USER_SOCKET_NAME},`, `else ~/.local/state/xenmesh/${USER_SOCKET_NAME}`].join(`\n${indent}`);
}
