import { XsError } from '../shared/errors.js';
import type { RequestOptions, XenStoreClient } from '../xenstore/client/client.js';
import { parseState } from './state.js';

/**
 * Reads a node, or undefined if it is not there for us: missing, or not
 * (yet) readable. A toolstack writes a device's nodes and sets their
 * permissions in steps; until it is done, the other end is simply not
 * there yet.
 */
export async function readIfVisible(xs: XenStoreClient, path: string, options: RequestOptions = {}): Promise<string | undefined> {
  try {
    return await xs.readString(path, options);
  } catch (err) {
    if (err instanceof XsError && (err.errno === 'ENOENT' || err.errno === 'EACCES')) return undefined;
    throw err;
  }
}

/** The XenbusState in a `state` node; Unknown if there is none we can read. */
export async function readStateAt(xs: XenStoreClient, statePath: string): Promise<number> {
  return parseState(await readIfVisible(xs, statePath));
}

/**
 * Waits until the state at `statePath` is one of `wanted`, for at most
 * `timeoutMs`. Returns the state reached, or undefined on timeout (or if
 * the connection closed).
 */
export async function waitForState(xs: XenStoreClient, statePath: string, wanted: readonly number[], timeoutMs: number): Promise<number | undefined> {
  return watchUntil(xs, statePath, timeoutMs, async () => {
    const state = await readStateAt(xs, statePath);
    return wanted.includes(state) ? state : undefined;
  });
}

/**
 * Watches `path` (and what is under it) for at most `timeoutMs`, asking
 * `look` after every event, and returns the first answer it gives that is
 * not undefined; undefined on timeout (or if the connection closed). The
 * watch fires once when set, so `look` sees things as they are first.
 */
export async function watchUntil<T>(xs: XenStoreClient, path: string, timeoutMs: number, look: () => Promise<T | undefined>): Promise<T | undefined> {
  const watcher = await xs.watch(path);
  const timer = setTimeout(() => void watcher.close().catch(() => {}), timeoutMs);
  try {
    for await (const _event of watcher) {
      const found = await look();
      if (found !== undefined) return found;
    }
    return undefined;
  } finally {
    clearTimeout(timer);
    await watcher.close().catch(() => {});
  }
}
