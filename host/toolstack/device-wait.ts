/**
 * Waiting for a plugged device to connect, as a toolstack waits for a
 * device it added: both ends Connected, or the reason the backend or the
 * frontend gave up, from the error node it left (xenbus_dev_error's
 * `error/<device path>/error` in its domain's home).
 */
import type { XenStoreClient } from '../../xenstore/client/client.js';
import { readIfVisible, readStateAt, waitForState, watchUntil } from '../../xenbus/read.js';
import { XenbusState, stateName } from '../../xenbus/state.js';
import { devicePaths, type DeviceSpec } from './devices.js';

export type DeviceOutcome =
  | { readonly outcome: 'connected' }
  /** An end went Closing or Closed before it connected: it will not connect by itself. */
  | { readonly outcome: 'failed'; readonly reason: string }
  | { readonly outcome: 'timeout' };

/** What a device's backend did with it: ready for its frontend, refused it, or nothing yet. */
export type BackendOutcome = { readonly outcome: 'ready' } | { readonly outcome: 'failed'; readonly reason: string } | { readonly outcome: 'timeout' };

/** The states an end reaches on its way to Connected or instead of it. */
const SETTLED = [XenbusState.Connected, XenbusState.Closing, XenbusState.Closed];

/** A device's two ends: where each keeps its state, and where it leaves the reason it gave up. */
function endsOf(spec: DeviceSpec) {
  const paths = devicePaths(spec);
  return [
    { name: 'backend', state: `${paths.backend}/state`, error: `/local/domain/${spec.backendDomid}/error/backend/${spec.kind}/${spec.frontendDomid}/${spec.devid}/error` },
    { name: 'frontend', state: `${paths.frontend}/state`, error: `/local/domain/${spec.frontendDomid}/error/device/${spec.kind}/${spec.devid}/error` },
  ] as const;
}

/**
 * Waits up to `timeoutMs` for a device's backend to be ready for its
 * frontend (InitWait or Connected, with `hotplug-status` connected), as
 * libxl waits before it calls a device added: what a toolstack can wait
 * for when the frontend's domain is not running to answer.
 */
export async function waitForBackend(xs: XenStoreClient, spec: DeviceSpec, timeoutMs: number): Promise<BackendOutcome> {
  const [backend] = endsOf(spec);
  const directory = devicePaths(spec).backend;
  // Any change under the backend's directory (its state, hotplug-status) is a reason to look again.
  const outcome = await watchUntil<BackendOutcome>(xs, directory, timeoutMs, async () => {
    const state = await readStateAt(xs, backend.state);
    if (state === XenbusState.Closing || state === XenbusState.Closed) {
      return { outcome: 'failed', reason: (await readIfVisible(xs, backend.error)) ?? `its backend went ${stateName(state)}` };
    }
    const ready = state === XenbusState.InitWait || state === XenbusState.Connected;
    return ready && (await readIfVisible(xs, `${directory}/hotplug-status`)) === 'connected' ? { outcome: 'ready' } : undefined;
  });
  return outcome ?? { outcome: 'timeout' };
}

/** Waits up to `timeoutMs` for both ends of a device to connect, the backend first (the frontend connects only after it). */
export async function waitForDevice(xs: XenStoreClient, spec: DeviceSpec, timeoutMs: number): Promise<DeviceOutcome> {
  const deadline = Date.now() + timeoutMs;
  for (const end of endsOf(spec)) {
    const state = await waitForState(xs, end.state, SETTLED, Math.max(0, deadline - Date.now()));
    if (state === undefined) return { outcome: 'timeout' };
    if (state !== XenbusState.Connected) {
      const error = await readIfVisible(xs, end.error);
      return { outcome: 'failed', reason: error ?? `its ${end.name} went ${stateName(state)}` };
    }
  }
  return { outcome: 'connected' };
}
