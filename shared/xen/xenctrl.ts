import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';

/**
 * xenstored's half of the native Xen platform (native/xen/xenctrl.cc):
 * the domains' states through libxenctrl, and dom0's local xenstore page.
 * Built where Xen's development files are, loaded only by a xenstored on
 * Xen (it needs /dev/xen/privcmd, and the privilege to use it).
 */
export interface XenctrlAddon {
  readonly DomainControl: new () => NativeDomainControl;
  /** The first page of a file, mapped shared and writable (/proc/xen/xsd_kva). */
  mapSharedPage(path: string): ArrayBuffer;
}

/** A domain as xc_domain_getinfo reports it. */
export interface NativeDomainInfo {
  readonly domid: number;
  readonly dying: boolean;
  readonly crashed: boolean;
  readonly shutdown: boolean;
  /** sched.h SHUTDOWN_*; meaningful when shutdown is set. */
  readonly shutdownReason: number;
  readonly paused: boolean;
  readonly pages: number;
  /** The first 6 bytes of the domain's handle (its UUID). */
  readonly handle: number;
}

/** An open /dev/xen/privcmd (xc_interface). */
export interface NativeDomainControl {
  info(domid: number): NativeDomainInfo | undefined;
  list(): NativeDomainInfo[];
  close(): void;
}

const ADDON = new URL('../../../build/Release/xenmesh_xenctrl.node', import.meta.url).pathname;

let addon: XenctrlAddon | undefined;

/** The addon, loaded on first use; an Error saying what is missing if it cannot be. */
export function xenctrlAddon(): XenctrlAddon {
  if (addon) return addon;
  if (!existsSync(ADDON)) {
    throw new Error("xenstored's Xen support is not built: it needs Xen's development files at build time (apt-get install libxen-dev, then npm run build:native)");
  }
  try {
    addon = createRequire(import.meta.url)(ADDON) as XenctrlAddon;
  } catch (err) {
    const message = (err as Error).message;
    if (message.includes('libxenctrl')) throw new Error(`xenstored on Xen needs libxenctrl.so.4.17, which is not installed (Debian package libxenmisc4.17): ${message}`);
    throw new Error(`xenstored's Xen support cannot be loaded: ${message}`);
  }
  return addon;
}
