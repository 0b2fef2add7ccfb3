import { BusDevice, XenbusBus, type OtherendLookup } from './bus.js';
import type { BusContext, XenbusDevice } from './device.js';
import { readOtherend } from './front-bus.js';
import { XenbusState, stateName } from './state.js';

/**
 * How long a backend left connected by a previous instance waits for its
 * frontend to let go of the old connection before starting over anyway.
 */
export const BACKEND_RESET_WAIT_MS = 5000;

/**
 * The back bus (FreeBSD's xenbusb_back.c): the devices a driver domain
 * serves, under `backend/<class>/<frontend-domid>/<id>` of its own home,
 * each naming its frontend in `frontend` and `frontend-id`. A backend is
 * "online" while the toolstack wants it: it survives its frontend closing
 * and reconnecting, and goes away once it is offline and Closed.
 */
export class BackBus extends XenbusBus {
  readonly kind = 'back';

  constructor(ctx: BusContext) {
    super(ctx, 'backend', 2);
  }

  protected async getOtherendNode(device: XenbusDevice): Promise<OtherendLookup> {
    const otherend = await readOtherend(device, 'frontend', 'frontend-id');
    if (!otherend || 'malformed' in otherend) return otherend;
    // The path says whose device this is; a frontend-id that disagrees
    // would have us grant to and map from the wrong domain.
    const pathDomid = device.id.split('/')[0];
    if (String(otherend.id) !== pathDomid) {
      return { malformed: `frontend-id ${otherend.id} does not match the device path (domain ${pathDomid})` };
    }
    return otherend;
  }

  /**
   * After the driver: a frontend that comes back (Initialising) to a backend
   * that closed the previous connection but is still online is told the
   * backend is ready again (xenbusb_back_otherend_changed).
   */
  protected override async otherendChanged(entry: BusDevice, state: number): Promise<void> {
    await super.otherendChanged(entry, state);
    const { device } = entry;
    if (state === XenbusState.Initialising && device.state === XenbusState.Closed && (await this.isOnline(device))) {
      await device.switchState(XenbusState.InitWait);
    }
    await this.detachIfOffline(entry);
  }

  /**
   * After the driver: a toolstack that sets the backend Closing while the
   * frontend is already Closed (or gone) has nobody to wait for, so the
   * backend closes at once; and a backend that is offline and Closed is
   * detached.
   */
  protected override async localendChanged(entry: BusDevice, path: string): Promise<void> {
    await super.localendChanged(entry, path);
    if (path !== '/state' && path !== '/online') return;
    const { device } = entry;
    if (device.state === XenbusState.Closing) {
      const frontend = await device.readOtherendState();
      if (frontend === XenbusState.Closed || frontend === XenbusState.Unknown) {
        await device.switchState(XenbusState.Closed);
      } else if (entry.handler?.release && !(await this.isOnline(device))) {
        // Taken offline under a frontend that cannot follow (suspended for a
        // migration): what the backend holds is answered, made durable and
        // let go now, so that whoever serves the device next never reads
        // what this one had not yet written.
        await entry.handler.release();
        await device.switchState(XenbusState.Closed);
      }
    }
    await this.detachIfOffline(entry);
  }

  /**
   * `hotplug-status` says the backend's setup is done. On Xen a hotplug
   * script in the backend's domain writes it; here nothing runs beside the
   * driver, so the bus writes it once the driver has attached, as QEMU's
   * backends do.
   */
  protected override async attached(entry: BusDevice): Promise<void> {
    await entry.device.write({ 'hotplug-status': 'connected' });
  }

  /**
   * Besides Closed, the backend removes `hotplug-status`: a toolstack in
   * another domain than the backend's (a driver domain) waits for it to go
   * before it tears the device down, whichever way the backend got to
   * Closed (xenbusb_back_localend_changed).
   */
  protected override async publishDetached(entry: BusDevice): Promise<void> {
    await super.publishDetached(entry);
    await this.ctx.xs.rm(`${entry.device.node}/hotplug-status`).catch(() => {});
  }

  /**
   * A backend left past Initialising by a previous instance of this bus
   * (its worker restarted) holds a connection nobody serves: it closes it,
   * so that the frontend lets go of the old ring, and starts over from
   * Initialising. Offline devices are on their way out and left alone.
   */
  protected async recoverAtStart(device: XenbusDevice): Promise<boolean> {
    const found = device.state;
    if (found < XenbusState.InitWait || found > XenbusState.Closed || !(await this.isOnline(device))) return false;
    this.ctx.log.info(`${device.node} was left ${stateName(found)} by a previous instance; resetting the connection`);
    if (found !== XenbusState.Closed) {
      await device.switchState(XenbusState.Closing, true);
      await this.waitForOtherend(device, [XenbusState.Closed, XenbusState.Unknown], BACKEND_RESET_WAIT_MS);
      await device.switchState(XenbusState.Closed, true);
    }
    await device.switchState(XenbusState.Initialising, true);
    return true;
  }

  /** Whether the toolstack wants the device (`online`, 0 when absent, as Linux and FreeBSD read it). */
  private async isOnline(device: XenbusDevice): Promise<boolean> {
    return (await device.readInt('online', 0).catch(() => 0)) !== 0;
  }

  /** A backend that is Closed and offline is detached (the toolstack is unplugging it). */
  private async detachIfOffline(entry: BusDevice): Promise<void> {
    if (entry.phase !== 'attached' || entry.device.state !== XenbusState.Closed) return;
    if (await this.isOnline(entry.device)) return;
    await this.detach(entry, 'offline and Closed');
  }
}
