import type { XenStoreClient } from '../xenstore/client/client.js';
import { DomainActionError } from './actions.js';
import { CONTROL_FEATURES, SHUTDOWN_NODE, SYSRQ_NODE, featureFor, sysrqKeyError, type ShutdownRequest } from './protocol.js';

/**
 * The toolstack's side of the control protocol, as xl and libxl do it:
 * check that the domain has PV control, write the request into its
 * `control/shutdown` (or a key into `control/sysrq`), and tell what
 * happened to it.
 */

/**
 * Refuses, as xl does, a request to a domain without PV control: one that
 * never published the feature the request needs (`control/feature-*`).
 */
export async function requireControl(xs: XenStoreClient, domid: number, label: string, request: ShutdownRequest): Promise<void> {
  const home = `/local/domain/${domid}`;
  const published = new Set<string>();
  for (const feature of CONTROL_FEATURES) if ((await xs.tryRead(`${home}/control/${feature}`)) === '1') published.add(feature);
  if (published.size === 0) {
    throw new DomainActionError(
      `${label} has no PV control interface (no control/feature-* published): ` +
        'it cannot be asked to shut down, reboot or suspend; destroy it instead',
    );
  }
  const feature = featureFor(request);
  if (!published.has(feature)) throw new DomainActionError(`${label} does not offer ${request} (control/${feature} is not 1)`);
}

/** Writes a shutdown request where the domain's control driver watches for it. */
export async function writeShutdownRequest(xs: XenStoreClient, domid: number, request: ShutdownRequest): Promise<void> {
  await xs.write(`/local/domain/${domid}/${SHUTDOWN_NODE}`, request);
}

/** Writes a SysRq key (one printable character, as xl sends it; see sysrqKeyError). */
export async function writeSysrq(xs: XenStoreClient, domid: number, key: string): Promise<void> {
  const error = sysrqKeyError(key);
  if (error) throw new DomainActionError(error);
  await xs.write(`/local/domain/${domid}/${SYSRQ_NODE}`, key);
}

/** Why a request was not carried out in time, from what its node still says. */
export async function whyNotDone(xs: XenStoreClient, domid: number, label: string, request: string, timeoutMs: number): Promise<string> {
  const left = await xs.tryRead(`/local/domain/${domid}/${SHUTDOWN_NODE}`).catch(() => undefined);
  const seconds = timeoutMs / 1000;
  if (left === request) return `${label} did not acknowledge '${request}' within ${seconds} s (control/shutdown still says it)`;
  return `${label} acknowledged '${request}' but did not finish within ${seconds} s`;
}
