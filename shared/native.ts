import { createRequire } from 'node:module';

/**
 * The system calls Node lacks, from the native addon in native/ (built by
 * `npm ci`, or `npm run build:native`). The block calls block: call them
 * on an I/O worker; lockFile and sdNotify return at once.
 */
export interface NativeCalls {
  /** Deallocates a byte range of a file (fallocate PUNCH_HOLE | KEEP_SIZE); it reads back as zeros. */
  punchHole(fd: number, offset: number, length: number): void;
  /** BLKDISCARD (or BLKSECDISCARD) of a byte range of a block device. */
  discardBlocks(fd: number, offset: number, length: number, secure: boolean): void;
  /** A block device's size in bytes and its logical and physical sector sizes. */
  blockDeviceInfo(fd: number): { size: number; logicalSectorSize: number; physicalSectorSize: number };
  /** Where a typed array's first byte is in memory. */
  addressOf(view: Uint8Array): number;
  /**
   * Locks the whole file for this open file description (F_OFD_SETLK): a
   * write lock if `exclusive`, else a read lock. True if taken, false if
   * another open file description holds a conflicting one; never waits.
   * Closing the file releases it.
   */
  lockFile(fd: number, exclusive: boolean): boolean;
  /** Sends `message` to systemd's notify socket at `socketPath` ('@' for the abstract namespace), as sd_notify(3). */
  sdNotify(socketPath: string, message: string): void;
}

const ADDON = new URL('../../build/Release/xenmesh_native.node', import.meta.url);

let calls: NativeCalls | undefined;

/** The addon, loaded on first use; an Error saying how to build it if it is missing. */
export function nativeCalls(): NativeCalls {
  if (!calls) {
    try {
      calls = createRequire(import.meta.url)(ADDON.pathname) as NativeCalls;
    } catch (err) {
      throw new Error(`the native addon is not built (${(err as Error).message}); run npm run build:native`);
    }
  }
  return calls;
}

/** The addon if it is built, undefined if not (for what works without it, less well). */
export function optionalNativeCalls(): NativeCalls | undefined {
  try {
    return nativeCalls();
  } catch {
    return undefined;
  }
}
