/**
 * What must hold after any xenstore fuzz batch, checked with the project's
 * own client: a new socket client and the fuzzing domain on its ring are
 * served right (write and read back, a directory, a watch that fires, a
 * transaction that commits, a removal), and once the clients are gone no
 * domain has anything left accounted to it.
 */
import { isXsError } from '../../shared/errors.js';
import { XenStoreClient } from '../../xenstore/client/client.js';
import { RingClientTransport } from '../../xenstore/client/ring-transport.js';
import type { RunningDaemon } from '../helpers/daemon.js';
import { FuzzViolation } from './violation.js';
import type { FuzzRing } from './xs-links.js';

/** How long a well-behaved client's request may take on a loaded machine. */
const STEP_TIMEOUT_MS = 10_000;

/** Quotas lifted for the ring domain's check: what the fuzzers may have used up in its name. */
const UNLIMITED_FOR_CHECK = ['nodes', 'memory'];

/** Rejects after `ms`: a well-behaved client's request that never completes is a failure, not a hang. */
async function within<T>(promise: Promise<T>, what: string, ms = STEP_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FuzzViolation(`a well-behaved client: ${what} did not complete within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function errnoOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'OK';
  } catch (err) {
    return isXsError(err) ? err.errno : String(err);
  }
}

function expect(actual: unknown, expected: unknown, what: string, who: string): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new FuzzViolation(`a well-behaved client on ${who}: ${what} gave ${JSON.stringify(actual)}, not ${JSON.stringify(expected)}`);
  }
}

/**
 * What any client must be able to do after any batch: write and read back,
 * list a directory, see a watch fire, commit a transaction, remove.
 */
async function wellBehaved(xs: XenStoreClient, base: string, who: string): Promise<void> {
  const step = <T>(promise: Promise<T>, what: string) => within(promise, `${what} (${who})`);
  await step(xs.write(`${base}/a`, 'one'), 'WRITE');
  expect(await step(xs.readString(`${base}/a`), 'READ'), 'one', 'READ after WRITE', who);
  await step(xs.mkdir(`${base}/b`), 'MKDIR');
  expect((await step(xs.directory(base), 'DIRECTORY')).sort(), ['a', 'b'], 'DIRECTORY', who);
  const watcher = await step(xs.watch(base, { token: 'well-behaved' }), 'WATCH');
  expect((await step(watcher.next(), 'the first watch event')).value?.path, base, 'the first watch event', who);
  await step(xs.write(`${base}/c`, 'three'), 'WRITE under the watch');
  expect((await step(watcher.next(), 'the watch event of a write')).value?.path, `${base}/c`, 'the watch event of a write', who);
  const tx = await step(xs.startTransaction(), 'TRANSACTION_START');
  await step(xs.write(`${base}/t`, 'in-tx', { tx }), 'WRITE in a transaction');
  expect(await step(errnoOf(xs.read(`${base}/t`)), 'READ outside the transaction'), 'ENOENT', 'READ of a node written in an open transaction', who);
  await step(xs.endTransaction(tx, true), 'TRANSACTION_END');
  expect(await step(xs.readString(`${base}/t`), 'READ after commit'), 'in-tx', 'READ after the commit', who);
  await step(watcher.close(), 'UNWATCH');
  await step(xs.rm(base), 'RM');
  expect(await step(errnoOf(xs.read(`${base}/a`)), 'READ after RM'), 'ENOENT', 'READ after RM', who);
}

export async function wellBehavedOnSocket(env: RunningDaemon): Promise<void> {
  const xs = await env.client();
  await errnoOf(xs.rm('/fuzz-check'));
  await wellBehaved(xs, '/fuzz-check', 'a new socket');
  xs.close();
}

/**
 * The ring domain, through the project's own client on the same ring: it
 * reconnects (whatever state the fuzzing left) and must be served again.
 * dom0 first gives it back a home it can write, and lifts its node and
 * memory quotas, as the fuzzers may have taken the home away or charged
 * it with nodes (dom0 may create nodes a domain owns beyond its quota, as
 * in Xen's xenstored).
 */
export async function wellBehavedOnRing(env: RunningDaemon, fuzzRing: FuzzRing, domid: number): Promise<void> {
  const dom0 = await env.client();
  const data = `/local/domain/${domid}/data`;
  await errnoOf(dom0.rm(data));
  await dom0.mkdir(data);
  await dom0.setPermissions(data, [{ domid, access: 'none' }]);
  for (const quota of UNLIMITED_FOR_CHECK) await dom0.setQuota(quota, 0, domid);
  dom0.close();
  fuzzRing.link.close();
  const xs = new XenStoreClient(new RingClientTransport(fuzzRing.ring, fuzzRing.events, fuzzRing.port));
  await within(xs.reconnect(), 'a ring reconnection');
  await wellBehaved(xs, 'data/check', `domain ${domid}'s ring`);
  xs.close();
}

/**
 * Once every socket client is gone and the ring domain holds nothing, no
 * domain has a watch, a transaction, a request or memory accounted to it
 * (XSA-416's "nothing a request allocates outlives it").
 */
export async function nothingLeftAccounted(env: RunningDaemon, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const sockets = () => [...env.daemon.connections].filter((c) => c.transport.kind === 'socket');
  while (sockets().length > 0) {
    if (Date.now() > deadline) throw new FuzzViolation(`${sockets().length} socket connections outlived their clients`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  for (const domain of env.daemon.domains.all()) {
    const held = { ...domain.counts, connectionMemory: domain.connectionMemory };
    if (Object.values(held).some((n) => n !== 0)) {
      throw new FuzzViolation(`domain ${domain.domid} still has ${JSON.stringify(held)} accounted once its clients are gone`);
    }
  }
}
