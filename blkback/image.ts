/**
 * Whether a path can back a virtual disk and, when it cannot, why, in one
 * line that names the path. blkback asks when a device attaches (as Linux
 * blkback opens its device at that point) and when it cannot open the
 * store at connect; the host's toolstack asks before it creates a domain,
 * so that a disk that could never connect is refused before anything runs.
 */
import { constants, promises as fsp, type Stats } from 'node:fs';
import { SECTOR_SIZE } from '../shared/blkif.js';
import { lockConflictMessage, lockImage } from '../shared/image-lock.js';
import { optionalNativeCalls } from '../shared/native.js';

/**
 * A path that cannot serve as a disk. `code` is the errno name the error
 * node carries (XenbusDevice.error reads it as a Node errno); the message
 * is the whole line, path first.
 */
export class ImageError extends Error {
  override readonly name = 'ImageError';
  constructor(
    readonly code: 'ENOENT' | 'ELOOP' | 'EACCES' | 'EROFS' | 'EINVAL' | 'EIO' | 'EBUSY',
    readonly path: string,
    problem: string,
  ) {
    super(`${path} ${problem}`);
  }
}

export interface ImageInfo {
  readonly path: string;
  readonly kind: 'file' | 'block device';
  /** Bytes; undefined for a block device whose size cannot be asked (the native addon is not built). */
  readonly bytes: number | undefined;
  /**
   * Why it cannot be opened read-write, as `EACCES: permission denied`;
   * undefined when it can, or when that was not asked.
   */
  readonly notWritable: string | undefined;
}

/** How the image is opened to try it. Tests stand in for what root is never refused (a mode of 0444). */
export type ImageOpener = (path: string, flags: number) => Promise<{ readonly fd: number; close(): Promise<void> }>;

export interface InspectOptions {
  /** Also try to open it read-write, and say in `notWritable` why that failed. */
  readonly write?: boolean;
  readonly open?: ImageOpener;
}

/**
 * What a path is as a disk: an existing regular file or block device,
 * readable, at least one sector long, and (if asked) whether it can be
 * opened read-write. Anything else is an ImageError. Nothing is created.
 */
export async function inspectImage(path: string, options: InspectOptions = {}): Promise<ImageInfo> {
  const open = options.open ?? fsp.open;
  const stats = await statImage(path);
  const kind = stats.isFile() ? 'file' : stats.isBlockDevice() ? 'block device' : undefined;
  if (!kind) throw new ImageError('EINVAL', path, `is ${fileType(stats)}, not a regular file or a block device`);
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY);
  } catch (err) {
    throw new ImageError(errnoOf(err), path, `cannot be read (${reasonOf(err)})`);
  }
  let bytes: number | undefined;
  try {
    bytes = kind === 'file' ? stats.size : blockDeviceBytes(handle.fd);
  } finally {
    await handle.close();
  }
  if (bytes !== undefined) {
    const short = tooShort(path, bytes);
    if (short) throw short;
  }
  let notWritable: string | undefined;
  if (options.write) {
    try {
      await (await open(path, constants.O_RDWR)).close();
    } catch (err) {
      notWritable = reasonOf(err);
    }
  }
  return { path, kind, bytes, notWritable };
}

/**
 * What stops a path from serving a disk of this mode: inspectImage's
 * refusals, and for a read-write disk an image that cannot be opened
 * read-write. Resolves with what the image is when nothing does.
 */
export async function requireImage(path: string, readOnly: boolean, open?: ImageOpener): Promise<ImageInfo> {
  const image = await inspectImage(path, { write: !readOnly, open });
  if (image.notWritable !== undefined) throw notWritableError(path, image.notWritable);
  return image;
}

/** A read-write disk whose image cannot be opened for writing. */
export function notWritableError(path: string, reason: string): ImageError {
  return new ImageError(reason.startsWith('EROFS') ? 'EROFS' : 'EACCES', path, `is not writable (${reason}), and the disk is read-write`);
}

/** The refusal for an image of `bytes`, if it holds less than one sector (blkif's unit: a disk of no sectors cannot be read). */
export function tooShort(path: string, bytes: number): ImageError | undefined {
  if (bytes >= SECTOR_SIZE) return undefined;
  return new ImageError('EINVAL', path, bytes === 0 ? `is empty (a disk needs at least one ${SECTOR_SIZE}-byte sector)` : `is ${bytes} bytes, shorter than one ${SECTOR_SIZE}-byte sector`);
}

/**
 * Why opening `path` failed, as one line: what inspectImage finds wrong
 * with it (it is gone, a dangling symlink, emptied), else the open's own
 * error. For a store that could be opened when the device attached and no
 * longer can when the frontend connects.
 */
export async function explainOpenFailure(path: string, err: unknown, readOnly: boolean): Promise<ImageError> {
  try {
    await requireImage(path, readOnly);
  } catch (found) {
    if (found instanceof ImageError) return found;
  }
  return new ImageError(errnoOf(err), path, `cannot be opened ${readOnly ? 'read-only' : 'read-write'} (${reasonOf(err)})`);
}

/** stat(2), following symlinks, with each failure said in words. */
async function statImage(path: string): Promise<Stats> {
  try {
    return await fsp.stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      const target = await fsp.readlink(path).catch(() => undefined);
      if (target !== undefined) throw new ImageError('ENOENT', path, `is a dangling symlink (its target ${target} does not exist)`);
      throw new ImageError('ENOENT', path, 'does not exist');
    }
    if (code === 'ENOTDIR') throw new ImageError('ENOENT', path, 'does not exist (a component of the path is not a directory)');
    if (code === 'ELOOP') throw new ImageError('ELOOP', path, 'is a loop of symlinks');
    if (code === 'EACCES') throw new ImageError('EACCES', path, `cannot be reached (${reasonOf(err)} on a directory above it)`);
    throw new ImageError('EIO', path, `cannot be looked at (${reasonOf(err)})`);
  }
}

function fileType(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isSocket()) return 'a socket';
  return 'neither';
}

/** A block device's size, from the kernel (BLKGETSIZE64); undefined where the native addon cannot ask. */
function blockDeviceBytes(fd: number): number | undefined {
  try {
    return optionalNativeCalls()?.blockDeviceInfo(fd).size;
  } catch {
    return undefined;
  }
}

/** `EACCES: permission denied`: Node's message without the system call and path it appends. */
function reasonOf(err: unknown): string {
  const { code, message } = err as NodeJS.ErrnoException;
  const reason = String(message ?? err).replace(/, \w+ '.*'$/s, '');
  return code && !reason.startsWith(code) ? `${code}: ${reason}` : reason;
}

function errnoOf(err: unknown): ImageError['code'] {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'EACCES' || code === 'EROFS' || code === 'ELOOP' ? code : code === 'EPERM' ? 'EACCES' : 'EIO';
}

/**
 * Locks the image a device has open as `fd` for as long as it stays open
 * (see shared/image-lock.ts), or an EBUSY ImageError naming it when
 * another backend holds a lock that refuses this one.
 */
export function lockOpenImage(path: string, fd: number, readOnly: boolean): void {
  if (lockImage(fd, readOnly) === 'conflict') throw new ImageError('EBUSY', path, lockConflictMessage(readOnly));
}

/**
 * Whether a backend could lock the image now: opened, locked and closed
 * again, so that the toolstack refuses a disk whose image another backend
 * serves before it creates anything for it. A backend of the same image
 * that is closing (a domain rebooting, or being saved) lets go within
 * LOCK_RELEASE_WAIT_MS, so a conflict is asked again until then.
 */
export async function checkImageLock(path: string, readOnly: boolean, open: ImageOpener = fsp.open): Promise<void> {
  const deadline = Date.now() + LOCK_RELEASE_WAIT_MS;
  for (;;) {
    let handle;
    try {
      handle = await open(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (err) {
      throw await explainOpenFailure(path, err, readOnly);
    }
    try {
      lockOpenImage(path, handle.fd, readOnly);
      return;
    } catch (err) {
      if (Date.now() >= deadline) throw err;
    } finally {
      await handle.close();
    }
    await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
  }
}

/**
 * How long the toolstack gives a backend that is letting go of an image
 * (answering what is in flight, flushing, closing) before it takes a lock
 * conflict for another backend's: a disconnect's flush of a busy image
 * takes this order of time.
 */
const LOCK_RELEASE_WAIT_MS = 2000;
/** How often a conflict is asked again meanwhile. */
const LOCK_RETRY_MS = 50;
