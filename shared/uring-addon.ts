import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';

/**
 * The io_uring addon (native/uring/uring.cc), over liburing. It is built
 * only where liburing's development files are (Debian's liburing-dev), and
 * loads only where its library is.
 */
export interface UringAddon {
  readonly Ring: new (entries: number, onCompletions: (tags: number[], results: number[]) => void) => NativeRing;
  /** IOV_MAX: the most views one readv or writev takes. */
  readonly MAX_VIEWS: number;
  /** IORING_MAX_ENTRIES: the largest submission queue the kernel sets up. */
  readonly MAX_ENTRIES: number;
}

/**
 * One io_uring of the calling thread. Each method queues one SQE (it throws
 * when the SQ is full); submit() hands them to the kernel.
 */
export interface NativeRing {
  /** The SQ's size (entries rounded up to a power of two by the kernel). */
  readonly sqEntries: number;
  /** The CQ's size; more operations than this in flight would overflow it. */
  readonly cqEntries: number;
  readv(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void;
  writev(fd: number, views: readonly Uint8Array[], offset: number, tag: number): void;
  fdatasync(fd: number, tag: number): void;
  fallocate(fd: number, mode: number, offset: number, length: number, tag: number): void;
  /** How many queued SQEs the kernel took; the rest go with the next submit. */
  submit(): number;
  /** Waits (bounded) for what is in flight, then tears the ring down. */
  close(): void;
}

const ADDON = new URL('../../build/Release/xenmesh_uring.node', import.meta.url).pathname;

/** The shared library the addon links, and the Debian package that carries it. */
const LIBRARY = 'liburing.so.2';
const LIBRARY_PACKAGE = 'liburing2';

let addon: UringAddon | undefined;

/**
 * The addon, loaded on first use; an Error saying what is missing (the
 * build, or the library and its package) if it cannot be.
 */
export function uringAddon(): UringAddon {
  if (addon) return addon;
  if (!existsSync(ADDON)) {
    throw new Error(
      'the io_uring addon is not built: it needs liburing\'s development files at build time ' +
        '(apt-get install liburing-dev, then npm run build:native)',
    );
  }
  try {
    addon = createRequire(import.meta.url)(ADDON) as UringAddon;
  } catch (err) {
    const message = (err as Error).message;
    if (message.includes(LIBRARY)) {
      throw new Error(`the io_uring addon needs ${LIBRARY}, which is not installed (Debian package ${LIBRARY_PACKAGE}): ${message}`);
    }
    throw new Error(`the io_uring addon cannot be loaded: ${message}`);
  }
  return addon;
}
