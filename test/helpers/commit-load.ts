/**
 * Clients committing to xenstored while it crashes, each keeping account of
 * what it was told was committed, for the tests of crash recovery.
 */
import { XsError } from '../../shared/errors.js';
import { isConnectionLoss, type XenStoreClient } from '../../xenstore/client/client.js';
import type { Watcher } from '../../xenstore/client/watcher.js';

/** Where the clients write: LOAD_ROOT/c<client>/... */
export const LOAD_ROOT = '/load';

export interface LoadClient {
  readonly name: string;
  readonly xs: XenStoreClient;
  /** Keys (relative to the client's directory) with the value they were written with, acknowledged. */
  readonly acknowledged: Map<string, string>;
  /** Keys ever sent, acknowledged or not. */
  readonly attempted: Map<string, string>;
  /** Groups of keys one transaction wrote together: all of them or none may exist. */
  readonly groups: string[][];
  /** Requests that failed with the connection lost: their outcome is unknown. */
  inDoubt: number;
  /** Watch events seen for the client's directory. */
  events: number;
  watcher: Watcher | undefined;
  /** Failures that are neither a lost connection nor EAGAIN: the test fails on any. */
  readonly errors: Error[];
}

export function loadClient(name: string, xs: XenStoreClient): LoadClient {
  return { name, xs, acknowledged: new Map(), attempted: new Map(), groups: [], inDoubt: 0, events: 0, watcher: undefined, errors: [] };
}

const dirOf = (client: LoadClient) => `${LOAD_ROOT}/${client.name}`;

/** Keeps a watch on the client's directory, counting its events, until the watch ends. */
export async function watchOwn(client: LoadClient): Promise<void> {
  client.watcher = await client.xs.watch(dirOf(client));
  void (async () => {
    for await (const _event of client.watcher!) client.events++;
  })();
}

/**
 * Commits until `stop()` says so: a plain write, then a transaction writing
 * two keys, in turn. Every key is written once with a value of its own, so
 * that a transaction run again after a reset (its first commit may have
 * been done) writes the same thing.
 */
export async function commitUntil(client: LoadClient, stop: () => boolean): Promise<void> {
  const dir = dirOf(client);
  for (let n = 0; !stop(); n++) {
    try {
      if (n % 2 === 0) {
        const key = `w${n}`;
        const value = `${client.name}:${n}`;
        client.attempted.set(key, value);
        await client.xs.write(`${dir}/${key}`, value);
        client.acknowledged.set(key, value);
      } else {
        const keys = [`ta${n}`, `tb${n}`];
        for (const key of keys) client.attempted.set(key, `${client.name}:${n}:${key}`);
        client.groups.push(keys);
        await client.xs.transaction(async (tx) => {
          // Read something first, so that the transaction has a snapshot to conflict with.
          await client.xs.tryRead(`${dir}/w0`, { tx });
          for (const key of keys) await client.xs.write(`${dir}/${key}`, client.attempted.get(key)!, { tx });
        });
        for (const key of keys) client.acknowledged.set(key, client.attempted.get(key)!);
      }
    } catch (err) {
      if (isConnectionLoss(err) || (err instanceof XsError && err.errno === 'EAGAIN')) client.inDoubt++;
      else client.errors.push(err as Error);
      if (err instanceof Error && err.name === 'ConnectionClosedError') return;
    }
  }
}

export interface Audit {
  /** Acknowledged keys missing or with another value. */
  lost: string[];
  /** Keys present that the client never sent. */
  invented: string[];
  /** Transactions of which only some keys are there. */
  torn: string[][];
}

/** Compares what the store holds now with what the client was told. */
export async function audit(client: LoadClient, xs: XenStoreClient): Promise<Audit> {
  const dir = dirOf(client);
  const present = new Map<string, string>();
  for (const key of await xs.directory(dir).catch(() => [] as string[])) present.set(key, await xs.readString(`${dir}/${key}`));
  const lost = [...client.acknowledged].filter(([key, value]) => present.get(key) !== value).map(([key]) => key);
  const invented = [...present].filter(([key, value]) => client.attempted.get(key) !== value).map(([key]) => key);
  const torn = client.groups.filter((keys) => {
    const there = keys.filter((key) => present.has(key)).length;
    return there !== 0 && there !== keys.length;
  });
  return { lost, invented, torn };
}
