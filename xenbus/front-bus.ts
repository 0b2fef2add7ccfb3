import { DOMID_FIRST_RESERVED } from '../shared/domid.js';
import { XenbusBus, type OtherendLookup } from './bus.js';
import type { BusContext, XenbusDevice } from './device.js';
import { XenbusState, stateName } from './state.js';

/**
 * How long a frontend left connected by a previous kernel waits for its
 * backend at each step of the reset (Linux's xenbus_reset_wait_for_backend
 * gives it 5 s).
 */
export const FRONTEND_RESET_WAIT_MS = 5000;

/**
 * The front bus (FreeBSD's xenbusb_front.c): the devices a guest uses,
 * under `device/<class>/<id>` of its own home, each naming its backend in
 * `backend` and `backend-id`.
 */
export class FrontBus extends XenbusBus {
  readonly kind = 'front';

  constructor(ctx: BusContext) {
    super(ctx, 'device', 1);
  }

  protected async getOtherendNode(device: XenbusDevice): Promise<OtherendLookup> {
    return readOtherend(device, 'backend', 'backend-id');
  }

  /**
   * A device this kernel finds already past Initialising was left by the
   * kernel before it (a restart, a kexec): its backend still holds the old
   * connection. It is closed and started over the way Linux's
   * xenbus_reset_frontend does, so that the backend lets go of the old ring
   * and waits for a new one.
   */
  protected async recoverAtStart(device: XenbusDevice): Promise<boolean> {
    const found = device.state;
    if (found < XenbusState.InitWait || found > XenbusState.Closing) return false;
    this.ctx.log.info(`${device.node} was left ${stateName(found)} by a previous kernel; resetting the connection`);
    const backend = await device.readOtherendState();
    if (found !== XenbusState.Closing && backend >= XenbusState.InitWait && backend <= XenbusState.Connected) {
      await device.switchState(XenbusState.Closing, true);
      await this.waitForOtherend(device, [XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown], FRONTEND_RESET_WAIT_MS);
    }
    await device.switchState(XenbusState.Closed, true);
    await this.waitForOtherend(device, [XenbusState.Closed, XenbusState.Unknown], FRONTEND_RESET_WAIT_MS);
    await device.switchState(XenbusState.Initialising, true);
    return true;
  }
}

/**
 * Reads the other end's path and domain from this end's keys; undefined if
 * either is missing (not written yet), and what is wrong if they are
 * malformed (the toolstack's error, which the bus reports).
 */
export async function readOtherend(device: XenbusDevice, pathKey: string, idKey: string): Promise<OtherendLookup> {
  const [path, idText] = await Promise.all([device.read(pathKey), device.read(idKey)]);
  if (path === undefined || idText === undefined) return undefined;
  const id = Number(idText);
  if (!/^\d+$/.test(idText.trim()) || !Number.isSafeInteger(id) || id >= DOMID_FIRST_RESERVED || !path.startsWith('/')) {
    return { malformed: `malformed other end: ${pathKey} '${path}', ${idKey} '${idText}'` };
  }
  return { path, id };
}
