import { ringKeyNames, ringKeys } from '../shared/blkif-keys.js';
import { FrontRing, SharedRing } from '../shared/ring.js';
import type { GrantedRing, XenbusDevice } from '../xenbus/device.js';
import type { DeviceHandler, XenbusDriver } from '../xenbus/driver.js';
import { XenbusState } from '../xenbus/state.js';
import {
  decodeResponse,
  ECHO_CLASS,
  ECHO_ENTRY_BYTES,
  ECHO_MAX_RING_PAGE_ORDER,
  EchoStatus,
  encodeRequest,
} from './protocol.js';

export interface EchoFrontOptions {
  /** The largest ring this frontend asks for, as a page order. */
  maxRingPageOrder?: number;
  /**
   * Publish a one-page ring and go Initialised at attach, without waiting
   * for the backend's InitWait (what blkif.h allows a frontend that
   * negotiates nothing).
   */
  skipInitWait?: boolean;
}

interface Pending {
  readonly payload: Uint8Array;
  resolve(reply: Uint8Array): void;
  reject(err: Error): void;
}

interface Connection {
  readonly order: number;
  readonly granted: GrantedRing;
  readonly ring: FrontRing;
  readonly port: number;
}

/** The frontend of one echo device. */
export class EchoFront implements DeviceHandler {
  /** Pages of the ring of the current connection (0 while there is none). */
  ringPages = 0;
  /** Connections made over the device's life. */
  connections = 0;
  private connection: Connection | undefined;
  private nextId = 1;
  private readonly inFlight = new Map<number, Pending>();
  /** Requests waiting for ring space, or for a connection. */
  private readonly backlog: Pending[] = [];
  private suspended = false;

  constructor(
    readonly device: XenbusDevice,
    private readonly options: EchoFrontOptions,
    private readonly onDetach: () => void = () => {},
  ) {}

  get connected(): boolean {
    return this.device.state === XenbusState.Connected && this.connection !== undefined;
  }

  /**
   * Sends `payload` to the backend and resolves with its answer. Requests
   * made while the device is not connected (or suspended) wait for the
   * connection; those in flight when it drops are sent again on the next.
   */
  echo(payload: Uint8Array): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      this.backlog.push({ payload, resolve, reject });
      this.issue();
    });
  }

  // ---- the connection protocol ------------------------------------------------------

  async otherendChanged(state: number): Promise<void> {
    const own = this.device.state;
    switch (state) {
      case XenbusState.InitWait:
      case XenbusState.Initialised:
        // Initialised: a backend that skipped InitWait and offers only the
        // defaults. Either way, the work of InitWait is done now.
        if (own === XenbusState.Initialising || own === XenbusState.Closed) await this.initialise(false);
        break;
      case XenbusState.Connected:
        if (own === XenbusState.Initialising || own === XenbusState.Closed) await this.initialise(false);
        if (this.device.state === XenbusState.Initialised) await this.connect();
        break;
      case XenbusState.Closing:
      case XenbusState.Closed:
      case XenbusState.Unknown:
        // The backend is going (or gone): stop using the ring, and close.
        this.disconnect();
        await this.device.switchState(XenbusState.Closed);
        this.device.ctx.deferred.retry();
        break;
      default:
        break;
    }
  }

  /** This frontend goes away from the backend (a driver unloaded): Closing, then Closed. */
  async close(): Promise<void> {
    await this.device.switchState(XenbusState.Closing);
    this.disconnect();
    await this.device.switchState(XenbusState.Closed);
  }

  /** This frontend comes back after close(): the backend is asked for a new connection. */
  async reopen(): Promise<void> {
    await this.device.switchState(XenbusState.Initialising);
  }

  async detach(): Promise<void> {
    this.onDetach();
    this.disconnect();
    this.device.ctx.deferred.retry();
    for (const pending of this.backlog.splice(0)) pending.reject(new Error(`${this.device.node} was detached`));
  }

  suspend(): void {
    this.suspended = true;
  }

  /** The bus has set the device Initialising and found its (maybe new) backend: the old ring is dropped. */
  resume(): void {
    this.disconnect();
    this.suspended = false;
  }

  /**
   * Grants the ring and publishes it (the work of the backend's InitWait):
   * the larger of what both ends allow, one page if the backend published
   * nothing (or this frontend skips the negotiation).
   */
  private async initialise(skipped: boolean): Promise<void> {
    const { device } = this;
    const ownMax = this.options.maxRingPageOrder ?? ECHO_MAX_RING_PAGE_ORDER;
    let order = 0;
    if (!skipped) {
      const offered = await device.readOtherendInt('max-ring-page-order', 0).catch(() => {
        device.log.warn(`${device.node}: the backend's max-ring-page-order is malformed; using one page`);
        return 0;
      });
      order = Math.max(0, Math.min(ownMax, offered));
      if (order < offered) device.log.info(`${device.node}: ring of 2^${order} pages (the backend offers 2^${offered})`);
    }
    if (this.connection && this.connection.order !== order) this.disconnect();
    if (!this.connection) {
      const granted = device.grantRing(1 << order);
      const ring = FrontRing.create(new SharedRing(granted.pages, ECHO_ENTRY_BYTES));
      const port = device.allocEventChannel(() => this.onEvent());
      this.connection = { order, granted, ring, port };
    }
    const { granted, port } = this.connection;
    const keys = { ...ringKeys(granted.grefs), 'event-channel': port };
    const stale = ringKeyNames(ECHO_MAX_RING_PAGE_ORDER).filter((key) => !(key in keys));
    if (!(await device.write(keys, stale))) return;
    await device.switchState(XenbusState.Initialised);
  }

  /** Called by the driver at attach for a frontend that does not wait for InitWait. */
  async initialiseWithoutNegotiation(): Promise<void> {
    await this.initialise(true);
  }

  private async connect(): Promise<void> {
    await this.device.switchState(XenbusState.Connected);
    this.ringPages = 1 << this.connection!.order;
    this.connections++;
    this.issue();
  }

  /**
   * Lets go of the ring: requests in flight go back to the head of the
   * backlog (they are sent again on the next connection), and the ring's
   * pages are taken back, or kept until the backend unmaps them.
   */
  private disconnect(): void {
    const connection = this.connection;
    if (!connection) return;
    this.connection = undefined;
    this.ringPages = 0;
    this.device.freeEventChannel(connection.port);
    this.backlog.unshift(...[...this.inFlight.values()]);
    this.inFlight.clear();
    this.device.releaseRing(connection.granted);
  }

  // ---- the ring ---------------------------------------------------------------------

  private issue(): void {
    const connection = this.connection;
    if (!connection || this.suspended || !this.connected) return;
    const entry = new Uint8Array(ECHO_ENTRY_BYTES);
    let queued = false;
    while (this.backlog.length > 0 && !connection.ring.full) {
      const pending = this.backlog.shift()!;
      const id = this.allocateId();
      encodeRequest({ id, payload: pending.payload }, entry);
      connection.ring.putRequest(entry);
      this.inFlight.set(id, pending);
      queued = true;
    }
    if (queued && connection.ring.pushRequestsAndCheckNotify()) this.device.notify(connection.port);
  }

  private onEvent(): void {
    const connection = this.connection;
    if (!connection) return;
    const entry = new Uint8Array(ECHO_ENTRY_BYTES);
    do {
      const waiting = connection.ring.unconsumedResponses();
      if (waiting < 0) {
        void this.device.fatal('EIO', 'the backend moved its response producer past the requests');
        this.disconnect();
        return;
      }
      for (let i = 0; i < waiting; i++) {
        connection.ring.takeResponse(entry);
        const response = decodeResponse(entry);
        const pending = this.inFlight.get(response.id);
        if (!pending) continue;
        this.inFlight.delete(response.id);
        if (response.status === EchoStatus.OKAY) pending.resolve(response.payload);
        else pending.reject(new Error(`the backend refused the request (status ${response.status})`));
      }
    } while (connection.ring.finalCheckForResponses());
    this.issue();
  }

  private allocateId(): number {
    do this.nextId = (this.nextId + 1) >>> 0;
    while (this.inFlight.has(this.nextId));
    return this.nextId;
  }
}

/** The echo frontend driver, for a front bus. */
export class EchoFrontDriver implements XenbusDriver {
  readonly name = 'echo-front';
  readonly deviceClass = ECHO_CLASS;
  /** Attached devices by id. */
  readonly devices = new Map<string, EchoFront>();

  constructor(private readonly options: EchoFrontOptions = {}) {}

  async attach(device: XenbusDevice): Promise<DeviceHandler> {
    const front = new EchoFront(device, this.options, () => {
      if (this.devices.get(device.id) === front) this.devices.delete(device.id);
    });
    this.devices.set(device.id, front);
    try {
      if (this.options.skipInitWait) await front.initialiseWithoutNegotiation();
    } catch (err) {
      await front.detach();
      throw err;
    }
    return front;
  }
}
