/**
 * The toolstack's look at a disk's image before it attaches the disk, as
 * libxl's disk_try_backend stats the target first: an image blkback would
 * refuse (blkback/image.ts says which, and why) is refused here, in one
 * line that names the path, before a domain is created for it or any of
 * its devices is written to xenstore; so is an image another backend
 * holds locked (the lock blkback would take could not be taken).
 */
import { parseTarget } from '../../blkback/config.js';
import { checkImageLock, inspectImage, requireImage, type ImageOpener } from '../../blkback/image.js';
import { XsError } from '../../shared/errors.js';
import type { DeviceSpec } from './devices.js';

/**
 * How a disk is to be opened: xl's `access=ro` or `access=rw`, or `auto`:
 * read-write when the image can be written, read-only (and said so) when
 * it cannot.
 */
export type DiskAccess = 'ro' | 'rw' | 'auto';

/** A disk the toolstack will not attach; the message is the one line to show. */
export class DiskRefused extends Error {
  override readonly name = 'DiskRefused';
}

export interface DiskChoice {
  readonly readOnly: boolean;
  /** Why the disk is read-only though read-write was not refused: to be told to the user. */
  readonly notice?: string;
}

/** Whether the image at `path` is served read-only or read-write, or a DiskRefused saying why it cannot be served. */
export async function chooseDiskAccess(path: string, access: DiskAccess, open?: ImageOpener): Promise<DiskChoice> {
  try {
    if (access !== 'auto') {
      await requireImage(path, access === 'ro', open);
      await checkImageLock(path, access === 'ro', open);
      return { readOnly: access === 'ro' };
    }
    const image = await inspectImage(path, { write: true, open });
    // An image another backend holds is refused rather than served read-only: that backend may be writing it.
    await checkImageLock(path, image.notWritable !== undefined, open);
    if (image.notWritable === undefined) return { readOnly: false };
    return { readOnly: true, notice: `${path} is not writable (${image.notWritable}); serving it read-only` };
  } catch (err) {
    throw new DiskRefused(messageOf(err));
  }
}

/**
 * Refuses, with a DiskRefused naming the disk, the first of these devices
 * that is a disk whose image cannot be served as its `mode` says (the
 * keys diskDevice writes). Other devices, and RAM disks, pass.
 */
export async function checkDiskImages(specs: readonly DeviceSpec[], open?: ImageOpener): Promise<void> {
  for (const spec of specs) {
    const params = spec.backend?.['params'];
    if (spec.kind !== 'vbd' || params === undefined) continue;
    try {
      const target = parseTarget(params);
      if (target.kind === 'path') {
        const readOnly = spec.backend?.['mode']?.startsWith('r') ?? false;
        await requireImage(target.path, readOnly, open);
        await checkImageLock(target.path, readOnly, open);
      }
    } catch (err) {
      throw new DiskRefused(`disk ${spec.backend?.['dev'] ?? spec.devid}: ${messageOf(err)}`);
    }
  }
}

/** An error's message as a sentence, without the errno an XsError puts in front. */
function messageOf(err: unknown): string {
  const message = (err as Error).message ?? String(err);
  return err instanceof XsError ? message.replace(`${err.errno}: `, '') : message;
}
