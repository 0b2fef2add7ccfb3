import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { Packr } from 'msgpackr';
import type { SavedDaemonState } from './xenstored.js';

const packr = new Packr({ useRecords: false, moreTypes: false });

/**
 * Writes a daemon's saved state to `file` for the daemon that replaces it,
 * as xenstored's live update dumps its state to a file before the new
 * binary takes over. Written aside and renamed, so that a successor never
 * reads half a state.
 */
export function writeSavedState(file: string, state: SavedDaemonState): void {
  const partial = `${file}.partial`;
  writeFileSync(partial, packr.pack(state), { mode: 0o600 });
  renameSync(partial, file);
}

/** Reads and removes a saved state; undefined if there is none. */
export function takeSavedState(file: string): SavedDaemonState | undefined {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  rmSync(file, { force: true });
  const state = packr.unpack(bytes) as SavedDaemonState;
  if (!state || typeof state !== 'object' || typeof state.version !== 'number') throw new Error(`${file} holds no saved xenstored state`);
  return state;
}
