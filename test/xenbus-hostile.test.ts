/**
 * A hostile or broken frontend, scripted by hand against the echo backend:
 * every bad key or ring gets an error node and the device Closing, a bad
 * request gets an error response, and a well-behaved device of another
 * guest served by the same backend domain is never disturbed.
 */
import t from 'tap';
import { devicePaths, type DeviceSpec } from '../host/toolstack/devices.js';
import { FrontRing, SharedRing } from '../shared/ring.js';
import { decodeResponse, ECHO_ENTRY_BYTES, EchoStatus, encodeRequest } from '../echo/protocol.js';
import { XenbusState } from '../xenbus/state.js';
import { echoDrivers, echoSpec, startBusTestbed, type TestDomain } from './helpers/xenbus.js';

const { Connected, Closing } = XenbusState;
const payload = (text: string) => new TextEncoder().encode(text);

/** A frontend's ring made by hand: a granted page, a FrontRing on it and an unbound port. */
function handMadeRing(guest: TestDomain, backendDomid: number) {
  const { domain, events } = guest.kernel;
  const [pfn] = domain.memory.allocPages(1) as [number];
  const gref = domain.grants.grantAccess(backendDomid, pfn, false);
  const ring = FrontRing.create(new SharedRing([domain.memory.page(pfn)], ECHO_ENTRY_BYTES));
  const port = events.channels.allocUnbound(backendDomid);
  let wake: () => void = () => {};
  events.on(port, () => wake());
  return {
    pfn,
    gref,
    ring,
    port,
    notify: () => events.channels.notify(port),
    /** Resolves at the next event from the backend. */
    event: () => new Promise<void>((resolve) => (wake = resolve)),
  };
}

/** Publishes keys as the frontend and says Initialised. */
async function publish(guest: TestDomain, spec: DeviceSpec, keys: Record<string, string | number>): Promise<void> {
  const { frontend } = devicePaths(spec);
  const xs = guest.ctx.xs;
  await xs.transaction(async (tx) => {
    for (const [key, value] of Object.entries(keys)) await xs.write(`${frontend}/${key}`, String(value), { tx });
    await xs.write(`${frontend}/state`, String(XenbusState.Initialised), { tx });
  });
}

t.test('bad transport keys: an error node and Closing, and nothing else disturbed', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const hostile = await bed.domain('hostile');
  const bystander = await bed.domain('bystander');
  const { front, back } = echoDrivers();
  await driver.backBus(back);
  await bystander.frontBus(front);
  const good = echoSpec(bystander.domid, driver.domid, 0);
  await bed.plug(good);
  await bed.waitStates(good, Connected, Connected);

  const ring = handMadeRing(hostile, driver.domid);
  const grantedElsewhere = hostile.kernel.domain.grants.grantAccess(0, ring.pfn, false);
  const readOnly = hostile.kernel.domain.grants.grantAccess(driver.domid, ring.pfn, true);
  const cases: [string, Record<string, string | number>, RegExp][] = [
    ['ring-ref that is not a number', { 'ring-ref': 'abc', 'event-channel': ring.port }, /ring-ref is not an integer: 'abc'/],
    ['ring-ref never granted', { 'ring-ref': 4000, 'event-channel': ring.port }, /mapping ring-ref 4000 .*(has not granted reference 4000|grant reference 4000 is out of range)/],
    ['ring-ref granted to another domain', { 'ring-ref': grantedElsewhere, 'event-channel': ring.port }, /granted to another domain/],
    ['ring-ref granted read-only', { 'ring-ref': readOnly, 'event-channel': ring.port }, /read-only/],
    ['ring-ref out of range', { 'ring-ref': -1, 'event-channel': ring.port }, /out of range/],
    ['ring-page-order above the offer', { 'ring-page-order': 7, 'ring-ref0': ring.gref, 'event-channel': ring.port }, /ring-page-order 7 is not in 0\.\.2/],
    ['a missing ring-refN', { 'ring-page-order': 1, 'ring-ref0': ring.gref, 'event-channel': ring.port }, /ring-ref1 is missing/],
    ['no event-channel', { 'ring-ref': ring.gref }, /event-channel is missing/],
    ['event-channel that is not the frontend’s', { 'ring-ref': ring.gref, 'event-channel': 1000 }, /binding event-channel 1000/],
  ];
  for (const [i, [what, keys, expected]] of cases.entries()) {
    const spec = echoSpec(hostile.domid, driver.domid, i);
    await bed.plug(spec);
    await bed.waitStates(spec, XenbusState.Initialising, XenbusState.InitWait);
    await publish(hostile, spec, keys);
    await bed.waitStates(spec, XenbusState.Initialised, Closing);
    const error = await bed.dom0.tryRead(`/local/domain/${driver.domid}/error/backend/echo/${hostile.domid}/${i}/error`);
    t.match(error, expected, `${what}: ${error}`);
  }
  t.same(await front.devices.get('0')!.echo(payload('unharmed')), payload('unharmed'), "the other guest's device never noticed");
  t.same(await bed.states(good), { front: 'Connected', back: 'Connected' });
});

t.test('a bad ring: requests that lie are refused, a producer that overruns the ring is cut off', async (t) => {
  const bed = await startBusTestbed();
  t.teardown(() => bed.close());
  const driver = await bed.domain('driver');
  const hostile = await bed.domain('hostile');
  const { back } = echoDrivers();
  await driver.backBus(back);
  const spec = echoSpec(hostile.domid, driver.domid, 0);
  await bed.plug(spec);
  await bed.waitStates(spec, XenbusState.Initialising, XenbusState.InitWait);
  const ring = handMadeRing(hostile, driver.domid);
  await publish(hostile, spec, { 'ring-ref': ring.gref, 'event-channel': ring.port });
  await bed.waitStates(spec, XenbusState.Initialised, Connected);

  // A request claiming more payload than an entry holds.
  const entry = new Uint8Array(ECHO_ENTRY_BYTES);
  encodeRequest({ id: 7, payload: payload('short') }, entry);
  new DataView(entry.buffer).setUint16(4, 1000, true);
  ring.ring.putRequest(entry);
  encodeRequest({ id: 8, payload: payload('honest') }, entry);
  ring.ring.putRequest(entry);
  let answered = ring.event();
  if (ring.ring.pushRequestsAndCheckNotify()) ring.notify();
  await answered;
  const responses = [];
  while (ring.ring.unconsumedResponses() > 0) {
    ring.ring.takeResponse(entry);
    responses.push(decodeResponse(entry));
  }
  t.same(
    responses.map((r) => [r.id, r.status]),
    [
      [7, EchoStatus.ERROR],
      [8, EchoStatus.OKAY],
    ],
    'the lying request gets an error response, the next one is served',
  );
  t.same(responses[1]!.payload, payload('honest'));

  // A producer index more than a ring ahead of the responses.
  ring.ring.sring.reqProd = ring.ring.sring.rspProd + ring.ring.size + 5;
  answered = ring.event();
  ring.notify();
  await bed.waitStates(spec, XenbusState.Initialised, Closing);
  const error = await bed.dom0.tryRead(`/local/domain/${driver.domid}/error/backend/echo/${hostile.domid}/0/error`);
  t.match(error, /request producer more than a ring ahead/, 'the overrun is reported');
  t.equal(back.devices.get(`${hostile.domid}/0`)!.ringPages, 0, 'and the ring is unmapped');
  void answered;
});
