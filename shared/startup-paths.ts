/**
 * The files a command is told to use, tried before it starts anything:
 * each one that cannot be used is a PathError, one line that names the
 * path, what is wrong and the option that sets it, instead of a stack
 * trace once the daemon or the host is half up.
 */
import { accessSync, closeSync, constants, lstatSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { checkSocketDirectory, UnsafeSocketDirectoryError } from './socket-directory.js';
import { refuseServedSocket, SocketInUseError } from './socket-probe.js';

/** A path given (or defaulted) for an option that cannot be used; the message is the line to show. */
export class PathError extends Error {
  override readonly name = 'PathError';
}

/** What a socket's directory is created with if it is missing: xenstored's /var/run/xenstored. */
const SOCKET_DIRECTORY_MODE = 0o755;
/** Trace and pid files hold what only the daemon's owner should read. */
const PRIVATE_FILE_MODE = 0o600;

/** `EACCES: permission denied`: Node's message without the system call and path it appends. */
export function reasonOf(err: unknown): string {
  const { code, message } = err as NodeJS.ErrnoException;
  const reason = String(message ?? err).replace(/, \w+ '.*'$/s, '');
  return code && !reason.startsWith(code) ? `${code}: ${reason}` : reason;
}

/**
 * Refuses a socket path that a running host or daemon serves, with the way
 * out; a stale socket passes, to be replaced by the listener.
 */
export async function refuseServedSocketPath(path: string, option: string): Promise<void> {
  try {
    await refuseServedSocket(path);
  } catch (err) {
    if (!(err instanceof SocketInUseError)) throw err;
    throw new PathError(`${err.message}; ${err.served ? 'stop it first' : 'remove it'}, or pick another socket with ${option}`);
  }
}

/**
 * The socket's directory, created if missing, must be one this user can
 * create the socket in and that others cannot meddle with (see
 * checkSocketDirectory).
 */
export function prepareSocketDirectory(socket: string, option: string): void {
  const dir = dirname(socket);
  try {
    mkdirSync(dir, { recursive: true, mode: SOCKET_DIRECTORY_MODE });
  } catch (err) {
    throw new PathError(`cannot create ${dir}, the directory of the socket ${socket} (${reasonOf(err)}); pick another socket with ${option}`);
  }
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw new PathError(`cannot create the socket ${socket}: its directory ${dir} is not writable (${reasonOf(err)}); pick another socket with ${option}`);
  }
  try {
    checkSocketDirectory(dir);
  } catch (err) {
    if (!(err instanceof UnsafeSocketDirectoryError)) throw err;
    throw new PathError(`${err.message}; pick another socket with ${option}`);
  }
}

/**
 * Opens a file to append to, creating it if missing, and closes it again:
 * the daemon opens it for real once it runs, and would otherwise fail
 * where nobody hears.
 */
export function checkAppendableFile(path: string, what: string, option: string): void {
  try {
    closeSync(openSync(path, 'a', PRIVATE_FILE_MODE));
  } catch (err) {
    throw new PathError(`cannot open the ${what} ${path} (${reasonOf(err)}); set by ${option}`);
  }
}

/** Writes `text` to a file that must be writable, such as a pid file. */
export function writeFileOrRefuse(path: string, text: string, what: string, option: string): void {
  try {
    writeFileSync(path, text, { mode: PRIVATE_FILE_MODE });
  } catch (err) {
    throw new PathError(`cannot write the ${what} ${path} (${reasonOf(err)}); set by ${option}`);
  }
}

/**
 * A file or directory the daemon keeps next to its socket (the journal,
 * the saved state): if one is there it must be ours to replace, since it
 * is emptied or overwritten at start.
 */
export function checkReplaceable(path: string, what: string, option: string): void {
  try {
    lstatSync(path);
  } catch {
    return;
  }
  try {
    accessSync(path, constants.W_OK);
  } catch (err) {
    throw new PathError(`cannot replace the ${what} ${path} (${reasonOf(err)}); it goes next to the socket, which ${option} sets`);
  }
}
