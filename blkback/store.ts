import { constants, promises as fsp, readFileSync, type Stats } from 'node:fs';
import { nativeCalls, optionalNativeCalls } from '../shared/native.js';
import { SECTOR_SIZE } from '../shared/blkif.js';
import type { VbdConfig } from './config.js';
import { explainOpenFailure, ImageError, lockOpenImage, tooShort } from './image.js';

/**
 * How an I/O worker reaches a store; it travels in the pool's tasks. A file
 * descriptor belongs to the process, so the workers use the one the driver
 * opened; a RAM disk's bytes are shared memory.
 */
export type StoreHandle =
  | { readonly kind: 'fd'; readonly fd: number; readonly blockDevice: boolean }
  | { readonly kind: 'memory'; readonly bytes: SharedArrayBuffer };

/** What a store offers for discard, as blkif.h's `discard-*` keys publish it. */
export interface DiscardSupport {
  /** Bytes: the unit a discard frees. */
  readonly granularity: number;
  /** Bytes: where the first whole unit starts. */
  readonly alignment: number;
  /** Whether a secure discard (the data unrecoverable) is possible. */
  readonly secure: boolean;
}

/** An open backing store: its size and sector sizes, and the handle I/O goes through. */
export interface BackingStore {
  readonly description: string;
  readonly handle: StoreHandle;
  /** Size in 512-byte sectors, the unit of every blkif request. */
  readonly sectors: number;
  readonly sectorSize: number;
  readonly physicalSectorSize: number;
  readonly readOnly: boolean;
  /** Opened with O_DIRECT: writes bypass the page cache. */
  readonly direct: boolean;
  readonly discard: DiscardSupport | undefined;
  close(): Promise<void>;
}

/**
 * Opens the store a device names. An image file or a block device is
 * opened read-write unless the device is read-only, with O_DIRECT when the
 * toolstack said it is safe and the file system allows it (tmpfs does
 * not; then buffered I/O, and flushes make it durable). The image is
 * locked as QEMU locks it (shared/image-lock.ts) until the store is
 * closed. A store that cannot be served, or whose image another backend
 * holds, is an ImageError that says why in one line.
 */
export async function openStore(config: VbdConfig): Promise<BackingStore> {
  if (config.target.kind === 'memory') return memoryStore(config.target.bytes, config);
  const { path } = config.target;
  const access = config.readOnly ? constants.O_RDONLY : constants.O_RDWR;
  let handle: fsp.FileHandle;
  let direct = false;
  try {
    // O_DIRECT needs the pages aligned, which the platform can only do with the native addon.
    if (config.directIoSafe && optionalNativeCalls()) {
      try {
        handle = await fsp.open(path, access | constants.O_DIRECT);
        direct = true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        handle = await fsp.open(path, access);
      }
    } else {
      handle = await fsp.open(path, access);
    }
  } catch (err) {
    throw await explainOpenFailure(path, err, config.readOnly);
  }
  try {
    const stats = await handle.stat();
    // On the one descriptor every queue of the device uses, for as long as it is open.
    if (stats.isBlockDevice() || stats.isFile()) lockOpenImage(path, handle.fd, config.readOnly);
    if (stats.isBlockDevice()) return deviceStore(path, handle, stats, direct, config);
    if (stats.isFile()) return fileStore(path, handle, stats, direct, config);
    throw new ImageError('EINVAL', path, 'is not a regular file or a block device');
  } catch (err) {
    await handle.close().catch(() => {});
    throw err;
  }
}

function fileStore(path: string, handle: fsp.FileHandle, stats: Stats, direct: boolean, config: VbdConfig): BackingStore {
  const short = tooShort(path, stats.size);
  if (short) throw short;
  const discard = discardSupport(config, stats);
  return {
    description: path,
    handle: { kind: 'fd', fd: handle.fd, blockDevice: false },
    sectors: Math.floor(stats.size / SECTOR_SIZE),
    sectorSize: SECTOR_SIZE,
    physicalSectorSize: Math.max(SECTOR_SIZE, stats.blksize),
    readOnly: config.readOnly,
    direct,
    discard,
    close: () => handle.close(),
  };
}

function deviceStore(path: string, handle: fsp.FileHandle, stats: Stats, direct: boolean, config: VbdConfig): BackingStore {
  const info = nativeCalls().blockDeviceInfo(handle.fd);
  const short = tooShort(path, info.size);
  if (short) throw short;
  const discard = discardSupport(config, stats);
  return {
    description: path,
    handle: { kind: 'fd', fd: handle.fd, blockDevice: true },
    sectors: Math.floor(info.size / SECTOR_SIZE),
    sectorSize: info.logicalSectorSize,
    physicalSectorSize: info.physicalSectorSize,
    readOnly: config.readOnly,
    direct,
    discard,
    close: () => handle.close(),
  };
}

function memoryStore(bytes: number, config: VbdConfig): BackingStore {
  return {
    description: `memory (${bytes} bytes)`,
    handle: { kind: 'memory', bytes: new SharedArrayBuffer(bytes) },
    sectors: bytes / SECTOR_SIZE,
    sectorSize: SECTOR_SIZE,
    physicalSectorSize: SECTOR_SIZE,
    readOnly: config.readOnly,
    direct: false,
    discard: discardSupport(config, undefined),
    close: async () => {},
  };
}

/**
 * What discard a store supports, known without opening it (it is opened
 * only at connect, but offered before): a file needs holes punched (the
 * native addon), in units of the file system's block; a block device needs
 * a queue that discards; a RAM disk just zeroes. Nothing when the toolstack
 * disabled discard or the device is read-only.
 */
export async function probeDiscard(config: VbdConfig): Promise<DiscardSupport | undefined> {
  if (config.target.kind === 'memory') return discardSupport(config, undefined);
  try {
    return discardSupport(config, await fsp.stat(config.target.path));
  } catch {
    return undefined;
  }
}

function discardSupport(config: VbdConfig, stats: Stats | undefined): DiscardSupport | undefined {
  if (!config.discardEnabled || config.readOnly) return undefined;
  if (!stats) return { granularity: SECTOR_SIZE, alignment: 0, secure: true };
  if (stats.isFile()) return optionalNativeCalls() ? { granularity: stats.blksize, alignment: 0, secure: false } : undefined;
  const queue = blockQueueLimits(stats.rdev);
  if (queue.discardMaxBytes === 0) return undefined;
  return { granularity: Math.max(queue.discardGranularity, SECTOR_SIZE), alignment: 0, secure: false };
}

/** The discard limits the kernel publishes for a block device (/sys/dev/block/<major>:<minor>/queue). */
function blockQueueLimits(rdev: number): { discardGranularity: number; discardMaxBytes: number } {
  // Linux's dev_t: the major in bits 8-19 and 32-43, the minor in bits 0-7 and 20-31.
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
  const read = (name: string): number => {
    try {
      return Number(readFileSync(`/sys/dev/block/${major}:${minor}/queue/${name}`, 'utf8').trim()) || 0;
    } catch {
      return 0;
    }
  };
  return { discardGranularity: read('discard_granularity'), discardMaxBytes: read('discard_max_bytes') };
}
