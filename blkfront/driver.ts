import { XsError } from '../shared/errors.js';
import { SECTOR_SIZE, VDisk } from '../shared/blkif.js';
import { transportKeyNames, transportKeys } from '../shared/blkif-keys.js';
import type { GrantedRing, XenbusDevice } from '../xenbus/device.js';
import type { DeviceHandler, XenbusDriver } from '../xenbus/driver.js';
import { XenbusState } from '../xenbus/state.js';
import { PERSISTENT_CALLER_GRANTS_PER_QUEUE } from './caller-grants.js';
import { BlockDevice, type DiskInfo } from './disk.js';
import { DEFAULT_FRONTEND_LIMITS, negotiate, protocolName, type FrontendLimits, type Negotiated } from './negotiate.js';
import { GrantedPages } from './pages.js';
import { BlkfrontQueue, type BackendProtocolError, type RingReport } from './queue.js';

/** How long a frontend that shuts down waits for its backend to answer what it has in flight. */
export const SHUTDOWN_DRAIN_MS = 5000;

/** Whether `work` settled (either way) within `ms`. */
async function settleWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([work.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The keys of an earlier connection's rings, removed before a new one is published. */
function staleKeys(limits: FrontendLimits): string[] {
  return transportKeyNames(limits.maxRingPageOrder, limits.maxQueues);
}

/**
 * The block frontend (blkfront) for a front bus. Its BlockDevice is what
 * the domain uses; the driver connects it to whatever backend the device
 * names, negotiating the lesser of both ends' limits.
 */
export class BlkfrontDriver implements XenbusDriver {
  readonly name = 'blkfront';
  readonly deviceClass = 'vbd';
  /** Attached devices by id (the virtual-device number). */
  readonly devices = new Map<string, VbdFrontend>();
  private readonly limits: FrontendLimits;

  constructor(limits: Partial<FrontendLimits> = {}) {
    this.limits = { ...DEFAULT_FRONTEND_LIMITS, ...limits };
  }

  /** Makes what every disk was written durable (sysrq s, an emergency sync). */
  async sync(): Promise<void> {
    await Promise.all([...this.devices.values()].map((frontend) => frontend.sync()));
  }

  async attach(device: XenbusDevice): Promise<DeviceHandler> {
    const frontend = new VbdFrontend(device, this.limits, () => {
      if (this.devices.get(device.id) === frontend) this.devices.delete(device.id);
    });
    this.devices.set(device.id, frontend);
    return frontend;
  }
}

interface Ring {
  readonly granted: GrantedRing;
  readonly port: number;
  readonly queue: BlkfrontQueue;
}

interface Connection {
  readonly negotiated: Negotiated;
  readonly rings: Ring[];
  readonly pages: GrantedPages;
}

/** The frontend of one virtual block device. */
export class VbdFrontend implements DeviceHandler {
  readonly disk: BlockDevice;
  private connection: Connection | undefined;
  /** Pages no grant names now, reused across connections and given back to the domain when the device is detached. */
  private readonly sparePages: number[] = [];
  /** Connections made over the device's life. */
  connections = 0;

  constructor(
    readonly device: XenbusDevice,
    private readonly limits: FrontendLimits,
    private readonly onDetach: () => void,
  ) {
    this.disk = new BlockDevice(device.ctx.domain.memory);
  }

  /** What this connection negotiated, while connected. */
  get negotiated(): Negotiated | undefined {
    return this.connection?.negotiated;
  }

  /** This connection's queues, one per ring (for diagnostics and tests). */
  get queues(): readonly BlkfrontQueue[] {
    return this.connection?.rings.map((ring) => ring.queue) ?? [];
  }

  /** Each ring's indexes and unanswered requests (by queue), for diagnosing a request that is never answered. */
  ringReports(): (RingReport & { port: number })[] {
    return this.connection?.rings.map((ring) => ({ ...ring.queue.report(), port: ring.port })) ?? [];
  }

  async otherendChanged(state: number): Promise<void> {
    const own = this.device.state;
    switch (state) {
      case XenbusState.InitWait:
      case XenbusState.Initialised:
        // Initialised: a backend that skipped InitWait; do InitWait's work now.
        if (own === XenbusState.Initialising || own === XenbusState.Closed) await this.initialise();
        break;
      case XenbusState.Connected:
        if (own === XenbusState.Initialising || own === XenbusState.Closed) await this.initialise();
        if (this.device.state === XenbusState.Initialised) await this.connect();
        break;
      case XenbusState.Closing:
      case XenbusState.Closed:
      case XenbusState.Unknown:
        // The backend is going: stop, keep what is in flight for the next one.
        this.teardown();
        await this.device.switchState(XenbusState.Closed);
        this.device.ctx.deferred.retry();
        break;
      default:
        break;
    }
  }

  async detach(): Promise<void> {
    this.onDetach();
    this.teardown();
    this.device.ctx.deferred.retry();
    this.disk.close(new Error(`${this.device.node} was detached`));
    // The pages kept for a next connection go back to the domain: there is none for a detached device.
    this.device.ctx.domain.memory.freePages(this.sparePages.splice(0));
  }

  /**
   * The domain shuts down: what was made is answered (for at most
   * SHUTDOWN_DRAIN_MS, if no backend answers) and flushed, as a kernel
   * syncs its disks before it powers off; then the rings go.
   */
  async release(): Promise<void> {
    await this.sync();
    this.disk.pause();
    this.teardown();
  }

  /** Makes what was written so far durable, if a backend is there to answer in time. */
  async sync(): Promise<void> {
    const drained = await settleWithin(this.disk.idle(), SHUTDOWN_DRAIN_MS);
    if (!drained) {
      this.device.log.warn(`${this.device.node}: ${this.disk.outstanding} request(s) still unanswered after ${SHUTDOWN_DRAIN_MS} ms`);
      return;
    }
    if (!this.disk.connected || this.disk.info?.readOnly) return;
    if (!(await settleWithin(this.disk.flush(), SHUTDOWN_DRAIN_MS))) this.device.log.warn(`${this.device.node}: the flush was not answered in time`);
  }

  /** Stops issuing requests; those in flight stay on the rings. */
  suspend(): void {
    this.disk.pause();
  }

  /**
   * After the domain resumed (its device now Initialising, perhaps with
   * another backend): the old rings are dropped, their unanswered requests
   * wait for the next connection.
   */
  resume(): void {
    this.teardown();
    this.disk.unpause();
  }

  /**
   * Negotiates with the backend's offer, grants the rings, builds a queue
   * on each from its handles, and publishes them (InitWait's work).
   */
  private async initialise(): Promise<void> {
    const { device, limits } = this;
    this.teardown();
    const negotiated = await negotiate(device, limits);
    const pages = new GrantedPages(
      device.ctx.domain,
      device.ctx.deferred,
      device.otherendId,
      negotiated.persistent,
      this.sparePages,
      PERSISTENT_CALLER_GRANTS_PER_QUEUE * negotiated.queues,
    );
    const connection: Connection = { negotiated, rings: [], pages };
    this.connection = connection;
    try {
      for (let q = 0; q < negotiated.queues; q++) {
        const granted = device.grantRing(negotiated.ringPages);
        let port: number;
        try {
          // Unbound for the backend; the queue binds its own handler to it.
          port = device.ctx.events.channels.allocUnbound(device.otherendId);
        } catch (err) {
          device.releaseRing(granted);
          throw err;
        }
        const queue = new BlkfrontQueue(
          {
            ringPages: granted.pages,
            port,
            events: device.ctx.events,
            abi: negotiated.abi,
            handle: Number(device.id) || 0,
            segmentsPerRequest: negotiated.segmentsPerRequest,
            pages,
            firstRingIndex: limits.firstRingIndex,
          },
          this.disk,
          (err) => this.backendBroke(err),
        );
        connection.rings.push({ granted, port, queue });
      }
    } catch (err) {
      this.teardown();
      throw err;
    }
    const keys: Record<string, string | number> = {
      ...transportKeys(connection.rings.map((ring) => ({ grefs: ring.granted.grefs, port: ring.port })), limits.ringKeys),
      protocol: protocolName(negotiated.abi),
      'feature-persistent': limits.persistent ? 1 : 0,
    };
    if (!(await device.write(keys, staleKeys(limits).filter((key) => !(key in keys))))) return;
    await device.switchState(XenbusState.Initialised);
  }

  /** The backend connected: learn the disk, and let the requests go. */
  private async connect(): Promise<void> {
    const connection = this.connection;
    if (!connection) return;
    const info = await this.readDiskInfo();
    await this.device.switchState(XenbusState.Connected);
    if (this.device.state !== XenbusState.Connected) return;
    this.connections++;
    this.disk.connect(
      connection.rings.map((ring) => ring.queue),
      info,
      connection.pages.callerPages,
    );
    this.device.log.info(
      `${this.device.node}: ${info.sectors} sectors${info.readOnly ? ' (read-only)' : ''} over ${connection.rings.length} ring(s) of ` +
        `${connection.negotiated.ringPages} page(s), ${connection.negotiated.segmentsPerRequest} segments per request` +
        `${connection.negotiated.persistent ? ', persistent grants' : ''}`,
    );
  }

  private async readDiskInfo(): Promise<DiskInfo> {
    const { device } = this;
    const sectors = await device.readOtherendInt('sectors');
    const sectorSize = await device.readOtherendInt('sector-size', SECTOR_SIZE);
    // Requests count 512-byte sectors; a larger logical sector needs
    // feature-large-sector-size, which this frontend does not offer.
    if (sectorSize !== SECTOR_SIZE) throw new XsError('EINVAL', `sector-size ${sectorSize} is not ${SECTOR_SIZE}`);
    const info = await device.readOtherendInt('info', 0);
    const feature = async (key: string) => (await device.readOtherendInt(key, 0).catch(() => 0)) !== 0;
    const flushCache = await feature('feature-flush-cache');
    const barrier = await feature('feature-barrier');
    const discard = await feature('feature-discard');
    return {
      sectors,
      sectorSize,
      physicalSectorSize: await device.readOtherendInt('physical-sector-size', sectorSize),
      readOnly: (info & VDisk.READONLY) !== 0,
      cdrom: (info & VDisk.CDROM) !== 0,
      removable: (info & VDisk.REMOVABLE) !== 0,
      flush: flushCache ? 'flush' : barrier ? 'barrier' : 'none',
      barrier,
      discard: discard
        ? {
            granularity: await device.readOtherendInt('discard-granularity', sectorSize),
            alignment: await device.readOtherendInt('discard-alignment', 0),
            secure: await feature('discard-secure'),
          }
        : undefined,
    };
  }

  /** A backend that broke the protocol on a ring is cut off. */
  private backendBroke(err: BackendProtocolError): void {
    this.teardown();
    void this.device.fatal('EIO', err.message);
  }

  /** Lets go of the rings; unanswered requests wait for the next connection. */
  private teardown(): void {
    const connection = this.connection;
    if (!connection) return;
    this.connection = undefined;
    this.disk.disconnect();
    for (const ring of connection.rings) {
      ring.queue.close();
      this.device.freeEventChannel(ring.port);
    }
    connection.pages.releaseAll();
    for (const ring of connection.rings) this.device.releaseRing(ring.granted);
  }
}
