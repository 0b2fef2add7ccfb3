import { existsSync, readFileSync } from 'node:fs';
import { XenPlatform } from '../../shared/xen/platform.js';
import { xenctrlAddon } from '../../shared/xen/xenctrl.js';
import type { HypervisorMode } from './options.js';
import { PlatformDomainBackend } from './platform-backend.js';

/**
 * Where dom0's kernel offers its own xenstore ring to a xenstored running
 * in dom0: the page and the event channel it set up at boot (Linux,
 * drivers/xen/xenfs: xenstored.c; xenbus_probe.c's xenstored_local_init()).
 */
export const XSD_KVA_PATH = '/proc/xen/xsd_kva';
export const XSD_PORT_PATH = '/proc/xen/xsd_port';

/** The domain whose kernel is xenstored's first client: dom0 (C xenstored's --master-domid default). */
export const MASTER_DOMID = 0;

export class XenHostError extends Error {}

/** xenstored's attachment to a real Xen host: the domain backend, and dom0's own ring to introduce. */
export interface XenHost {
  readonly backend: PlatformDomainBackend;
  /** dom0's end of its xenstore event channel, from XSD_PORT_PATH. */
  readonly masterPort: number;
}

/** Whether this runs in a Xen dom0 whose kernel waits for a local xenstored. */
export function xenHostPresent(): boolean {
  return existsSync(XSD_PORT_PATH);
}

/**
 * Attaches to the Xen host, as xenstored's domain_init() and dom0_init()
 * do: domain states through libxenctrl, rings through the grant table and
 * event channels, dom0's ring through its kernel's page. Undefined when
 * there is no host to attach to and none was asked for; a XenHostError
 * saying what is missing otherwise.
 */
export function attachXenHost(mode: HypervisorMode): XenHost | undefined {
  if (mode === 'none') return undefined;
  if (!xenHostPresent()) {
    if (mode === 'auto') return undefined;
    throw new XenHostError(`--hypervisor xen: ${XSD_PORT_PATH} is not there: this is not a Xen dom0 with xenfs mounted on /proc/xen, or its kernel runs no local xenstore`);
  }
  const masterPort = readMasterPort();
  try {
    const platform = XenPlatform.open(MASTER_DOMID);
    // The hypervisor must answer for dom0 before anything is served: this
    // is where a missing library or privilege shows.
    if (!platform.domainInfo(MASTER_DOMID)) throw new Error(`the hypervisor does not know domain ${MASTER_DOMID}`);
    const backend = new PlatformDomainBackend(platform, MASTER_DOMID, () => new Uint8Array(xenctrlAddon().mapSharedPage(XSD_KVA_PATH)));
    return { backend, masterPort };
  } catch (err) {
    throw new XenHostError(`cannot attach to the Xen host: ${(err as Error).message}`);
  }
}

function readMasterPort(): number {
  let text: string;
  try {
    text = readFileSync(XSD_PORT_PATH, 'utf8').trim();
  } catch (err) {
    throw new XenHostError(`cannot read ${XSD_PORT_PATH}: ${(err as Error).message}`);
  }
  const port = Number(text);
  if (!/^[0-9]+$/.test(text) || port <= 0) throw new XenHostError(`${XSD_PORT_PATH} holds ${JSON.stringify(text)}, not an event channel port`);
  return port;
}
