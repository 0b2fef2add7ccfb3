import { VDisk, SECTOR_SIZE, type BlkifAbi } from '../shared/blkif.js';
import { readTransport } from '../shared/blkif-keys.js';
import { fdatasync } from 'node:fs';
import { threadId } from 'node:worker_threads';
import type { XenbusDevice } from '../xenbus/device.js';
import type { DeviceHandler, XenbusDriver } from '../xenbus/driver.js';
import { XenbusState } from '../xenbus/state.js';
import { readVbdConfig, type VbdConfig } from './config.js';
import { requireImage } from './image.js';
import { engineChoice } from './io-engine.js';
import type { GrantAccess } from './io-pool.js';
import type { IoEngineChoice } from './ring-messages.js';
import { DEFAULT_RING_THREADS, RingThreads, type RingLease } from './ring-threads.js';
import { openStore, probeDiscard, type BackingStore } from './store.js';
import { addCounters, answeredRequests, zeroCounters } from './ring-counters.js';
import type { VbdCounters, VbdStatsReport } from '../shared/vbd-stats.js';

/** The largest ring offered: 2^4 = 16 pages (Linux blkback's default xen_blkif_max_ring_order). */
export const BLKBACK_MAX_RING_PAGE_ORDER = 4;
/** Segments an indirect request may carry (Linux blkback's default, MAX_INDIRECT_SEGMENTS). */
export const BLKBACK_MAX_INDIRECT_SEGMENTS = 256;
/** Rings (queues) a frontend may use at once. */
export const BLKBACK_MAX_QUEUES = 4;
/**
 * Devices whose counters are kept after their backend went while their
 * frontend stayed (a guest saved, to be resumed): the most a driver
 * domain serves by default (DEFAULT_DRIVER_DOMAIN_VBDS), the oldest
 * forgotten first beyond it.
 */
export const BLKBACK_RETAINED_COUNTERS = 1024;

export interface BlkbackOptions {
  /** Offer multi-page rings up to 2^order pages (0: the original single page, and neither key published). */
  maxRingPageOrder?: number;
  /** Offer indirect requests of up to this many segments (0: none, and the key not published). */
  maxIndirectSegments?: number;
  maxQueues?: number;
  /** Offer persistent grants. */
  persistent?: boolean;
  /**
   * Which keys announce the largest ring: Linux's `max-ring-page-order`,
   * the older `max-ring-pages`, or both with the same limit (blkif.h's
   * note 3), as backends of each generation publish them.
   */
  ringKeys?: 'order' | 'pages' | 'both';
  /** How the I/O reaches the frontend's pages (default: map them). */
  grantAccess?: GrantAccess;
  /** How the ring threads do their I/O (default: XENMESH_IO_ENGINE, else auto). */
  ioEngine?: IoEngineChoice;
  /** Ring threads of the driver domain (default: XENMESH_RING_THREADS, else DEFAULT_RING_THREADS). */
  ringThreads?: number;
}

/**
 * The block backend (blkback) for a back bus: one handler per virtual
 * block device. At attach it reads the toolstack's configuration and
 * publishes what it offers, then waits in InitWait; when the frontend has
 * published its rings it opens the store, publishes the disk's size, maps
 * the rings and connects; when the frontend goes away it drains what is in
 * flight, unmaps the rings and closes the store, so that whoever opens it
 * next (after a migration, another backend) reads what was written.
 */
export class BlkbackDriver implements XenbusDriver {
  readonly name = 'blkback';
  readonly deviceClass = 'vbd';
  /** Attached devices by id (`<frontend-domid>/<devid>`). */
  readonly devices = new Map<string, VbdBackend>();
  /** The counters of devices whose backend went while their frontend stayed, by id, for when they come back. */
  private readonly retained = new Map<string, VbdCounters>();
  private threads: RingThreads | undefined;
  private readonly engine: IoEngineChoice;

  constructor(private readonly options: BlkbackOptions = {}) {
    this.engine = engineChoice(options.ioEngine);
  }

  async attach(device: XenbusDevice): Promise<DeviceHandler> {
    const config = await readVbdConfig(device);
    // Opened at connect; a store that could not be served is refused now
    // (Linux blkback opens its device here), so that the toolstack learns
    // of it from the error node and the device's Closed instead of a
    // frontend waiting for a connection that cannot come.
    if (config.target.kind === 'path') await requireImage(config.target.path, config.readOnly);
    this.threads ??= this.startThreads(device);
    const earlier = this.retained.get(device.id);
    this.retained.delete(device.id);
    const backend = new VbdBackend(device, config, this.threads, this.offer(), {
      detached: () => {
        if (this.devices.get(device.id) === backend) this.devices.delete(device.id);
      },
      retired: (counters) => this.retain(device.id, counters),
      earlier,
    });
    await backend.publishFeatures();
    this.devices.set(device.id, backend);
    return backend;
  }

  /**
   * Every device's counters, summed over its rings and its connections:
   * what Linux's blkback shows under each vbd's `statistics/`.
   */
  blockStats(): VbdStatsReport[] {
    return [...this.devices.values()].map((backend) => backend.statsReport());
  }

  /** A device whose frontend stays (its guest was saved) comes back counting from where it was. */
  private retain(id: string, counters: VbdCounters): void {
    this.retained.delete(id);
    this.retained.set(id, counters);
    for (const oldest of this.retained.keys()) {
      if (this.retained.size <= BLKBACK_RETAINED_COUNTERS) break;
      this.retained.delete(oldest);
    }
  }

  /** Stops the ring threads (the kernel is going away). */
  async close(): Promise<void> {
    await this.threads?.close();
    this.threads = undefined;
  }

  /** The I/O engine the ring threads run, and why it is not io_uring where it is not (undefined before any device attached). */
  async ioEngine(): Promise<{ engine: string; reason?: string } | undefined> {
    return this.threads?.engine();
  }

  /** Rings each ring thread serves (empty before any device attached). */
  ringThreadLoad(): number[] {
    return this.threads?.load() ?? [];
  }

  private startThreads(device: XenbusDevice): RingThreads {
    const threads = new RingThreads(device.ctx.link, device.ctx.domid, this.options.ringThreads ?? ringThreadsFromEnv() ?? DEFAULT_RING_THREADS, this.engine, this.options.grantAccess ?? 'map', threadId);
    threads.start();
    void threads.engine().then(
      ({ engine, reason }) => device.log.info(`block I/O through ${engine === 'uring' ? 'io_uring' : 'the I/O pool'}${reason ? ` (${reason})` : ''}`),
      () => {},
    );
    return threads;
  }

  private offer(): Offer {
    return {
      maxRingPageOrder: this.options.maxRingPageOrder ?? BLKBACK_MAX_RING_PAGE_ORDER,
      maxIndirectSegments: this.options.maxIndirectSegments ?? BLKBACK_MAX_INDIRECT_SEGMENTS,
      maxQueues: this.options.maxQueues ?? BLKBACK_MAX_QUEUES,
      persistent: this.options.persistent ?? true,
      ringKeys: this.options.ringKeys ?? 'both',
    };
  }
}

/** What this backend offers its frontends. */
interface Offer {
  readonly maxRingPageOrder: number;
  readonly maxIndirectSegments: number;
  readonly maxQueues: number;
  readonly persistent: boolean;
  readonly ringKeys: 'order' | 'pages' | 'both';
}

/** What the frontend asked for, read when it connects. */
export interface FrontendParams {
  readonly abi: BlkifAbi;
  readonly pages: number;
  readonly queues: { readonly refs: number[]; readonly port: number }[];
  readonly persistent: boolean;
}

interface Connection {
  readonly store: BackingStore;
  readonly rings: RingLease[];
  readonly params: FrontendParams;
}

/** What a device's backend tells its driver of its life, and what it starts from. */
interface VbdLife {
  /** It is detached: the driver no longer lists it. */
  detached(): void;
  /** Its frontend outlives it (a saved guest): the counters to start from if it attaches again. */
  retired(counters: VbdCounters): void;
  /** The counters of its earlier life, if it had one. */
  readonly earlier: VbdCounters | undefined;
}

/** The backend of one virtual block device. */
export class VbdBackend implements DeviceHandler {
  private connection: Connection | undefined;
  /** A connection being made or torn down: the next one waits for it. */
  private transition: Promise<void> = Promise.resolve();
  /** Connections made over the device's life. */
  connections = 0;
  /** The counters of connections that are over (and of the device's earlier life). */
  private countersBefore: VbdCounters;
  /** The rings of a connection being torn down: still counted until they have stopped. */
  private draining: readonly RingLease[] = [];

  constructor(
    readonly device: XenbusDevice,
    readonly config: VbdConfig,
    private readonly threads: RingThreads,
    private readonly offer: Offer,
    private readonly life: VbdLife,
  ) {
    this.countersBefore = life.earlier ?? zeroCounters();
  }

  /** The store of the current connection, if any. */
  get store(): BackingStore | undefined {
    return this.connection?.store;
  }

  /** What the frontend asked for on the current connection. */
  get transport(): FrontendParams | undefined {
    return this.connection?.params;
  }

  /** Requests answered on the current connection. */
  get served(): number {
    return this.connection?.rings.reduce((sum, ring) => sum + ring.served, 0) ?? 0;
  }

  /** Requests answered over the device's life, every connection's. */
  get totalServed(): number {
    return answeredRequests(this.counters());
  }

  /** The device's counters over its life: every connection's, each summed over its rings. */
  counters(): VbdCounters {
    const rings = [...this.draining, ...(this.connection?.rings ?? [])];
    return rings.reduce((sum, ring) => addCounters(sum, ring.counters()), this.countersBefore);
  }

  /** The counters of each ring of the current connection, queue by queue (none while disconnected). */
  ringCounters(): VbdCounters[] {
    return this.connection?.rings.map((ring) => ring.counters()) ?? [];
  }

  /** The device's counters, named as the toolstack names it (`<frontend-domid>/<devid>` under the backend's domain). */
  statsReport(): VbdStatsReport {
    const [frontend, devid] = this.device.id.split('/');
    return { backendDomid: this.device.ctx.domid, frontendDomid: Number(frontend), devid: Number(devid), counters: this.counters() };
  }

  /** blkif.h's backend features, published before InitWait. */
  async publishFeatures(): Promise<void> {
    const { offer, config } = this;
    const keys: Record<string, string | number> = {
      'feature-flush-cache': 1,
      'feature-barrier': 1,
      'feature-persistent': offer.persistent ? 1 : 0,
    };
    if (offer.maxQueues > 1) keys['multi-queue-max-queues'] = offer.maxQueues;
    if (offer.maxIndirectSegments > 0) keys['feature-max-indirect-segments'] = offer.maxIndirectSegments;
    if (offer.maxRingPageOrder > 0) {
      if (offer.ringKeys !== 'pages') keys['max-ring-page-order'] = offer.maxRingPageOrder;
      if (offer.ringKeys !== 'order') keys['max-ring-pages'] = 1 << offer.maxRingPageOrder;
    }
    const discard = await probeDiscard(config);
    keys['feature-discard'] = discard ? 1 : 0;
    if (discard) {
      keys['discard-granularity'] = discard.granularity;
      keys['discard-alignment'] = discard.alignment;
      keys['discard-secure'] = discard.secure ? 1 : 0;
    }
    await this.device.write(keys);
    await this.device.switchState(XenbusState.InitWait);
  }

  async otherendChanged(state: number): Promise<void> {
    switch (state) {
      case XenbusState.Initialised:
      case XenbusState.Connected:
        // Connected too: two changes in quick succession read as one.
        if (this.device.state !== XenbusState.Connected) await this.serialised(() => this.connect());
        break;
      case XenbusState.Closing:
        await this.serialised(() => this.disconnect());
        await this.device.switchState(XenbusState.Closing);
        break;
      case XenbusState.Closed: {
        await this.serialised(() => this.disconnect());
        const own = this.device.state;
        if (own === XenbusState.Connected || own === XenbusState.Closing) await this.device.switchState(XenbusState.Closed);
        break;
      }
      case XenbusState.Unknown:
        await this.serialised(() => this.disconnect());
        await this.device.switchState(XenbusState.Closed);
        break;
      default:
        break;
    }
  }

  async detach(): Promise<void> {
    this.life.detached();
    await this.serialised(() => this.disconnect());
    // The vbd lives as long as its frontend: a saved guest keeps its
    // frontend while its backend goes, and comes back to the same counts
    // (an unplug removes the frontend first).
    const frontend = this.device.otherendPath && (await this.device.readOtherend('state').catch(() => undefined));
    if (frontend !== undefined && frontend !== '') this.life.retired(this.countersBefore);
  }

  /** Answers what is in flight, makes it durable and closes the store (the domain shuts down, or the device went offline). */
  async release(): Promise<void> {
    await this.serialised(() => this.disconnect());
  }

  /**
   * The driver domain is being suspended: nothing of the store may stay
   * open across it (it may resume on another host), so the backend lets
   * go as for a shutdown and tells the frontend it is Closing.
   */
  async suspend(): Promise<void> {
    await this.release();
    await this.device.switchState(XenbusState.Closing);
  }

  /** Resumed (the bus has set the device Initialising): offer the device again. */
  async resume(): Promise<void> {
    await this.publishFeatures();
  }

  private serialised(step: () => Promise<void>): Promise<void> {
    const next = this.transition.then(step);
    this.transition = next.catch(() => {});
    return next;
  }

  /** Reads the frontend's rings, opens the store, maps the rings, and is Connected. */
  private async connect(): Promise<void> {
    const { device } = this;
    if (this.connection) await this.disconnect();
    const params = await this.readFrontend();
    let store: BackingStore;
    try {
      store = await openStore(this.config);
    } catch (err) {
      // The store went (removed, emptied, made read-only) since the device
      // attached: the protocol's way out, as Linux blkback's
      // xenbus_dev_fatal, is the error node and Closing; the frontend
      // closes in turn and the backend follows it to Closed.
      await device.fatal(err, 'opening the backing store');
      return;
    }
    const shape = {
      description: store.description,
      sectors: store.sectors,
      readOnly: store.readOnly,
      discard: store.discard ? { secure: store.discard.secure } : undefined,
    };
    const policy = { abi: params.abi, store: shape, maxIndirectSegments: this.offer.maxIndirectSegments, flush: true, barrier: true };
    const attached = await Promise.allSettled(
      params.queues.map((q) =>
        this.threads.attach(
          { name: device.node, backend: device.ctx.domid, frontend: device.otherendId, refs: q.refs, remotePort: q.port, policy, store: store.handle, persistent: params.persistent },
          (why) => void this.broken(why),
        ),
      ),
    );
    const rings = attached.flatMap((a) => (a.status === 'fulfilled' ? [a.value] : []));
    const refused = attached.find((a): a is PromiseRejectedResult => a.status === 'rejected');
    if (refused) {
      for (const ring of rings) await ring.stop();
      await store.close();
      throw refused.reason;
    }
    this.connection = { store, rings, params };
    this.connections++;
    await device.write({
      sectors: store.sectors,
      'sector-size': SECTOR_SIZE,
      'physical-sector-size': store.physicalSectorSize,
      info: this.info(store),
    });
    await device.switchState(XenbusState.Connected);
    device.log.info(
      `${device.node}: serving ${store.description} (${store.sectors} sectors${store.readOnly ? ', read-only' : ''}${store.direct ? ', O_DIRECT' : ''}) ` +
        `on ${params.queues.length} ring(s) of ${params.pages} page(s), ${params.abi}${params.persistent ? ', persistent grants' : ''}`,
    );
  }

  /**
   * Lets requests in flight finish and be answered, unmaps the rings, makes
   * every write durable and closes the store: whatever opens the image next
   * (this backend again, or another after a migration) finds every write
   * the frontend was told of on stable storage.
   */
  private async disconnect(): Promise<void> {
    const connection = this.connection;
    if (!connection) return;
    this.connection = undefined;
    this.draining = connection.rings;
    await Promise.all(connection.rings.map((ring) => ring.stop()));
    // Nothing is in flight on a ring that stopped; a ring whose thread died
    // took its requests with it (the frontend replays them on the next connection).
    const final = connection.rings.reduce((sum, ring) => addCounters(sum, ring.counters()), this.countersBefore);
    this.countersBefore = { ...final, inFlight: 0 };
    this.draining = [];
    const { handle } = connection.store;
    if (!connection.store.readOnly && handle.kind === 'fd') {
      const failed = await new Promise<Error | null>((resolve) => fdatasync(handle.fd, resolve));
      if (failed) this.device.log.warn(`${this.device.node}: flushing ${connection.store.description} before closing it failed: ${failed.message}`);
    }
    await connection.store.close();
  }

  /** The frontend broke its ring: it is cut off, and the device goes Closing with the reason. */
  private async broken(why: string): Promise<void> {
    await this.device.fatal('EIO', why);
    await this.serialised(() => this.disconnect());
  }

  private info(store: BackingStore): number {
    return (this.config.cdrom ? VDisk.CDROM : 0) | (this.config.removable ? VDisk.REMOVABLE : 0) | (store.readOnly ? VDisk.READONLY : 0);
  }

  /**
   * The frontend's transport parameters: protocol, ring size (either
   * scheme), queues with their rings and event channels, persistent grants.
   * Anything beyond what was offered is EINVAL.
   */
  private async readFrontend(): Promise<FrontendParams> {
    const { device, offer } = this;
    const transport = await readTransport(device, offer);
    const persistent = offer.persistent && (await device.readOtherendInt('feature-persistent', 0)) !== 0;
    return { ...transport, persistent };
  }
}

/** The environment variable that sets the number of ring threads where the driver was not told. */
export const RING_THREADS_ENV = 'XENMESH_RING_THREADS';

function ringThreadsFromEnv(): number | undefined {
  const value = process.env[RING_THREADS_ENV];
  if (value === undefined) return undefined;
  if (!/^[1-9]\d{0,2}$/.test(value)) throw new RangeError(`${RING_THREADS_ENV}=${value}: the ring threads are a positive number`);
  return Number(value);
}
