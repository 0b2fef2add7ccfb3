import { createLogger } from '../../shared/log.js';
import type { PermissionEntry, XenStoreClient } from '../../xenstore/client/client.js';
import { readStateAt, waitForState } from '../../xenbus/read.js';
import { XenbusState, stateName } from '../../xenbus/state.js';

const log = createLogger('toolstack');

/** How long an unplug waits for the two ends to close (libxl's LIBXL_DESTROY_TIMEOUT, 10 s). */
export const DEVICE_REMOVE_TIMEOUT_MS = 10_000;

/**
 * A toolstack transaction that conflicts is run again until it commits, as
 * libxl's retry_transaction loops do: each conflict means another commit
 * went through, so the toolstack as a whole makes progress.
 */
export const UNTIL_COMMITTED = Number.POSITIVE_INFINITY;

/** A split device as a toolstack describes it. */
export interface DeviceSpec {
  /** The device class: `vbd`, `echo`. */
  readonly kind: string;
  readonly frontendDomid: number;
  readonly backendDomid: number;
  /** The device number (for a disk, its virtual-device number). */
  readonly devid: number;
  /** Keys for the backend beyond the ones every device has. */
  readonly backend?: Readonly<Record<string, string>>;
  /** Keys for the frontend beyond the ones every device has. */
  readonly frontend?: Readonly<Record<string, string>>;
}

export interface DevicePaths {
  readonly frontend: string;
  readonly backend: string;
  /** libxl's own record of the device. */
  readonly libxl: string;
}

/** A device directory's permissions as libxl sets them: owned by one end, readable by the other, closed to the rest. */
function ownedAndReadable(owner: number, reader: number): PermissionEntry[] {
  return [
    { domid: owner, access: 'none' },
    { domid: reader, access: 'read' },
  ];
}

/** Where libxl puts a device's directories (libxl__device_{frontend,backend,libxl}_path). */
export function devicePaths(spec: DeviceSpec): DevicePaths {
  const { kind, frontendDomid, backendDomid, devid } = spec;
  return {
    frontend: `/local/domain/${frontendDomid}/device/${kind}/${devid}`,
    backend: `/local/domain/${backendDomid}/backend/${kind}/${frontendDomid}/${devid}`,
    libxl: `/libxl/${frontendDomid}/device/${kind}/${devid}`,
  };
}

/**
 * Plugs a device the way libxl__device_generic_add does, in one
 * transaction: the frontend directory owned by the guest and readable by
 * the backend's domain, the backend directory owned by the backend's
 * domain and readable by the guest, each naming the other, both
 * Initialising, the backend online, and libxl's copy of the backend keys.
 */
export async function plugDevice(xs: XenStoreClient, spec: DeviceSpec): Promise<DevicePaths> {
  const paths = devicePaths(spec);
  const { frontendDomid: fe, backendDomid: be } = spec;
  const frontendPerms = ownedAndReadable(fe, be);
  const frontendKeys: Record<string, string> = {
    'backend-id': String(be),
    state: String(XenbusState.Initialising),
    ...spec.frontend,
  };
  await xs.transaction(async (tx) => {
    await xs.rm(paths.libxl, { tx }).catch(() => {});
    await xs.write(`${paths.libxl}/frontend`, paths.frontend, { tx });
    await xs.write(`${paths.libxl}/backend`, paths.backend, { tx });

    await xs.rm(paths.frontend, { tx }).catch(() => {});
    await xs.mkdir(paths.frontend, { tx });
    await xs.setPermissions(paths.frontend, frontendPerms, { tx });
    await xs.write(`${paths.frontend}/backend`, paths.backend, { tx });
    for (const [key, value] of Object.entries(frontendKeys)) {
      await xs.write(`${paths.frontend}/${key}`, value, { tx });
      await xs.setPermissions(`${paths.frontend}/${key}`, frontendPerms, { tx });
    }

    await writeBackend(xs, tx, spec);
  }, UNTIL_COMMITTED);
  return paths;
}

/** The backend's directory, owned by its domain and readable by the guest, and libxl's copy of its keys. */
async function writeBackend(xs: XenStoreClient, tx: number, spec: DeviceSpec): Promise<void> {
  const paths = devicePaths(spec);
  const { frontendDomid: fe, backendDomid: be } = spec;
  const backendPerms = ownedAndReadable(be, fe);
  const backendKeys: Record<string, string> = {
    'frontend-id': String(fe),
    online: '1',
    state: String(XenbusState.Initialising),
    ...spec.backend,
  };
  await xs.rm(paths.backend, { tx }).catch(() => {});
  await xs.mkdir(paths.backend, { tx });
  await xs.setPermissions(paths.backend, backendPerms, { tx });
  await xs.write(`${paths.backend}/frontend`, paths.frontend, { tx });
  for (const [key, value] of Object.entries(backendKeys)) {
    await xs.write(`${paths.backend}/${key}`, value, { tx });
    await xs.write(`${paths.libxl}/${key}`, value, { tx });
  }
}

/**
 * Takes a device's backend away from a domain that is suspended, as a
 * save does to its source (libxl destroys the saved domain's devices): the
 * backend is set offline and Closing, answers what it had in flight, makes
 * it durable, closes its store and goes Closed; then its directory goes.
 * The frontend's directory stays, for the domain to find on resume.
 * Resolves with whether the backend closed within `timeoutMs` (it is
 * removed either way).
 */
export async function detachBackend(xs: XenStoreClient, spec: DeviceSpec, timeoutMs = DEVICE_REMOVE_TIMEOUT_MS): Promise<boolean> {
  const paths = devicePaths(spec);
  const backendState = `${paths.backend}/state`;
  const present = await xs.transaction(async (tx) => {
    const state = await xs.tryRead(backendState, { tx });
    if (state === undefined) return false;
    await xs.write(`${paths.backend}/online`, '0', { tx });
    if (Number(state) !== XenbusState.Closed) await xs.write(backendState, String(XenbusState.Closing), { tx });
    return true;
  }, UNTIL_COMMITTED);
  const closed = !present || (await waitForState(xs, backendState, [XenbusState.Closed, XenbusState.Unknown], timeoutMs)) !== undefined;
  if (!closed) log.warn(`${paths.backend}: not Closed after ${timeoutMs} ms (${stateName(await readStateAt(xs, backendState))}); removing it anyway`);
  await removeWithEmptyParents(xs, paths.backend);
  return closed;
}

/**
 * Gives a suspended domain's device a backend again, perhaps in another
 * driver domain, as a restore plugs the devices of the domain it creates:
 * a fresh backend directory, and the frontend pointed at it and set back
 * to Initialising (its keys from the old connection stay until the
 * frontend publishes new ones).
 */
export async function attachBackend(xs: XenStoreClient, spec: DeviceSpec): Promise<DevicePaths> {
  const paths = devicePaths(spec);
  await xs.transaction(async (tx) => {
    await xs.write(`${paths.libxl}/frontend`, paths.frontend, { tx });
    await xs.write(`${paths.libxl}/backend`, paths.backend, { tx });
    await xs.write(`${paths.frontend}/backend`, paths.backend, { tx });
    await xs.write(`${paths.frontend}/backend-id`, String(spec.backendDomid), { tx });
    await xs.write(`${paths.frontend}/state`, String(XenbusState.Initialising), { tx });
    // The new backend's domain reads the frontend's keys, the ones the
    // frontend wrote for the old backend too (a node keeps the permissions
    // it was created with).
    const frontendPerms = ownedAndReadable(spec.frontendDomid, spec.backendDomid);
    const grant = async (path: string): Promise<void> => {
      await xs.setPermissions(path, frontendPerms, { tx });
      for (const child of await xs.directory(path, { tx })) await grant(`${path}/${child}`);
    };
    await grant(paths.frontend);
    await writeBackend(xs, tx, spec);
  }, UNTIL_COMMITTED);
  return paths;
}

export interface UnplugResult {
  /** Whether both ends closed by themselves; false if the frontend had to be removed first. */
  readonly clean: boolean;
  readonly backendState: number;
  readonly frontendState: number;
}

export interface UnplugOptions {
  /** How long each end is given to close. */
  readonly timeoutMs?: number;
  /**
   * Remove the frontend at once, without waiting for it (libxl's forced
   * removal, what it does for a domain being destroyed).
   */
  readonly force?: boolean;
}

/**
 * Unplugs a device the way libxl does: the backend is set offline and
 * Closing, both ends are given `timeoutMs` to reach Closed, and then both
 * directories and libxl's record are removed. A frontend that does not
 * close in time (or at once, when forced) has its directory removed first,
 * which its backend takes for a frontend that went away.
 */
export async function unplugDevice(xs: XenStoreClient, spec: DeviceSpec, options: UnplugOptions = {}): Promise<UnplugResult> {
  const { timeoutMs = DEVICE_REMOVE_TIMEOUT_MS, force = false } = options;
  const paths = devicePaths(spec);
  const backendState = `${paths.backend}/state`;
  const frontendState = `${paths.frontend}/state`;
  if (force) await removeWithEmptyParents(xs, paths.frontend);
  const present = await xs.transaction(async (tx) => {
    const state = await xs.tryRead(backendState, { tx });
    if (state === undefined) return false;
    await xs.write(`${paths.backend}/online`, '0', { tx });
    if (Number(state) !== XenbusState.Closed) await xs.write(backendState, String(XenbusState.Closing), { tx });
    return true;
  }, UNTIL_COMMITTED);
  let clean = !force;
  if (present) {
    const closed = [XenbusState.Closed, XenbusState.Unknown];
    const [back, front] = await Promise.all([
      waitForState(xs, backendState, closed, timeoutMs),
      waitForState(xs, frontendState, closed, timeoutMs),
    ]);
    if (back === undefined || front === undefined) {
      clean = false;
      log.warn(
        `${paths.backend}: not closed after ${timeoutMs} ms (backend ${stateName(await readStateAt(xs, backendState))}, ` +
          `frontend ${stateName(await readStateAt(xs, frontendState))}); removing the frontend first`,
      );
      await removeWithEmptyParents(xs, paths.frontend);
      await waitForState(xs, backendState, closed, timeoutMs);
    }
  } else {
    log.info(`${paths.backend} is already gone; removing the frontend only`);
  }
  const result = {
    clean,
    backendState: await readStateAt(xs, backendState),
    frontendState: await readStateAt(xs, frontendState),
  };
  await removeWithEmptyParents(xs, paths.frontend);
  await removeWithEmptyParents(xs, paths.backend);
  await removeWithEmptyParents(xs, paths.libxl);
  return result;
}

/**
 * The devices a domain uses as a frontend, from libxl's records of them
 * (`/libxl/<domid>/device/<kind>/<devid>`), as libxl lists them to tear
 * them down with the domain.
 */
export async function devicesOf(xs: XenStoreClient, frontendDomid: number): Promise<DeviceSpec[]> {
  const root = `/libxl/${frontendDomid}/device`;
  const specs: DeviceSpec[] = [];
  for (const kind of await xs.directory(root).catch(() => [] as string[])) {
    for (const devid of await xs.directory(`${root}/${kind}`).catch(() => [] as string[])) {
      const backend = await xs.tryRead(`${root}/${kind}/${devid}/backend`);
      const backendDomid = /^\/local\/domain\/(\d+)\//.exec(backend ?? '')?.[1];
      if (backendDomid === undefined || !/^\d+$/.test(devid)) continue;
      specs.push({ kind, frontendDomid, backendDomid: Number(backendDomid), devid: Number(devid) });
    }
  }
  return specs;
}

/**
 * Removes a device directory and the class and domain directories above it
 * that it leaves empty (libxl__xs_path_cleanup), stopping at a domain's
 * `device` and `backend` directories, which belong to the domain's layout.
 */
async function removeWithEmptyParents(xs: XenStoreClient, path: string): Promise<void> {
  await xs.transaction(async (tx) => {
    await xs.rm(path, { tx }).catch(() => {});
    for (let parent = path.slice(0, path.lastIndexOf('/')); parent !== ''; parent = parent.slice(0, parent.lastIndexOf('/'))) {
      if (/\/(device|backend)$/.test(parent) || /^\/local\/domain\/\d+$/.test(parent) || parent === '/libxl') break;
      const children = await xs.directory(parent, { tx }).catch(() => undefined);
      if (children === undefined || children.length > 0) break;
      await xs.rm(parent, { tx });
    }
  }, UNTIL_COMMITTED);
}

/** What a toolstack says of a virtual disk (a subset of libxl's libxl_device_disk). */
export interface DiskSpec {
  readonly frontendDomid: number;
  readonly backendDomid: number;
  /** The guest's name for it (xen-vbd-interface(7)): `xvda`, `xvdb`, ... */
  readonly vdev: string;
  /** The raw image or block device (an absolute path), or `memory:<bytes>` for a RAM disk. */
  readonly target: string;
  readonly readOnly?: boolean;
  readonly cdrom?: boolean;
  readonly removable?: boolean;
  readonly directIoSafe?: boolean;
  readonly discard?: boolean;
}

/**
 * The device number of a Xen virtual disk name (xen-vbd-interface(7)):
 * `xvd<letters><partition>`, numbered 202 << 8 | disk << 4 | partition for
 * the first 16 disks and 1 << 28 | disk << 8 | partition beyond.
 */
export function vdevNumber(vdev: string): number {
  const match = /^xvd([a-z]+)(\d*)$/.exec(vdev);
  if (!match) throw new Error(`'${vdev}' is not a Xen virtual disk name (xvda, xvdb, ...)`);
  let disk = 0;
  for (const letter of match[1]!) disk = disk * 26 + (letter.charCodeAt(0) - 96);
  disk -= 1;
  const partition = match[2] ? Number(match[2]) : 0;
  if (disk < 16 && partition < 16) return (202 << 8) | (disk << 4) | partition;
  if (partition > 255) throw new Error(`partition ${partition} of '${vdev}' is out of range`);
  return (1 << 28) | (disk << 8) | partition;
}

/**
 * A disk as libxl's device_disk_add lays it out for a userspace (qdisk)
 * backend: `params` as format:path, the backend type, mode, device type
 * and the rest of its backend keys; `virtual-device`, `device-type`,
 * `trusted` and the native `protocol` in the frontend.
 */
export function diskDevice(disk: DiskSpec): DeviceSpec {
  const devid = vdevNumber(disk.vdev);
  const deviceType = disk.cdrom ? 'cdrom' : 'disk';
  const params = disk.target.startsWith('memory:') ? disk.target : `raw:${disk.target}`;
  const backend: Record<string, string> = {
    params,
    removable: disk.removable ? '1' : '0',
    bootable: '1',
    dev: disk.vdev,
    type: 'qdisk',
    mode: disk.readOnly ? 'r' : 'w',
    'device-type': deviceType,
    'discard-enable': disk.discard === false ? '0' : '1',
    specification: 'xen',
  };
  if (disk.directIoSafe) backend['direct-io-safe'] = '1';
  const frontend: Record<string, string> = {
    'virtual-device': String(devid),
    'device-type': deviceType,
    trusted: '1',
    protocol: 'x86_64-abi',
  };
  return { kind: 'vbd', frontendDomid: disk.frontendDomid, backendDomid: disk.backendDomid, devid, backend, frontend };
}

/** A Xen virtual disk's name from its device number, the inverse of vdevNumber: `xvda`, `xvdb1`, ...; `d<n>` for a number that is none. */
export function vdevName(devid: number): string {
  const letters = (disk: number): string => {
    let name = '';
    for (let n = disk + 1; n > 0; n = Math.floor((n - 1) / 26)) name = String.fromCharCode(97 + ((n - 1) % 26)) + name;
    return name;
  };
  if (devid >> 8 === 202) return `xvd${letters((devid >> 4) & 0xf)}${devid & 0xf || ''}`;
  if ((devid & (1 << 28)) !== 0) return `xvd${letters((devid >> 8) & 0xfffff)}${devid & 0xff || ''}`;
  return `d${devid}`;
}
