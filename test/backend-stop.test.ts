/**
 * What a stopped backend role (`xenmesh backend`) leaves its devices in,
 * on the embedded host with a guest whose blkfront is connected: with
 * closeOnStop (a driver domain going down, --on-stop close) every device
 * goes Closing, the frontend follows, and Closed is published, so that
 * the guest sees its disk go; without it (dom0's backend restarted) the
 * states are left as they were, for the toolstack or a successor. Both
 * answer what the guest wrote and close the image.
 */
import t, { type Test } from 'tap';
import { devicePaths, diskDevice } from '../host/toolstack/devices.js';
import { STOP_TIMEOUT_MS } from '../shared/mesh/supervisor.js';
import { SHUTDOWN_WAIT_MS } from '../xenbus/bus.js';
import { waitForState } from '../xenbus/read.js';
import { XenbusState } from '../xenbus/state.js';
import { hostWithBackendRole } from './helpers/backend-role.js';
import { runDiskJob } from './helpers/disk-jobs.js';

const STATE_WAIT_MS = 20_000;
const BLOCKS = 20;

/** A host, a domain served by the backend role in a worker, and a guest whose disk it serves, Connected. */
async function servedGuest(t: Test, closeOnStop: boolean) {
  const { host, supervisor, backend } = await hostWithBackendRole(t, { closeOnStop, stopTimeoutMs: STOP_TIMEOUT_MS + SHUTDOWN_WAIT_MS });
  const guest = await host.startDomain({ name: 'guest', pages: 4096 }, { frontDrivers: ['vbd'] });
  const spec = diskDevice({ frontendDomid: guest.domid, backendDomid: backend.domid, vdev: 'xvda', target: 'memory:16777216' });
  await host.plugDevice(spec);
  const paths = devicePaths(spec);
  const states = await Promise.all([paths.frontend, paths.backend].map((p) => waitForState(host.xenstore, `${p}/state`, [XenbusState.Connected], STATE_WAIT_MS)));
  t.same(states, [XenbusState.Connected, XenbusState.Connected], 'both ends Connected');
  const written = await runDiskJob(host.xenstore, guest.domid, { id: 'write', kind: 'write', count: BLOCKS, depth: 4 }, undefined, 60_000);
  t.equal(written.acked, BLOCKS, `the guest wrote ${BLOCKS} blocks`);
  return { host, supervisor, paths };
}

t.test('closeOnStop: the backend closes its devices, and the guest sees its disk go', async (t) => {
  const { host, supervisor, paths } = await servedGuest(t, true);
  await supervisor.stop('backend', 'SIGTERM');
  t.equal(await host.xenstore.readString(`${paths.backend}/state`), String(XenbusState.Closed), 'the backend published Closed before it stopped');
  const frontend = await waitForState(host.xenstore, `${paths.frontend}/state`, [XenbusState.Closing, XenbusState.Closed], STATE_WAIT_MS);
  t.ok(frontend === XenbusState.Closing || frontend === XenbusState.Closed, `the frontend followed (${frontend}), rather than wait on a backend that is gone`);
});

t.test('without closeOnStop: the states are left for the toolstack or a successor', async (t) => {
  const { host, supervisor, paths } = await servedGuest(t, false);
  await supervisor.stop('backend', 'SIGTERM');
  t.equal(await host.xenstore.readString(`${paths.backend}/state`), String(XenbusState.Connected), 'the backend state is as it was');
  t.equal(await host.xenstore.readString(`${paths.frontend}/state`), String(XenbusState.Connected), 'and so is the frontend');
});
