/**
 * Image locks as QEMU takes them (its file-posix "locking" option): an
 * open file description lock on the whole image, a write lock for a
 * read-write disk and a read lock for a read-only one. Two backends never
 * write one image, a read-only disk is never served while another backend
 * writes it, and read-only disks share an image freely. The lock belongs
 * to the open file description, so it is held by the one descriptor a
 * device's queues all use and goes when that is closed; being OFD locks,
 * two descriptors of one process conflict as two processes would, which is
 * what keeps two driver domains of one embedded host apart.
 */
import { createLogger } from './log.js';
import { optionalNativeCalls } from './native.js';

const log = createLogger('image-lock');

/** What came of trying to lock an image: taken, held by another, or not possible here. */
export type ImageLockResult = 'locked' | 'conflict' | 'unsupported';

let toldUnsupported = false;

/**
 * Locks the image open as `fd`: exclusively (a write lock) for a
 * read-write disk, shared (a read lock) for a read-only one. Never waits.
 * Where the native addon is not built, the images are served without
 * locks, and the log says so once.
 */
export function lockImage(fd: number, readOnly: boolean): ImageLockResult {
  const native = optionalNativeCalls();
  if (!native) {
    if (!toldUnsupported) {
      toldUnsupported = true;
      log.warn('the native addon is not built (npm run build:native): disk images are served without locks, so nothing stops two backends from writing one image');
    }
    return 'unsupported';
  }
  try {
    return native.lockFile(fd, !readOnly) ? 'locked' : 'conflict';
  } catch (err) {
    // A file system without record locks (ENOLCK), as QEMU's locking=auto
    // takes it: the image is served, unlocked, and the log says so.
    log.warn(`cannot lock an image (${(err as Error).message}): it is served without a lock`);
    return 'unsupported';
  }
}

/** The one line for an image whose lock another backend holds. */
export function lockConflictMessage(readOnly: boolean): string {
  return readOnly
    ? 'is in use: another backend holds it read-write, so it cannot be served read-only'
    : 'is in use: another backend holds it, so it cannot be served read-write';
}
