/**
 * Watches are indexed by path, and each connection's by path and token:
 * setting, removing and firing one costs the same however many watches are
 * registered, and a change looks only at the watches on its path and its
 * ancestors (for a removal, on the nodes removed). Forty thousand watches
 * on one connection used to take 19 s to set and RESET_WATCHES stalled the
 * daemon for 1.8 s.
 *
 * Work is counted as reads of watch objects, through a proxy put around each
 * one as the daemon registers it; RESET_WATCHES, whose cost lay in moving
 * list elements, which no proxy sees, is compared with the daemon's own time
 * registering the same watches in the same run.
 */
import t from 'tap';
import { performance } from 'node:perf_hooks';
import { XsType, nulStrings } from '../shared/xs-wire.js';
import type { Connection } from '../xenstore/daemon/connection.js';
import type { Watch } from '../xenstore/daemon/watches.js';
import type { XenStoreDaemon } from '../xenstore/daemon/xenstored.js';
import { startDaemon } from './helpers/daemon.js';
import { RawConnection } from './helpers/raw.js';

/** Sends one WATCH per path, all at once; resolves once every one is acknowledged. */
async function watchAll(raw: RawConnection, paths: string[], token: string): Promise<void> {
  for (const path of paths) raw.send(XsType.WATCH, nulStrings(path, token));
  let acknowledged = 0;
  while (acknowledged < paths.length) {
    const msg = await raw.next(120_000);
    if (msg.type === XsType.ERROR) throw new Error(`WATCH failed: ${msg.payload.toString('latin1')}`);
    if (msg.type === XsType.WATCH) acknowledged++;
  }
}

function unrelatedPaths(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `/unrelated/w${i}`);
}

/** Counts every read of a property of a watch the daemon registers from now on. */
function countWatchReads(daemon: XenStoreDaemon): { reads: number } {
  const counter = { reads: 0 };
  const addWatch = daemon.addWatch.bind(daemon);
  daemon.addWatch = (conn: Connection, watch: Watch<Connection>) =>
    addWatch(
      conn,
      new Proxy(watch, {
        get(target, key, receiver) {
          counter.reads++;
          return Reflect.get(target, key, receiver);
        },
      }),
    );
  return counter;
}

/** A bound on watch reads for one operation on one watch: a handful of fields, a few times over. */
const READS_PER_OPERATION = 20;

t.test('setting, removing and firing a watch reads a bounded number of watches, however many exist', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const counter = countWatchReads(env.daemon);
  const watcher = await RawConnection.connect(env.socketPath);
  const writer = await env.client();
  const count = 2000;
  await watchAll(watcher, unrelatedPaths(count), 'bulk');

  const readsOf = async (what: () => Promise<unknown>) => {
    counter.reads = 0;
    await what();
    return counter.reads;
  };
  const watching = await readsOf(() => watcher.call(XsType.WATCH, nulStrings('/unrelated/late', 'one')));
  t.ok(watching <= READS_PER_OPERATION, `WATCH with ${count} watches set (${watching} reads)`);
  const duplicate = await readsOf(async () => t.equal((await watcher.call(XsType.WATCH, nulStrings('/unrelated/w1999', 'bulk'))).text, 'EEXIST\0'));
  t.ok(duplicate <= READS_PER_OPERATION, `a duplicate WATCH (${duplicate} reads)`);
  const unwatching = await readsOf(() => watcher.call(XsType.UNWATCH, nulStrings('/unrelated/w1500', 'bulk')));
  t.ok(unwatching <= READS_PER_OPERATION, `UNWATCH (${unwatching} reads)`);
  const missing = await readsOf(async () => t.equal((await watcher.call(XsType.UNWATCH, nulStrings('/unrelated/w1500', 'bulk'))).text, 'ENOENT\0'));
  t.ok(missing <= READS_PER_OPERATION, `UNWATCH of a watch that is gone (${missing} reads)`);
  const elsewhere = await readsOf(() => writer.write('/elsewhere/node', 'x'));
  t.ok(elsewhere <= READS_PER_OPERATION, `a write no watch covers (${elsewhere} reads)`);
  const watched = await readsOf(() => writer.write('/unrelated/w7', 'x'));
  t.ok(watched <= READS_PER_OPERATION, `a write one watch covers (${watched} reads)`);
  const parent = await readsOf(() => writer.write('/unrelated', 'x'));
  t.ok(parent <= READS_PER_OPERATION, `a write to the parent of every watched path: watches below a change are not looked at (${parent} reads)`);
  const removal = await readsOf(() => writer.rm('/unrelated/w7'));
  t.ok(removal <= READS_PER_OPERATION, `removing a node one watch covers (${removal} reads)`);
  const reset = await readsOf(() => watcher.call(XsType.RESET_WATCHES, nulStrings('')));
  t.ok(reset <= READS_PER_OPERATION * count, `RESET_WATCHES reads each watch a bounded number of times (${reset} reads)`);
  t.equal(env.daemon.connections.size, 2);
  for (const conn of env.daemon.connections) t.equal(conn.watches.size, 0, 'no watch is left');
});

/**
 * RESET_WATCHES may cost a few times what registering did (both are
 * linear); with a list of watches it cost some ten times as much at this
 * size, and more the more watches there were.
 */
const MAX_RESET_RATIO = 4;

t.test('RESET_WATCHES costs about what registering the watches did', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  let registering = 0;
  const addWatch = env.daemon.addWatch.bind(env.daemon);
  env.daemon.addWatch = (conn: Connection, watch: Watch<Connection>) => {
    const start = performance.now();
    addWatch(conn, watch);
    registering += performance.now() - start;
  };
  let resetting = 0;
  const removeAllWatches = env.daemon.removeAllWatches.bind(env.daemon);
  env.daemon.removeAllWatches = (conn: Connection) => {
    const start = performance.now();
    removeAllWatches(conn);
    resetting += performance.now() - start;
  };
  const watcher = await RawConnection.connect(env.socketPath);
  const count = 30_000;
  await watchAll(watcher, unrelatedPaths(count), 'bulk');
  t.equal((await watcher.call(XsType.RESET_WATCHES, nulStrings(''))).text, 'OK\0');
  t.ok(
    resetting < MAX_RESET_RATIO * registering,
    `removing ${count} watches (${resetting.toFixed(1)} ms) against adding them (${registering.toFixed(1)} ms)`,
  );
  const writer = await env.client();
  await writer.write('/unrelated/w1', 'x');
  await writer.write('/probe', 'x');
  t.equal(await writer.readString('/probe'), 'x', 'the daemon serves on');
});
