import t from 'tap';
import { devicePaths } from '../host/toolstack/devices.js';
import { XenbusState } from '../xenbus/state.js';
import { run, waitFor } from './helpers/daemon.js';
import { echoSpec, startBusTestbed, startEchoTestbed } from './helpers/xenbus.js';

const { Initialising, Connected, Closed } = XenbusState;
const payload = (text: string) => new TextEncoder().encode(text);
const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

t.test('the toolstack lays a device out as libxl does', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const guest = await bed.domain('guest');
  const spec = echoSpec(guest.domid, driver.domid, 3);
  const paths = await bed.plug(spec);
  const { dom0 } = bed;
  t.same(await dom0.getPermissions(paths.frontend), [
    { domid: guest.domid, access: 'none' },
    { domid: driver.domid, access: 'read' },
  ], 'frontend: owned by the guest, readable by the backend domain');
  t.same(await dom0.getPermissions(paths.backend), [
    { domid: driver.domid, access: 'none' },
    { domid: guest.domid, access: 'read' },
  ], 'backend: owned by the backend domain, readable by the guest');
  t.equal(await dom0.tryRead(`${paths.frontend}/backend`), paths.backend);
  t.equal(await dom0.tryRead(`${paths.frontend}/backend-id`), String(driver.domid));
  t.equal(await dom0.tryRead(`${paths.frontend}/state`), String(Initialising));
  t.equal(await dom0.tryRead(`${paths.backend}/frontend`), paths.frontend);
  t.equal(await dom0.tryRead(`${paths.backend}/frontend-id`), String(guest.domid));
  t.equal(await dom0.tryRead(`${paths.backend}/online`), '1');
  t.equal(await dom0.tryRead(`${paths.backend}/state`), String(Initialising));
  t.equal(await dom0.tryRead(`${paths.libxl}/frontend`), paths.frontend, "libxl's own record");
  t.equal(await dom0.tryRead(`${paths.libxl}/backend`), paths.backend);
  t.equal(await guest.ctx.xs.tryRead(`${paths.backend}/state`), String(Initialising), 'the guest reads its backend');
  t.equal(await driver.ctx.xs.tryRead(`${paths.frontend}/state`), String(Initialising), 'the driver domain reads its frontend');
});

t.test('many devices plugged at once all connect; unplugging half leaves the others undisturbed', async (t) => {
  const DEVICES = 24;
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);

  const specs = Array.from({ length: DEVICES }, (_, i) => echoSpec(guest.domid, driver.domid, 51712 + i * 16));
  await Promise.all(specs.map((spec) => bed.plug(spec)));
  await Promise.all(specs.map((spec) => bed.waitStates(spec, Connected, Connected, 15_000)));
  t.equal(front.devices.size, DEVICES, 'every frontend attached');
  t.equal(back.devices.size, DEVICES, 'every backend attached');
  for (const spec of specs) {
    t.equal(await bed.dom0.tryRead(`${devicePaths(spec).backend}/hotplug-status`), 'connected');
  }

  const [leaving, staying] = [specs.filter((_, i) => i % 2 === 0), specs.filter((_, i) => i % 2 === 1)];
  // Traffic on the devices that stay, all through the unplug.
  let stop = false;
  let echoed = 0;
  const traffic = staying.map(async (spec) => {
    const device = front.devices.get(String(spec.devid))!;
    for (let n = 0; !stop; n++) {
      const text = `${spec.devid}:${n}`;
      if (decode(await device.echo(payload(text))) !== text) throw new Error(`device ${spec.devid} answered wrongly`);
      echoed++;
    }
  });
  const results = await Promise.all(leaving.map((spec) => bed.unplug(spec)));
  stop = true;
  await Promise.all(traffic);
  t.ok(results.every((r) => r.clean && r.backendState === Closed && r.frontendState === Closed), 'both ends of each closed by themselves');
  t.ok(echoed > 0, `the staying devices kept answering (${echoed} requests during the unplug)`);

  for (const spec of leaving) {
    const paths = devicePaths(spec);
    t.equal(await bed.dom0.tryRead(paths.frontend), undefined, `frontend ${spec.devid} removed`);
    t.equal(await bed.dom0.tryRead(paths.backend), undefined, `backend ${spec.devid} removed`);
    t.equal(await bed.dom0.tryRead(paths.libxl), undefined, `libxl record ${spec.devid} removed`);
  }
  await waitFor(() => front.devices.size === staying.length && back.devices.size === staying.length, 'the buses to detach them');
  for (const spec of staying) t.same(await bed.states(spec), { front: 'Connected', back: 'Connected' }, `device ${spec.devid} is still connected`);

  await Promise.all(staying.map((spec) => bed.unplug(spec)));
  await waitFor(() => front.devices.size === 0 && back.devices.size === 0, 'every device to be detached');
  t.same(await bed.dom0.directory(`/local/domain/${driver.domid}/backend`).catch(() => []), [], 'the backend tree is empty again');
  t.same(await bed.dom0.directory(`/local/domain/${guest.domid}/device`), [], 'the device tree is empty again');
});

t.test('a device plugged again after an unplug connects afresh', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const spec = echoSpec(guest.domid, driver.domid, 1);
  for (let round = 0; round < 3; round++) {
    await bed.plug(spec);
    await bed.waitStates(spec, Connected, Connected);
    t.same(await front.devices.get('1')!.echo(payload(`round ${round}`)), payload(`round ${round}`), `round ${round} connects`);
    t.ok((await bed.unplug(spec)).clean, `round ${round} unplugs cleanly`);
    await waitFor(() => front.devices.size === 0 && back.devices.size === 0, 'both ends to detach');
  }
});

t.test('a frontend that never closes is removed by force, and its backend lets go', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t, { buses: false });
  const frontBus = await guest.frontBus(front);
  await driver.backBus(back);
  const spec = echoSpec(guest.domid, driver.domid, 0);
  await bed.plug(spec);
  await bed.waitStates(spec, Connected, Connected);
  // The guest's kernel hangs: its buses stop answering.
  await frontBus.stop();
  const result = await bed.unplug(spec, { timeoutMs: 300 });
  t.notOk(result.clean, 'the unplug had to force it');
  t.equal(result.backendState, Closed, 'the backend closed once its frontend was gone');
  await waitFor(() => back.devices.size === 0, 'the backend to detach');
  t.equal(await bed.dom0.tryRead(devicePaths(spec).backend), undefined, 'both directories are gone');
  t.equal(await bed.dom0.tryRead(devicePaths(spec).frontend), undefined);
});

t.test('hotplug and unplug by hand with xenstore-write and xenstore-chmod on the socket', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const env = { XENSTORED_PATH: bed.env.socketPath };
  const xs = async (tool: string, ...args: string[]) => {
    const result = await run(tool, args, env);
    if (result.code !== 0) throw new Error(`${tool} ${args.join(' ')}: ${result.stderr}`);
    return result.stdout.trim();
  };

  const specs = [5, 6, 7].map((devid) => echoSpec(guest.domid, driver.domid, devid));
  // Plug three devices in one go, as a script would.
  await Promise.all(
    specs.map(async (spec) => {
      const { frontend, backend } = devicePaths(spec);
      await xs(
        'xenstore-write',
        `${backend}/frontend`, frontend,
        `${backend}/frontend-id`, String(guest.domid),
        `${backend}/online`, '1',
        `${backend}/state`, '1',
        `${frontend}/backend`, backend,
        `${frontend}/backend-id`, String(driver.domid),
        `${frontend}/state`, '1',
      );
      await xs('xenstore-chmod', '-r', backend, `n${driver.domid}`, `r${guest.domid}`);
      await xs('xenstore-chmod', '-r', frontend, `n${guest.domid}`, `r${driver.domid}`);
    }),
  );
  await Promise.all(specs.map((spec) => bed.waitStates(spec, Connected, Connected)));
  for (const spec of specs) {
    const { frontend, backend } = devicePaths(spec);
    t.equal(await xs('xenstore-read', `${frontend}/state`), '4', `xenstore-read sees frontend ${spec.devid} Connected`);
    t.equal(await xs('xenstore-read', `${backend}/state`), '4', `and backend ${spec.devid} Connected`);
    t.same(await front.devices.get(String(spec.devid))!.echo(payload('by hand')), payload('by hand'));
  }

  // Unplug the middle one by hand: offline and Closing, wait for Closed, remove.
  const { frontend, backend } = devicePaths(specs[1]!);
  await xs('xenstore-write', `${backend}/online`, '0', `${backend}/state`, '5');
  await bed.waitStates(specs[1]!, Closed, Closed);
  // The backend removes hotplug-status after it publishes Closed (as
  // FreeBSD's xenbusb_back_localend_changed does), and a toolstack waits for
  // it to go, as libxl does for a backend in another domain.
  const hotplugGone = async () => (await xs('xenstore-exists', `${backend}/hotplug-status`).catch(() => 'absent')) === 'absent';
  const deadline = Date.now() + 5000;
  while (!(await hotplugGone()) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.ok(await hotplugGone(), 'the backend removed hotplug-status');
  await xs('xenstore-rm', frontend);
  await xs('xenstore-rm', backend);
  await waitFor(() => !front.devices.has('6') && !back.devices.has(`${guest.domid}/6`), 'the device to be detached');
  for (const spec of [specs[0]!, specs[2]!]) {
    t.same(await bed.states(spec), { front: 'Connected', back: 'Connected' }, `device ${spec.devid} undisturbed`);
    t.same(await front.devices.get(String(spec.devid))!.echo(payload('still')), payload('still'));
  }
});

t.test('destroying a guest removes its devices, and their backends let go', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t);
  const specs = [0, 1, 2].map((devid) => echoSpec(guest.domid, driver.domid, devid));
  for (const spec of specs) await bed.plug(spec);
  await Promise.all(specs.map((spec) => bed.waitStates(spec, Connected, Connected)));
  t.equal(front.devices.size, 3);
  await guest.halt();
  await bed.toolstack.destroyDomain(guest.domid);
  await waitFor(() => back.devices.size === 0, 'the backends to detach');
  for (const spec of specs) {
    const paths = devicePaths(spec);
    t.equal(await bed.dom0.tryRead(paths.backend), undefined, `backend ${spec.devid} removed`);
    t.equal(await bed.dom0.tryRead(paths.libxl), undefined, `libxl record ${spec.devid} removed`);
  }
  t.equal(bed.env.platform.domainInfo(guest.domid), undefined, 'the guest is gone: nothing maps its pages any more');
});
