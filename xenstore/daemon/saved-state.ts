import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { decodeMigrationStream, encodeMigrationStream } from './migration-stream.js';
import { SAVED_STATE_VERSION, type SavedDaemonState } from './xenstored.js';

/**
 * Writes a daemon's saved state to `file` for the daemon that replaces it,
 * as xenstored's live update dumps its state to a file before the new
 * binary takes over, in the same format: the xenstore migration stream
 * (see migration-stream.ts). Written aside and renamed, so that a successor
 * never reads half a state.
 */
export function writeSavedState(file: string, state: SavedDaemonState): void {
  const partial = `${file}.partial`;
  writeFileSync(partial, encodeMigrationStream(state), { mode: 0o600 });
  renameSync(partial, file);
}

/**
 * Reads and removes a saved state; undefined if there is none. A stream of
 * another version, with a bad ident or cut short is refused whole, with the
 * reason (MigrationStreamError).
 */
export function takeSavedState(file: string): SavedDaemonState | undefined {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  rmSync(file, { force: true });
  const { tree, domains } = decodeMigrationStream(bytes);
  return { version: SAVED_STATE_VERSION, tree, domains };
}
