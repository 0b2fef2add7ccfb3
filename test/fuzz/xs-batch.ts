/**
 * One batch of the xenstore fuzzer: a fresh daemon (in this process, with
 * the embedded machine behind it), several dom0 socket clients and one
 * domain on its xenstore ring sending generated requests at once, then the
 * checks that must hold after any batch: the daemon logged no internal
 * error, its accounting matches its tree, a fresh well-behaved client on
 * the socket and the domain on its ring get right answers, and once the
 * clients are gone nothing they set up is left accounted to anyone.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventDispatcher } from '../../shared/event-dispatcher.js';
import { XenStoreRing } from '../../xenstore/ring.js';
import { startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import type { LogCapture } from './log-capture.js';
import { format } from './log-capture.js';
import { Prng, type Seed } from './prng.js';
import { FuzzViolation } from './violation.js';
import { XsFuzzClient, type XsClientStats } from './xs-client.js';
import { nothingLeftAccounted, wellBehavedOnRing, wellBehavedOnSocket } from './xs-checks.js';
import { RingLink, SocketLink, type FuzzRing } from './xs-links.js';
import { XsMessageGenerator } from './xs-messages.js';
import { XsVocabulary, type XsWorld } from './xs-vocabulary.js';

/** The domain that fuzzes over its ring, and the one only fuzzers introduce. */
export const RING_DOMID = 5;
const SPARE_DOMID = 9;

/**
 * The daemon's incomplete-message timeout in a batch: shorter than the
 * default 10 s, so that a ring client may leave a message unfinished and
 * see the daemon drop it without the batch waiting that long; long enough
 * that a 4 KiB message crossing the 1 KiB ring in several round trips
 * finishes in time on a loaded machine (the clock runs from its first
 * piece).
 */
const INCOMPLETE_MESSAGE_TIMEOUT_MS = 2000;

/** How long anything the daemon owes may take on a loaded machine before it counts as lost. */
export const REPLY_TIMEOUT_MS = 10_000;

export interface XsBatchOptions {
  /** Socket clients running at once. */
  readonly sockets: number;
  /** Bursts each socket client sends over its lives (a client cut off is followed by a new one). */
  readonly socketBursts: number;
  /** Bursts the ring client sends. */
  readonly ringBursts: number;
  /** The most requests in one burst. */
  readonly maxBurst: number;
}

export const DEFAULT_XS_BATCH: XsBatchOptions = { sockets: 3, socketBursts: 24, ringBursts: 30, maxBurst: 16 };

export interface XsBatchSummary {
  readonly requests: number;
  readonly replies: number;
  readonly events: number;
  readonly cutOffs: number;
}

/** Runs one batch; throws a FuzzViolation if an oracle fails. */
export async function runXenstoreBatch(seed: Seed, logs: LogCapture, options: XsBatchOptions = DEFAULT_XS_BATCH): Promise<XsBatchSummary> {
  const rng = new Prng(seed);
  logs.reset();
  const sandbox = mkdtempSync(join(tmpdir(), 'xenmesh-fuzz-'));
  const env = await startDaemon({ incompleteMessageTimeoutMs: INCOMPLETE_MESSAGE_TIMEOUT_MS });
  const ringEvents: EventDispatcher[] = [];
  try {
    const spareStart = env.build(SPARE_DOMID);
    const world: XsWorld = {
      ringDomid: RING_DOMID,
      spare: { domid: SPARE_DOMID, gfn: spareStart.storePfn, port: spareStart.storePort },
      sandbox,
    };
    await seedStore(env);
    const ring = openRing(env, ringEvents);

    const stats: XsClientStats[] = [];
    const socketSlots = Array.from({ length: options.sockets }, (_, slot) => runSocketSlot(env, rng, world, options, slot, stats));
    const ringClient = new XsFuzzClient(ring.link, clientRng(rng, 'ring'), generator(rng, 'ring', world), world, {
      bursts: options.ringBursts,
      maxBurst: Math.ceil(options.maxBurst / 2),
      replyTimeoutMs: REPLY_TIMEOUT_MS,
      stallAfterMs: INCOMPLETE_MESSAGE_TIMEOUT_MS,
    });
    stats.push(ringClient.stats);
    const ringRun = ringClient.run().catch((err: unknown) => {
      throw err instanceof FuzzViolation ? new FuzzViolation(`${ring.link.label}: ${err.message}`, err.trail) : err;
    });
    const settled = await Promise.allSettled([...socketSlots, ringRun]);
    const failed = settled.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed) throw failed.reason;

    checkLogs(logs, 'while the clients ran');
    const drift = env.daemon.checkStore();
    if (drift.length > 0) throw new FuzzViolation(`the daemon's accounting drifted from its tree: ${drift.join('; ')}`);
    await wellBehavedOnSocket(env);
    await wellBehavedOnRing(env, ring, RING_DOMID);
    await nothingLeftAccounted(env, REPLY_TIMEOUT_MS);
    checkLogs(logs, 'during the checks');

    return {
      requests: sum(stats, 'requests'),
      replies: sum(stats, 'replies'),
      events: sum(stats, 'events'),
      cutOffs: sum(stats, 'cutOffs'),
    };
  } finally {
    await env.close();
    for (const events of ringEvents) events.channels.close();
    rmSync(sandbox, { recursive: true, force: true });
  }
}

function sum(stats: readonly XsClientStats[], key: keyof XsClientStats): number {
  return stats.reduce((total, s) => total + s[key], 0);
}

/** Each client's own generator, from its own label: clients never shift each other's draws. */
function clientRng(rng: Prng, label: string): Prng {
  return rng.fork(`client ${label}`);
}

function generator(rng: Prng, label: string, world: XsWorld): XsMessageGenerator {
  const own = rng.fork(`generator ${label}`);
  const mutationRate = own.pick([0.05, 0.2, 0.4]);
  return new XsMessageGenerator(own, new XsVocabulary(own, world), mutationRate);
}

/** A few nodes for the requests to find, and the ring domain's home as libxl lays it out. */
async function seedStore(env: RunningDaemon): Promise<void> {
  const dom0 = await env.client();
  await dom0.write('/fuzz/a/b', 'seed');
  await dom0.write('/fuzz/b', 'seed');
  await dom0.setPermissions('/fuzz', [
    { domid: 0, access: 'none' },
    { domid: RING_DOMID, access: 'both' },
  ]);
  env.build(RING_DOMID);
  await env.makeDataDirectory(RING_DOMID);
  dom0.close();
}

/** Introduces the ring domain and opens its end of the ring, driven by hand. */
function openRing(env: RunningDaemon, dispatchers: EventDispatcher[]): FuzzRing {
  const start = env.startInfo(RING_DOMID);
  const domain = env.platform.domain(RING_DOMID);
  const events = new EventDispatcher(domain.openEventChannels());
  dispatchers.push(events);
  events.channels.listen(start.storePort);
  const ring = new XenStoreRing(domain.memory.page(start.storePfn));
  env.daemon.introduce(RING_DOMID, BigInt(start.storePfn), start.storePort);
  return { link: new RingLink(ring, events, start.storePort, `domain ${RING_DOMID} ring`), ring, events, port: start.storePort };
}

/** One socket client after another, each until it is cut off or has sent its share of the slot's bursts. */
async function runSocketSlot(
  env: RunningDaemon,
  rng: Prng,
  world: XsWorld,
  options: XsBatchOptions,
  slot: number,
  stats: XsClientStats[],
): Promise<void> {
  let used = 0;
  for (let life = 0; used < options.socketBursts; life++) {
    const label = `socket ${slot}.${life}`;
    const link = await SocketLink.open(env.socketPath, label);
    const client = new XsFuzzClient(link, clientRng(rng, label), generator(rng, label, world), world, {
      bursts: options.socketBursts - used,
      maxBurst: options.maxBurst,
      replyTimeoutMs: REPLY_TIMEOUT_MS,
    });
    stats.push(client.stats);
    try {
      await client.run();
    } catch (err) {
      link.close();
      if (err instanceof FuzzViolation) throw new FuzzViolation(`${label}: ${err.message}`, err.trail);
      throw err;
    }
    used += client.stats.bursts;
  }
}

function checkLogs(logs: LogCapture, when: string): void {
  const internal = logs.internalErrors;
  if (internal.length > 0) throw new FuzzViolation(`internal errors were logged ${when}: ${internal.map(format).join(' | ')}`);
}
