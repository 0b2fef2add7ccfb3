import { XsError } from '../shared/errors.js';
import type { XenbusDevice } from '../xenbus/device.js';

/** What the toolstack asks of a virtual block device, from the keys libxl writes in the backend directory. */
export interface VbdConfig {
  /** Where the data is: a path (an image file or a block device), or `memory:<bytes>` for a RAM disk. */
  readonly target: StoreTarget;
  /** `mode = r`: every write and discard is refused. */
  readonly readOnly: boolean;
  /** `device-type = cdrom`. */
  readonly cdrom: boolean;
  /** `removable = 1`. */
  readonly removable: boolean;
  /** `direct-io-safe = 1`: the store may be opened with O_DIRECT. */
  readonly directIoSafe: boolean;
  /** `discard-enable` (on unless 0): whether discard is offered at all. */
  readonly discardEnabled: boolean;
  /** libxl's backend type (`phy`, `qdisk`, `tap`, `standalone`): what kind of backend the toolstack meant. */
  readonly backendType: string | undefined;
}

export type StoreTarget = { readonly kind: 'path'; readonly path: string } | { readonly kind: 'memory'; readonly bytes: number };

/**
 * Prefixes QEMU's Xen disk and libxl's `target=` syntax put before the path
 * to name a format or an access method; raw data is the only format served.
 */
const RAW_PREFIXES = ['aio:', 'raw:', 'file:', 'phy:'];

/** A RAM disk's size is bounded so that a typo cannot take the driver domain's memory: 1 GiB. */
export const MEMORY_STORE_MAX_BYTES = 1024 * 1024 * 1024;

/** Reads and checks the device's configuration (`params`, `mode`, `type`, ...); EINVAL for what cannot be served. */
export async function readVbdConfig(device: XenbusDevice): Promise<VbdConfig> {
  const params = await device.read('params');
  if (params === undefined || params.trim() === '') throw new XsError('ENOENT', `${device.node}/params names no backing store`);
  const mode = (await device.read('mode')) ?? 'w';
  if (!/^[rw]/.test(mode)) throw new XsError('EINVAL', `${device.node}/mode is '${mode}', not r or w`);
  return {
    target: parseTarget(params.trim()),
    readOnly: mode.startsWith('r'),
    cdrom: (await device.read('device-type')) === 'cdrom',
    removable: (await device.readInt('removable', 0)) !== 0,
    directIoSafe: (await device.readInt('direct-io-safe', 0)) !== 0,
    discardEnabled: (await device.readInt('discard-enable', 1)) !== 0,
    backendType: await device.read('type'),
  };
}

/** The store `params` names (libxl's `target=`, perhaps behind a raw prefix), or an XsError EINVAL saying why it names none. */
export function parseTarget(params: string): StoreTarget {
  const memory = /^memory:(\d+)$/.exec(params);
  if (memory) {
    const bytes = Number(memory[1]);
    if (bytes <= 0 || bytes % 512 !== 0 || bytes > MEMORY_STORE_MAX_BYTES) {
      throw new XsError('EINVAL', `a RAM disk of ${bytes} bytes is not a whole number of sectors up to ${MEMORY_STORE_MAX_BYTES}`);
    }
    return { kind: 'memory', bytes };
  }
  let path = params;
  for (const prefix of RAW_PREFIXES) if (path.startsWith(prefix)) path = path.slice(prefix.length);
  if (/^[a-z0-9]+:/.test(path)) throw new XsError('EINVAL', `'${params}' names a format other than raw`);
  if (!path.startsWith('/')) throw new XsError('EINVAL', `'${params}' is not an absolute path`);
  return { kind: 'path', path };
}
