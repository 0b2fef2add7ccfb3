/**
 * The races a bus must survive: a device removed while it attaches, a
 * backend that appears before or after its frontend, the other end that
 * closes and comes back, a kernel (either end) that restarts, a xenstored
 * that restarts under the buses, and a driver that fails to attach.
 */
import t from 'tap';
import { devicePaths, type DeviceSpec } from '../host/toolstack/devices.js';
import type { PermissionEntry, XenStoreClient } from '../xenstore/client/client.js';
import type { XenbusDevice } from '../xenbus/device.js';
import type { DeviceHandler, XenbusDriver } from '../xenbus/driver.js';
import { EchoFrontDriver } from '../echo/front.js';
import { XenbusState } from '../xenbus/state.js';
import { waitFor } from './helpers/daemon.js';
import { echoDrivers, echoSpec, startBusTestbed, startEchoTestbed } from './helpers/xenbus.js';

const { Connected, Closed } = XenbusState;
const payload = (text: string) => new TextEncoder().encode(text);
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Writes one end of a device as libxl would, without the other. */
async function writeEnd(xs: XenStoreClient, spec: DeviceSpec, end: 'frontend' | 'backend'): Promise<void> {
  const paths = devicePaths(spec);
  const [owner, reader] = end === 'frontend' ? [spec.frontendDomid, spec.backendDomid] : [spec.backendDomid, spec.frontendDomid];
  const perms: PermissionEntry[] = [
    { domid: owner, access: 'none' },
    { domid: reader, access: 'read' },
  ];
  const keys: Record<string, string> =
    end === 'frontend'
      ? { backend: paths.backend, 'backend-id': String(spec.backendDomid), state: '1' }
      : { frontend: paths.frontend, 'frontend-id': String(spec.frontendDomid), online: '1', state: '1' };
  const dir = paths[end];
  await xs.transaction(async (tx) => {
    await xs.mkdir(dir, { tx });
    await xs.setPermissions(dir, perms, { tx });
    for (const [key, value] of Object.entries(keys)) await xs.write(`${dir}/${key}`, value, { tx });
  });
}

/** An echo frontend driver whose attach waits until released. */
class GatedFrontDriver implements XenbusDriver {
  readonly name = 'gated-echo-front';
  readonly deviceClass = 'echo';
  readonly inner = new EchoFrontDriver();
  attaching = 0;
  private release!: () => void;
  private readonly gate = new Promise<void>((resolve) => (this.release = resolve));

  async attach(device: XenbusDevice): Promise<DeviceHandler> {
    this.attaching++;
    await this.gate;
    return this.inner.attach(device);
  }

  open(): void {
    this.release();
  }
}

t.test('a device removed while it attaches is detached, and nothing of it is written back', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const gated = new GatedFrontDriver();
  const { back } = echoDrivers();
  await driver.backBus(back);
  const frontBus = await guest.frontBus(gated);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  const paths = await bed.plug(spec);
  await waitFor(() => gated.attaching === 1, 'the attach to begin');
  await bed.dom0.rm(paths.frontend);
  gated.open();
  await frontBus.settled();
  t.equal(gated.inner.devices.size, 0, 'the frontend was detached once its attach finished');
  t.equal(await bed.dom0.tryRead(paths.frontend), undefined, 'its directory was not brought back by a state write');
  t.equal(await bed.dom0.tryRead(`/local/domain/${guest.domid}/error/device/echo/0/error`), undefined, 'and no error was reported');
});

t.test('a backend that appears before its frontend waits for it', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  await writeEnd(bed.dom0, spec, 'backend');
  await waitFor(() => back.devices.size === 1, 'the backend to attach');
  await delay(50);
  t.same(await bed.states(spec), { front: 'Unknown', back: 'InitWait' }, 'the backend offers InitWait to a frontend not there yet');
  await writeEnd(bed.dom0, spec, 'frontend');
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('0')!.echo(payload('late frontend')), payload('late frontend'));
});

t.test('a frontend that appears before its backend waits for it', async (t) => {
  const { bed, driver, guest, front } = await startEchoTestbed(t);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  await writeEnd(bed.dom0, spec, 'frontend');
  await waitFor(() => front.devices.size === 1, 'the frontend to attach');
  await delay(50);
  t.same(await bed.states(spec), { front: 'Initialising', back: 'Unknown' });
  await writeEnd(bed.dom0, spec, 'backend');
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('0')!.echo(payload('late backend')), payload('late backend'));
});

t.test('a frontend that closes and comes back is reconnected by its backend', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  await bed.plug(spec);
  await bed.waitStates(spec, Connected, Connected);
  const device = front.devices.get('0')!;
  t.same(await device.echo(payload('first')), payload('first'));

  await device.close();
  await bed.waitStates(spec, Closed, Closed);
  t.ok(back.devices.has(`${guest.domid}/0`), 'the backend stays attached while it is online');

  await device.reopen();
  await bed.waitStates(spec, Connected, Connected);
  t.same(await device.echo(payload('second')), payload('second'));
  t.equal(device.connections, 2, 'a second connection');
});

t.test("the backend's kernel restarts: the device is reset and connects again", async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  let driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const { front, back } = echoDrivers();
  await Promise.all([guest.frontBus(front), driver.backBus(back)]);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  await bed.plug(spec);
  await bed.waitStates(spec, Connected, Connected);
  const device = front.devices.get('0')!;
  t.same(await device.echo(payload('before')), payload('before'));

  driver = await bed.restartKernel(driver);
  // Requests made while nobody serves the ring wait for the new backend.
  const waiting = device.echo(payload('across the restart'));
  const { back: newBack } = echoDrivers();
  await driver.backBus(newBack);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await waiting, payload('across the restart'), 'a request made across the restart is answered');
  t.ok(newBack.devices.get(`${guest.domid}/0`)!.served >= 1, 'by the new backend');
  t.equal(device.connections, 2);
});

t.test("the frontend's kernel restarts: it resets the connection and connects again", async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  let guest = await bed.domain('guest');
  const { front, back } = echoDrivers();
  await Promise.all([guest.frontBus(front), driver.backBus(back)]);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  await bed.plug(spec);
  await bed.waitStates(spec, Connected, Connected);

  guest = await bed.restartKernel(guest);
  const newFront = new EchoFrontDriver();
  await guest.frontBus(newFront);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await newFront.devices.get('0')!.echo(payload('new kernel')), payload('new kernel'));
  t.ok(back.devices.has(`${guest.domid}/0`), 'the backend served both kernels without being detached');
});

t.test('xenstored restarts under running buses: devices stay up, and hotplug still works', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const first = echoSpec(guest.domid, driver.domid, 0);
  await bed.plug(first);
  await bed.waitStates(first, Connected, Connected);

  await bed.restartXenstored();
  t.same(await bed.states(first), { front: 'Connected', back: 'Connected' }, 'the store was handed over');
  t.same(await front.devices.get('0')!.echo(payload('data plane')), payload('data plane'), 'the ring never depended on xenstored');

  const second = echoSpec(guest.domid, driver.domid, 1);
  await bed.plug(second);
  await bed.waitStates(second, Connected, Connected);
  t.pass('a device plugged after the restart connects: both buses set their watches again');
  t.ok((await bed.unplug(first)).clean, 'and one plugged before it unplugs cleanly');
  await waitFor(() => front.devices.size === 1 && back.devices.size === 1, 'the first device to be detached');
});

t.test('xenstored restarts in the middle of a burst of hotplug', async (t) => {
  const DEVICES = 8;
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const specs = Array.from({ length: DEVICES }, (_, i) => echoSpec(guest.domid, driver.domid, i));
  await Promise.all(specs.map((spec) => bed.plug(spec)));
  // The buses are busy attaching and connecting when xenstored goes.
  await bed.restartXenstored();
  await Promise.all(specs.map((spec) => bed.waitStates(spec, Connected, Connected, 15_000)));
  for (const spec of specs) {
    t.same(await front.devices.get(String(spec.devid))!.echo(payload(`device ${spec.devid}`)), payload(`device ${spec.devid}`));
  }
  t.equal(back.devices.size, DEVICES);
});

/** An echo backend driver that fails to attach one device. */
class FailingBackDriver implements XenbusDriver {
  readonly name = 'failing-echo-back';
  readonly deviceClass = 'echo';
  readonly inner = echoDrivers().back;
  constructor(private readonly failing: string) {}

  async attach(device: XenbusDevice): Promise<DeviceHandler> {
    if (device.id.endsWith(`/${this.failing}`)) throw new Error('the backing store cannot be opened');
    return this.inner.attach(device);
  }
}

t.test('a driver that throws in attach leaves an error node and the device Closed', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const { front } = echoDrivers();
  const failing = new FailingBackDriver('2');
  await Promise.all([guest.frontBus(front), driver.backBus(failing)]);
  const specs = [1, 2, 3].map((devid) => echoSpec(guest.domid, driver.domid, devid));
  await Promise.all(specs.map((spec) => bed.plug(spec)));
  await bed.waitStates(specs[1]!, Closed, Closed);
  const error = await bed.dom0.tryRead(`/local/domain/${driver.domid}/error/backend/echo/${guest.domid}/2/error`);
  t.match(error, /^\d+ attaching failing-echo-back: the backing store cannot be opened$/, 'the error node says why');
  for (const spec of [specs[0]!, specs[2]!]) await bed.waitStates(spec, Connected, Connected);
  t.pass('the other devices connected');
  t.ok((await bed.unplug(specs[1]!)).clean, 'the failed device unplugs cleanly');
});

t.test('a device of a class nobody here drives is left alone, for whoever does', async (t) => {
  // On a Xen host several backends share a domain's backend/ directory
  // (xenconsoled serves console, QEMU qdisk, the kernel vif): a bus must
  // not touch a device no driver of its own takes.
  const { bed, driver, guest } = await startEchoTestbed(t);
  const spec: DeviceSpec = { kind: 'vif', frontendDomid: guest.domid, backendDomid: driver.domid, devid: 0 };
  await bed.plug(spec);
  const echo = echoSpec(guest.domid, driver.domid, 7);
  await bed.plug(echo);
  await bed.waitStates(echo, Connected, Connected);
  t.same(await bed.states(spec), { front: 'Initialising', back: 'Initialising' }, 'both ends are as the toolstack wrote them');
  t.equal(await bed.dom0.tryRead(`/local/domain/${driver.domid}/error/backend/vif/${guest.domid}/0/error`), undefined, 'no error is reported');
});

t.test('malformed other-end keys are reported and the device is not attached', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const { back } = echoDrivers();
  const backBus = await driver.backBus(back);
  const cases: [string, Record<string, string>, RegExp][] = [
    ['frontend-id not a number', { 'frontend-id': 'two' }, /malformed other end/],
    ['frontend-id of another domain', { 'frontend-id': '7' }, /does not match the device path/],
    ['frontend not a path', { frontend: 'device/echo/0' }, /malformed other end/],
  ];
  for (const [i, [what, override, expected]] of cases.entries()) {
    const spec: DeviceSpec = { kind: 'echo', frontendDomid: guest.domid, backendDomid: driver.domid, devid: 10 + i, backend: override };
    await bed.plug(spec);
    await backBus.settled();
    await delay(20);
    await backBus.settled();
    const error = await bed.dom0.tryRead(`/local/domain/${driver.domid}/error/backend/echo/${guest.domid}/${10 + i}/error`);
    t.match(error, expected, `${what}: reported`);
    t.notOk(back.devices.has(`${guest.domid}/${10 + i}`), `${what}: not attached`);
  }
});

t.test('suspend and resume: drivers in attach order, requests held across, resumed against another backend', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driverA = await bed.domain('driver-a');
  const driverB = await bed.domain('driver-b');
  const guest = await bed.domain('guest');
  const calls: string[] = [];
  const front = new EchoFrontDriver();
  const recording: XenbusDriver = {
    name: 'recording-echo-front',
    deviceClass: 'echo',
    async attach(device) {
      const handler = await front.attach(device);
      return {
        otherendChanged: (state) => handler.otherendChanged(state),
        detach: () => handler.detach(),
        async suspend() {
          calls.push(`suspend ${device.id}`);
          await handler.suspend?.();
        },
        async resume() {
          calls.push(`resume ${device.id}`);
          await handler.resume?.();
        },
      };
    },
  };
  const { back: backA } = echoDrivers();
  const { back: backB } = echoDrivers();
  await Promise.all([driverA.backBus(backA), driverB.backBus(backB)]);
  const frontBus = await guest.frontBus(recording);
  const devids = [3, 1, 2];
  for (const devid of devids) {
    await bed.plug(echoSpec(guest.domid, driverA.domid, devid));
    await bed.waitStates(echoSpec(guest.domid, driverA.domid, devid), Connected, Connected);
  }

  await frontBus.suspend();
  t.same(calls, ['suspend 3', 'suspend 1', 'suspend 2'], 'suspend in the order the devices attached');
  const held = devids.map((devid) => front.devices.get(String(devid))!.echo(payload(`held ${devid}`)));

  // Meanwhile the toolstack moves every device to another driver domain,
  // as a migration's destination has them: fresh, both ends Initialising.
  for (const devid of devids) {
    const from = echoSpec(guest.domid, driverA.domid, devid);
    const to = echoSpec(guest.domid, driverB.domid, devid);
    await writeEnd(bed.dom0, to, 'backend');
    const frontend = devicePaths(from).frontend;
    const perms: PermissionEntry[] = [
      { domid: guest.domid, access: 'none' },
      { domid: driverB.domid, access: 'read' },
    ];
    for (const node of [frontend, ...(await bed.dom0.directory(frontend)).map((key) => `${frontend}/${key}`)]) {
      await bed.dom0.setPermissions(node, perms);
    }
    await bed.dom0.write(`${frontend}/state`, String(XenbusState.Initialising));
    await bed.dom0.write(`${devicePaths(from).frontend}/backend`, devicePaths(to).backend);
    await bed.dom0.write(`${devicePaths(from).frontend}/backend-id`, String(driverB.domid));
    await bed.dom0.rm(devicePaths(from).backend);
  }
  await waitFor(() => backA.devices.size === 0, 'the old backends to detach');
  await waitFor(() => backB.devices.size === 3, 'the new backends to attach');

  await frontBus.resume();
  t.same(calls.slice(3), ['resume 3', 'resume 1', 'resume 2'], 'resume in the same order');
  for (const devid of devids) await bed.waitStates(echoSpec(guest.domid, driverB.domid, devid), Connected, Connected);
  const answers = await Promise.all(held);
  t.same(answers, devids.map((devid) => payload(`held ${devid}`)), 'requests made while suspended are answered after resume');
  t.ok([...backB.devices.values()].every((b) => b.served >= 1), 'by the new backends');
});

t.test('the states a device goes through stay within the protocol', async (t) => {
  // Many concurrent plugs and unplugs of the same device number, with the
  // buses racing the toolstack: every device ends up either fully
  // connected or fully gone, never stuck half way.
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const spec = echoSpec(guest.domid, driver.domid, 9);
  for (let round = 0; round < 5; round++) {
    await bed.plug(spec);
    if (round % 2 === 0) await delay(round);
    const result = await bed.unplug(spec, { timeoutMs: 2000 });
    t.ok(result.clean, `round ${round}: unplugged cleanly (backend ${result.backendState}, frontend ${result.frontendState})`);
    await waitFor(() => front.devices.size === 0 && back.devices.size === 0, `round ${round}: both ends detached`);
  }
  await bed.plug(spec);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('9')!.echo(payload('after all that')), payload('after all that'));
});
