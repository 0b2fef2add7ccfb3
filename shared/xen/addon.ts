import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';

/**
 * The Xen half of the native addon (native/xen/xenmesh_xen.cc), over Xen's
 * stable userspace libraries. It is built only where Xen's development
 * files are (Debian's libxen-dev), and loads only where its libraries are.
 */
export interface XenAddon {
  readonly GrantTable: new () => NativeGrantTable;
  readonly GrantShare: new () => NativeGrantShare;
  readonly EventChannels: new (onPending: (ports: number[]) => void) => NativeEventChannels;
  readonly DeviceFile: new (path: string, onReadable: () => void) => NativeDeviceFile;
}

/** An open /dev/xen/gntdev (xengnttab). */
export interface NativeGrantTable {
  setMaxGrants(count: number): void;
  /** The pages, contiguous, as one external buffer; all or none. */
  map(domid: number, refs: readonly number[], writable: boolean): ArrayBuffer;
  /** Unmaps what map() returned and detaches the buffer. */
  unmap(buffer: ArrayBuffer): void;
  /** GNTTABOP_copy; each operation's GNTST status. */
  copy(ops: readonly NativeCopyOp[]): number[];
  close(): void;
}

export type NativeCopyEnd = { domid: number; gref: number; offset: number } | { bytes: Uint8Array; offset: number };
export interface NativeCopyOp {
  source: NativeCopyEnd;
  dest: NativeCopyEnd;
  length: number;
}

/** An open /dev/xen/gntalloc (xengntshr). */
export interface NativeGrantShare {
  share(domid: number, count: number, writable: boolean): { refs: number[]; buffer: ArrayBuffer };
  unshare(buffer: ArrayBuffer): void;
  close(): void;
}

/** An open /dev/xen/evtchn (xenevtchn), watched from the worker's event loop. */
export interface NativeEventChannels {
  bindInterdomain(domid: number, remotePort: number): number;
  bindUnbound(domid: number): number;
  bindVirq(virq: number): number;
  notify(port: number): void;
  unmask(port: number): void;
  unbind(port: number): void;
  close(): void;
}

/** A device file opened non-blocking and watched for reading (/dev/xen/xenbus). */
export interface NativeDeviceFile {
  /** Bytes read; -1 when nothing is there yet; 0 at end of file. */
  read(into: Uint8Array): number;
  write(from: Uint8Array): number;
  close(): void;
}

/** An error from the addon: the library call, what it was for, and errno. */
export interface NativeError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
}

const ADDON = new URL('../../../build/Release/xenmesh_xen.node', import.meta.url).pathname;

/** The shared libraries the addon links, and the Debian packages that carry them. */
const LIBRARIES: Record<string, string> = {
  'libxengnttab.so.1': 'libxengnttab1',
  'libxenevtchn.so.1': 'libxenevtchn1',
  'libxentoolcore.so.1': 'libxentoolcore1',
  'libxentoollog.so.1': 'libxentoollog1',
};

let addon: XenAddon | undefined;

/**
 * The addon, loaded on first use; an Error saying what is missing (the
 * build, or which library and package) if it cannot be.
 */
export function xenAddon(): XenAddon {
  if (addon) return addon;
  if (!existsSync(ADDON)) {
    throw new Error(
      'the Xen platform is not built: it needs Xen\'s development files at build time ' +
        '(apt-get install libxen-dev, then npm run build:native)',
    );
  }
  try {
    addon = createRequire(import.meta.url)(ADDON) as XenAddon;
  } catch (err) {
    const message = (err as Error).message;
    const library = Object.keys(LIBRARIES).find((name) => message.includes(name));
    if (library) {
      throw new Error(`the Xen platform needs ${library}, which is not installed (Debian package ${LIBRARIES[library]}): ${message}`);
    }
    throw new Error(`the Xen platform cannot be loaded: ${message}`);
  }
  return addon;
}
