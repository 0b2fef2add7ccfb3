import t from 'tap';
import { devicePaths, type DeviceSpec } from '../host/toolstack/devices.js';
import type { XenStoreClient } from '../xenstore/client/client.js';
import { readStateAt } from '../xenbus/read.js';
import { XenbusState } from '../xenbus/state.js';
import { echoDrivers, echoSpec, startBusTestbed, startEchoTestbed } from './helpers/xenbus.js';

const { Initialising, InitWait, Initialised, Connected } = XenbusState;

/**
 * Records the distinct states a node goes through, as a toolstack watching
 * it would see them.
 */
async function recordStates(xs: XenStoreClient, statePath: string): Promise<number[]> {
  const seen: number[] = [];
  const watcher = await xs.watch(statePath);
  void (async () => {
    for await (const _event of watcher) {
      const state = await readStateAt(xs, statePath).catch(() => XenbusState.Unknown);
      if (state !== XenbusState.Unknown && seen.at(-1) !== state) seen.push(state);
    }
  })();
  return seen;
}

async function recordBoth(xs: XenStoreClient, spec: DeviceSpec): Promise<{ front: number[]; back: number[] }> {
  const paths = devicePaths(spec);
  return { front: await recordStates(xs, `${paths.frontend}/state`), back: await recordStates(xs, `${paths.backend}/state`) };
}

const payload = (text: string) => new TextEncoder().encode(text);

t.test('the backend arrives first: it waits in InitWait until the frontend connects', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t, { buses: false });
  const spec = echoSpec(guest.domid, driver.domid, 0);
  const seen = await recordBoth(bed.dom0, spec);

  await driver.backBus(back);
  await bed.plug(spec);
  await bed.waitStates(spec, Initialising, InitWait);
  t.equal(await bed.dom0.tryRead(`${devicePaths(spec).backend}/max-ring-page-order`), '2', 'the backend published its features before InitWait');

  await guest.frontBus(front);
  await bed.waitStates(spec, Connected, Connected);
  const device = front.devices.get('0')!;
  t.same(await device.echo(payload('hello')), payload('hello'), 'a request goes round the ring');
  t.equal(device.ringPages, 4, 'the frontend took the largest ring both ends allow');
  t.equal(back.devices.get(`${guest.domid}/0`)!.ringPages, 4, 'and the backend mapped all of it');
  t.same(seen.back, [Initialising, InitWait, Connected], 'backend: Initialising, InitWait, Connected');
  t.same(seen.front, [Initialising, Initialised, Connected], 'frontend: Initialising, Initialised, Connected');
});

t.test('the frontend arrives first: it waits in Initialising until the backend offers InitWait', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t, { buses: false });
  const spec = echoSpec(guest.domid, driver.domid, 0);
  const seen = await recordBoth(bed.dom0, spec);

  const frontBus = await guest.frontBus(front);
  await bed.plug(spec);
  await frontBus.settled();
  t.ok(front.devices.has('0'), 'the frontend attached');
  t.same(await bed.states(spec), { front: 'Initialising', back: 'Initialising' }, 'and waits for its backend');

  await driver.backBus(back);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('0')!.echo(payload('world')), payload('world'));
  t.same(seen.back, [Initialising, InitWait, Connected]);
  t.same(seen.front, [Initialising, Initialised, Connected]);
});

t.test('a device plugged before either bus runs is found when they start', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t, { buses: false });
  const spec = echoSpec(guest.domid, driver.domid, 7);
  await bed.plug(spec);
  await Promise.all([guest.frontBus(front), driver.backBus(back)]);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('7')!.echo(payload('x')), payload('x'));
});

t.test('a frontend that skips InitWait connects with the default one-page ring', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t, { buses: false, front: { skipInitWait: true } });
  const spec = echoSpec(guest.domid, driver.domid, 0);
  const seen = await recordBoth(bed.dom0, spec);
  await guest.frontBus(front);
  await bed.plug(spec);
  await bed.waitStates(spec, Initialised, Initialising);
  const paths = devicePaths(spec);
  t.ok(await bed.dom0.tryRead(`${paths.frontend}/ring-ref`), 'the frontend published ring-ref before the backend was there');
  t.equal(await bed.dom0.tryRead(`${paths.frontend}/ring-page-order`), undefined, 'and no ring-page-order: defaults only');

  await driver.backBus(back);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('0')!.echo(payload('skip')), payload('skip'));
  t.equal(front.devices.get('0')!.ringPages, 1);
  t.same(seen.front, [Initialising, Initialised, Connected]);
});

t.test('a backend that skips InitWait (as FreeBSD tolerates): the frontend does the skipped work', async (t) => {
  const { bed, driver, guest, front, back } = await startEchoTestbed(t, { buses: false, back: { skipInitWait: true } });
  const spec = echoSpec(guest.domid, driver.domid, 0);
  const seen = await recordBoth(bed.dom0, spec);
  await driver.backBus(back);
  await bed.plug(spec);
  await bed.waitStates(spec, Initialising, Initialised);
  t.equal(await bed.dom0.tryRead(`${devicePaths(spec).backend}/max-ring-page-order`), undefined, 'the backend offers nothing');

  await guest.frontBus(front);
  await bed.waitStates(spec, Connected, Connected);
  t.same(await front.devices.get('0')!.echo(payload('bypass')), payload('bypass'));
  t.equal(front.devices.get('0')!.ringPages, 1, 'the default ring');
  t.same(seen.back, [Initialising, Initialised, Connected], 'backend: Initialising, Initialised, Connected');
  t.same(seen.front, [Initialising, Initialised, Connected]);
});

t.test('each end takes the lesser of what both allow', async (t) => {
  const cases = [
    { frontMax: 1, backMax: 2, pages: 2 },
    { frontMax: 2, backMax: 0, pages: 1 },
    { frontMax: 0, backMax: 2, pages: 1 },
  ];
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  for (const [i, c] of cases.entries()) {
    const driver = await bed.domain(`driver${i}`);
    const guest = await bed.domain(`guest${i}`);
    const { front, back } = echoDrivers({ maxRingPageOrder: c.frontMax }, { maxRingPageOrder: c.backMax });
    await Promise.all([guest.frontBus(front), driver.backBus(back)]);
    const spec = echoSpec(guest.domid, driver.domid, 0);
    await bed.plug(spec);
    await bed.waitStates(spec, Connected, Connected);
    const device = front.devices.get('0')!;
    t.equal(device.ringPages, c.pages, `front ${c.frontMax}, back ${c.backMax}: ${c.pages} page(s)`);
    const paths = devicePaths(spec);
    if (c.pages === 1) t.ok(await bed.dom0.tryRead(`${paths.frontend}/ring-ref`), 'one page is published as ring-ref');
    else t.equal(await bed.dom0.tryRead(`${paths.frontend}/ring-page-order`), String(Math.log2(c.pages)));
    t.same(await device.echo(payload(`case ${i}`)), payload(`case ${i}`));
  }
});
