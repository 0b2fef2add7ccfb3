/**
 * Waiting for a plugged device to connect, as a toolstack waits for a
 * device it added: both ends Connected, or the reason the backend or the
 * frontend gave up, from the error node it left (xenbus_dev_error's
 * `error/<device path>/error` in its domain's home).
 */
import type { XenStoreClient } from '../../xenstore/client/client.js';
import { readIfVisible, waitForState } from '../../xenbus/read.js';
import { XenbusState, stateName } from '../../xenbus/state.js';
import { devicePaths, type DeviceSpec } from './devices.js';

export type DeviceOutcome =
  | { readonly outcome: 'connected' }
  /** An end went Closing or Closed before it connected: it will not connect by itself. */
  | { readonly outcome: 'failed'; readonly reason: string }
  | { readonly outcome: 'timeout' };

/** The states an end reaches on its way to Connected or instead of it. */
const SETTLED = [XenbusState.Connected, XenbusState.Closing, XenbusState.Closed];

/** Waits up to `timeoutMs` for both ends of a device to connect, the backend first (the frontend connects only after it). */
export async function waitForDevice(xs: XenStoreClient, spec: DeviceSpec, timeoutMs: number): Promise<DeviceOutcome> {
  const paths = devicePaths(spec);
  const deadline = Date.now() + timeoutMs;
  const ends = [
    { name: 'backend', state: `${paths.backend}/state`, error: `/local/domain/${spec.backendDomid}/error/backend/${spec.kind}/${spec.frontendDomid}/${spec.devid}/error` },
    { name: 'frontend', state: `${paths.frontend}/state`, error: `/local/domain/${spec.frontendDomid}/error/device/${spec.kind}/${spec.devid}/error` },
  ];
  for (const end of ends) {
    const state = await waitForState(xs, end.state, SETTLED, Math.max(0, deadline - Date.now()));
    if (state === undefined) return { outcome: 'timeout' };
    if (state !== XenbusState.Connected) {
      const error = await readIfVisible(xs, end.error);
      return { outcome: 'failed', reason: error ?? `its ${end.name} went ${stateName(state)}` };
    }
  }
  return { outcome: 'connected' };
}
