/**
 * Looking for anything through which users other than the owner could reach
 * a Unix socket: the socket with any bit beyond 0600, or a directory beside it
 * with any bit for group or others. Run in a worker thread, it looks as fast
 * as it can until told to stop, to catch what exists only for a moment.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

export interface Sightings {
  /** How many times a socket was seen at all (to show the watcher was looking). */
  sockets: number;
  /** What others could have used, e.g. `socket: socket 777`. */
  reachable: string[];
}

/** Only the owner may connect. */
const OTHERS_SOCKET_BITS = 0o177;
/** Group and others may not search, list or change. */
const OTHERS_DIRECTORY_BITS = 0o077;

/** One look at `path` and everything beside it. */
export function look(path: string, seen: Sightings): void {
  const dir = dirname(path);
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    // Not there yet.
  }
  if (!names.includes(basename(path))) names.push(basename(path));
  for (const name of names) {
    const st = lstatSync(join(dir, name), { throwIfNoEntry: false });
    if (!st) continue;
    const perm = st.mode & 0o777;
    const what = `${name}: ${st.isSocket() ? 'socket' : st.isDirectory() ? 'directory' : 'file'} ${perm.toString(8)}`;
    if (st.isSocket()) {
      seen.sockets++;
      if (perm & OTHERS_SOCKET_BITS && !seen.reachable.includes(what)) seen.reachable.push(what);
    } else if (st.isDirectory() && perm & OTHERS_DIRECTORY_BITS && !seen.reachable.includes(what)) {
      seen.reachable.push(what);
    }
  }
}

/**
 * Starts looking at `path` from another thread and resolves once it is
 * looking; the function it resolves with stops it and tells what it saw.
 */
export async function watchSocket(path: string): Promise<() => Promise<Sightings>> {
  const stop = new SharedArrayBuffer(4);
  const worker = new Worker(new URL(import.meta.url), { workerData: { socketWatch: path, stop } });
  const failed = new Promise<never>((_resolve, reject) => worker.once('error', reject));
  // It says 'looking' once it is, then what it saw once told to stop.
  const message = () => Promise.race([failed, new Promise<unknown>((resolve) => worker.once('message', resolve))]);
  await message();
  return async () => {
    Atomics.store(new Int32Array(stop), 0, 1);
    const seen = (await message()) as Sightings;
    await worker.terminate();
    return seen;
  };
}

if (!isMainThread && typeof workerData?.socketWatch === 'string') {
  const stop = new Int32Array(workerData.stop as SharedArrayBuffer);
  const seen: Sightings = { sockets: 0, reachable: [] };
  parentPort!.postMessage('looking');
  while (Atomics.load(stop, 0) === 0) look(workerData.socketWatch as string, seen);
  parentPort!.postMessage(seen);
}
