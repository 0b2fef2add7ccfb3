/**
 * One driver domain serves 100 disks. C xenstored's default quota of 1000
 * nodes would stop it at about 30; the host raises a vbd driver domain's
 * quotas for what it serves, as an operator would with xenstore-control.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_DRIVER_DOMAIN_VBDS, XENSTORE_COST_PER_VBD, quotasForVbds } from '../host/toolstack/device-quotas.js';
import { diskDevice, devicePaths } from '../host/toolstack/devices.js';
import { Host } from '../host/machine/host.js';
import { setLogSink } from '../shared/log.js';
import { DEFAULT_HARD_QUOTAS } from '../xenstore/store/quota.js';
import { waitForState } from '../xenbus/read.js';
import { XenbusState } from '../xenbus/state.js';

const DISKS = 100;

/** xvda .. xvdz, xvdaa .. */
function vdev(i: number): string {
  const letter = (n: number) => String.fromCharCode(97 + n);
  return `xvd${i < 26 ? letter(i) : letter(Math.floor(i / 26) - 1) + letter(i % 26)}`;
}

t.test(`one driver domain serves ${DISKS} vbds, within the quotas the host gave it`, async (t) => {
  setLogSink(() => {});
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-many-vbds-'));
  const host = new Host({ socket: join(dir, 'socket'), frames: 32768 });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 4096 }, { backDrivers: ['vbd'] });
  const guest = await host.startDomain({ name: 'guest', pages: 8192, vbds: DISKS }, { frontDrivers: ['vbd'] });
  const xs = host.xenstore;
  t.equal(
    Number(await xs.getQuota('nodes', driver.domid)),
    DEFAULT_HARD_QUOTAS.nodes + XENSTORE_COST_PER_VBD.nodes * DEFAULT_DRIVER_DOMAIN_VBDS,
    `the driver domain has room for ${DEFAULT_DRIVER_DOMAIN_VBDS} vbds`,
  );
  t.equal(Number(await xs.getQuota('watches', guest.domid)), quotasForVbds(DISKS)['watches'], `the guest for the ${DISKS} it uses`);
  t.equal(Number(await xs.getQuota('nodes')), DEFAULT_HARD_QUOTAS.nodes, 'and the global quota is left as it was');

  const specs = Array.from({ length: DISKS }, (_, i) =>
    diskDevice({ frontendDomid: guest.domid, backendDomid: driver.domid, vdev: vdev(i), target: `memory:${64 * 1024}` }),
  );
  const started = performance.now();
  // One after another, as a toolstack plugs a domain's disks: plugged at once, their
  // transactions all touch the same directories and would be retried over and over.
  for (const spec of specs) await host.plugDevice(spec);
  const states = await Promise.all(specs.map((spec) => waitForState(xs, `${devicePaths(spec).backend}/state`, [XenbusState.Connected], 60_000)));
  const connected = states.filter((state) => state === XenbusState.Connected).length;
  t.equal(connected, DISKS, `every vbd connected, in ${Math.round(performance.now() - started)} ms`);
  const usage = await xs.control('quota', String(driver.domid));
  const nodes = Number(/nodes\s*:\s*(\d+)/.exec(usage)?.[1]);
  t.ok(nodes > DEFAULT_HARD_QUOTAS.nodes, `the driver domain owns ${nodes} nodes, more than C xenstored's default quota allows`);
});
