import { EVENT_CHANNEL, readInt, readRing } from '../shared/blkif-keys.js';
import { XsError } from '../shared/errors.js';
import { PlatformError, type GrantMapping } from '../shared/platform.js';
import { BackRing, SharedRing } from '../shared/ring.js';
import type { XenbusDevice } from '../xenbus/device.js';
import type { DeviceHandler, XenbusDriver } from '../xenbus/driver.js';
import { XenbusState } from '../xenbus/state.js';
import {
  decodeRequest,
  ECHO_CLASS,
  ECHO_ENTRY_BYTES,
  ECHO_MAX_RING_PAGE_ORDER,
  ECHO_PAYLOAD_MAX,
  EchoStatus,
  encodeResponse,
} from './protocol.js';

export interface EchoBackOptions {
  /** The largest ring offered, as a page order. */
  maxRingPageOrder?: number;
  /**
   * Go straight to Initialised at attach, bypassing InitWait and publishing
   * nothing (what blkif.h allows a backend that negotiates nothing): the
   * frontend must then use the defaults, a one-page ring.
   */
  skipInitWait?: boolean;
}

interface Connection {
  readonly mapping: GrantMapping;
  readonly ring: BackRing;
  readonly port: number;
}

/** The backend of one echo device. */
export class EchoBack implements DeviceHandler {
  /** Requests answered over the device's life. */
  served = 0;
  /** Pages of the ring of the current connection (0 while there is none). */
  ringPages = 0;
  private connection: Connection | undefined;

  constructor(
    readonly device: XenbusDevice,
    /** The largest ring accepted; 0 if nothing was offered. */
    private readonly maxOrder: number,
    private readonly onDetach: () => void = () => {},
  ) {}

  async otherendChanged(state: number): Promise<void> {
    switch (state) {
      case XenbusState.Initialised:
      case XenbusState.Connected:
        // Connected too: two changes in quick succession read as one.
        if (this.device.state !== XenbusState.Connected) await this.connect();
        break;
      case XenbusState.Closing:
        this.disconnect();
        await this.device.switchState(XenbusState.Closing);
        break;
      case XenbusState.Closed: {
        this.disconnect();
        // A frontend closing a connection we had (or were closing) is
        // answered with Closed. One that was already Closed when we
        // offered InitWait is waiting for that offer, not asking us to go.
        const own = this.device.state;
        if (own === XenbusState.Connected || own === XenbusState.Closing) await this.device.switchState(XenbusState.Closed);
        break;
      }
      case XenbusState.Unknown:
        // The frontend is gone.
        this.disconnect();
        await this.device.switchState(XenbusState.Closed);
        break;
      default:
        break;
    }
  }

  detach(): void {
    this.onDetach();
    this.disconnect();
  }

  /** Every request is answered as it is taken: there is nothing to finish, only the ring to let go. */
  release(): void {
    this.disconnect();
  }

  /** Maps the ring the frontend published, binds its event channel, and is Connected. */
  private async connect(): Promise<void> {
    const { device } = this;
    this.disconnect();
    const refs = await readRing(device, this.maxOrder);
    const remotePort = await readInt(device, EVENT_CHANNEL);
    const mapping = device.mapRing(refs);
    let port: number;
    try {
      port = device.bindEventChannel(remotePort, () => this.service());
    } catch (err) {
      mapping.unmap();
      throw asXsError(err, `binding event-channel ${remotePort} of domain ${device.otherendId}`);
    }
    this.connection = { mapping, ring: new BackRing(new SharedRing(mapping.pages, ECHO_ENTRY_BYTES)), port };
    this.ringPages = refs.length;
    await device.switchState(XenbusState.Connected);
    this.service();
  }

  private disconnect(): void {
    const connection = this.connection;
    if (!connection) return;
    this.connection = undefined;
    this.ringPages = 0;
    this.device.freeEventChannel(connection.port);
    connection.mapping.unmap();
  }

  /** Answers every request on the ring; a frontend that overruns the ring is cut off. */
  private service(): void {
    const connection = this.connection;
    if (!connection) return;
    const { ring } = connection;
    const request = new Uint8Array(ECHO_ENTRY_BYTES);
    const response = new Uint8Array(ECHO_ENTRY_BYTES);
    for (;;) {
      const waiting = ring.unconsumedRequests();
      if (waiting < 0) {
        this.disconnect();
        void this.device.fatal('EIO', 'the frontend moved its request producer more than a ring ahead');
        return;
      }
      for (let i = 0; i < waiting; i++) {
        ring.takeRequest(request);
        const { id, length, payload } = decodeRequest(request);
        const status = length > ECHO_PAYLOAD_MAX ? EchoStatus.ERROR : EchoStatus.OKAY;
        encodeResponse({ id, status, payload: status === EchoStatus.OKAY ? payload : new Uint8Array(0) }, response);
        ring.putResponse(response);
        this.served++;
      }
      if (waiting > 0 && ring.pushResponsesAndCheckNotify()) this.device.notify(connection.port);
      if (ring.finalCheckForRequests() === 0) return;
    }
  }
}

function asXsError(err: unknown, what: string): XsError {
  if (err instanceof XsError) return err;
  return new XsError(err instanceof PlatformError && err.errno === 'ESRCH' ? 'ENOENT' : 'EINVAL', `${what}: ${(err as Error).message}`);
}

/** The echo backend driver, for a back bus. */
export class EchoBackDriver implements XenbusDriver {
  readonly name = 'echo-back';
  readonly deviceClass = ECHO_CLASS;
  /** Attached devices by id (`<frontend-domid>/<id>`). */
  readonly devices = new Map<string, EchoBack>();

  constructor(private readonly options: EchoBackOptions = {}) {}

  /** Publishes what the backend offers, then InitWait (or Initialised, offering nothing). */
  async attach(device: XenbusDevice): Promise<DeviceHandler> {
    const maxOrder = this.options.skipInitWait ? 0 : (this.options.maxRingPageOrder ?? ECHO_MAX_RING_PAGE_ORDER);
    const back = new EchoBack(device, maxOrder, () => {
      if (this.devices.get(device.id) === back) this.devices.delete(device.id);
    });
    if (this.options.skipInitWait) {
      await device.switchState(XenbusState.Initialised);
    } else {
      await device.write({ 'max-ring-page-order': maxOrder });
      await device.switchState(XenbusState.InitWait);
    }
    this.devices.set(device.id, back);
    return back;
  }
}
