/**
 * The embedded hypervisor at Xen's limits: ports above the 2-level ABI's
 * range, hundreds of domains at once, domains made and destroyed over and
 * over without the machine's memory or the cost of each operation growing,
 * and the tables that are still finite refusing with ENOSPC when full.
 */
import t from 'tap';
import {
  DEFAULT_MAX_MAPTRACK_FRAMES,
  DomainSlot,
  EVTCHN_PORTS,
  GRANT_FRAME_ENTRIES,
  Handle,
  Header,
  MAPTRACK_PER_FRAME,
  MAX_EVTCHN_HANDLES,
  PORTS_PER_GROUP,
} from '../shared/embedded/layout.js';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { GNTTAB_NR_RESERVED_ENTRIES, PlatformError, type EventChannels } from '../shared/platform.js';

function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (err instanceof PlatformError) return err.errno;
    throw err;
  }
}

function running(platform: EmbeddedPlatform, domid: number, pages = 16): void {
  platform.createDomain({ domid, name: `d${domid}`, pages });
  platform.unpauseDomain(domid);
}

/** Pool chunks (grant frames, port groups) taken now. */
function chunksTaken(platform: EmbeddedPlatform): { grantFrames: number; portGroups: number } {
  const { words, grantFramePool, portGroupPool } = platform.machine;
  const count = (bitmap: number, chunks: number) => {
    let taken = 0;
    for (let w = 0; w < Math.ceil(chunks / 32); w++) {
      let bits = Atomics.load(words, bitmap + w);
      while (bits) {
        bits &= bits - 1;
        taken++;
      }
    }
    return taken;
  };
  return { grantFrames: count(grantFramePool.bitmap, grantFramePool.chunks), portGroups: count(portGroupPool.bitmap, portGroupPool.chunks) };
}

t.test('a port above 1024: bound across domains, notified, delivered; the FIFO ABI allows 2^17', async (t) => {
  t.equal(EVTCHN_PORTS, 1 << 17, 'EVTCHN_FIFO_NBITS ports per domain');
  const platform = EmbeddedPlatform.create(1024);
  running(platform, 1);
  running(platform, 2);
  const one = platform.domain(1).openEventChannels();
  const two = platform.domain(2).openEventChannels();
  t.teardown(() => {
    one.close();
    two.close();
  });
  // Fill domain 1's first group, and some of the next.
  const ports: number[] = [];
  for (let i = 0; i < PORTS_PER_GROUP + 100; i++) ports.push(one.allocUnbound(2));
  const high = ports.at(-1)!;
  t.ok(high > 1024, `port ${high} allocated`);
  t.equal(new Set(ports).size, ports.length, 'every port is distinct');
  const theirs = two.bindInterdomain(1, high);
  const received: number[] = [];
  const arrived = new Promise<void>((resolve) =>
    one.onEvent((port) => {
      received.push(port);
      if (port === high) resolve();
    }),
  );
  two.notify(theirs);
  await arrived;
  t.ok(received.includes(high), 'the event reaches the handle on the high port');
  t.equal(errnoOf(() => one.listen(EVTCHN_PORTS)), 'EINVAL', 'a port past 2^17 is out of range');
  t.equal(errnoOf(() => two.bindInterdomain(1, 100_000)), 'EINVAL', 'a port in a group the domain never had is not unbound');
  t.equal(chunksTaken(platform).portGroups, 3, 'two groups for domain 1, one for domain 2');
  one.close();
  platform.destroyDomain(1);
  t.equal(chunksTaken(platform).portGroups, 1, "a dead domain's groups go back to the machine");
});

t.test('1000 domains at once, made and destroyed again and again: no growth in memory or in the time per operation', async (t) => {
  const platform = EmbeddedPlatform.create(8192);
  running(platform, 0);
  const control = platform.domain(0).openEventChannels();
  t.teardown(() => control.close());
  const DOMAINS = 1000;
  const ROUNDS = 4;
  const perOp: number[] = [];
  const highs: string[] = [];
  control.unbind(control.allocUnbound(0)); // dom0's own first port group
  const before = chunksTaken(platform);
  for (let round = 0; round < ROUNDS; round++) {
    const started = performance.now();
    const controlPorts: number[] = [];
    for (let domid = 1; domid <= DOMAINS; domid++) {
      running(platform, domid, 4);
      const domain = platform.domain(domid);
      const channels = domain.openEventChannels();
      controlPorts.push(control.allocUnbound(domid));
      channels.bindInterdomain(0, controlPorts.at(-1)!);
      domain.grants.grantAccess(0, 1, false);
      channels.close();
    }
    t.equal(platform.listDomains().length, DOMAINS + 1, `round ${round + 1}: ${DOMAINS} domains and dom0 at once`);
    for (let domid = 1; domid <= DOMAINS; domid++) platform.destroyDomain(domid);
    for (const port of controlPorts) control.unbind(port);
    perOp.push((performance.now() - started) / DOMAINS);
    const { machine } = platform;
    highs.push([Header.SLOT_HIGH, Header.HANDLE_HIGH].map((field) => machine.high(field)).join('/'));
    t.same(chunksTaken(platform), before, `round ${round + 1}: every grant frame and port group of the dead domains is back`);
  }
  t.equal(platform.listDomains().length, 1, 'only dom0 is left');
  t.same(new Set(highs.slice(1)).size, 1, `slots and handles are reused: the high-water marks stay at ${highs.at(-1)}`);
  // Allow for a busy machine: a cost per operation that grew with the rounds would show many times over.
  const first = Math.min(...perOp.slice(0, 2));
  const last = Math.min(...perOp.slice(-2));
  t.ok(last < first * 3, `time per create and destroy: ${perOp.map((ms) => ms.toFixed(3)).join(', ')} ms`);
});

t.test('the handle table, when full, refuses with ENOSPC', async (t) => {
  const platform = EmbeddedPlatform.create(1024);
  running(platform, 1);
  const { machine } = platform;
  const open: EventChannels[] = [platform.domain(1).openEventChannels()];
  t.teardown(() => open.forEach((channels) => channels.close()));
  // Every other handle taken, as by workers that opened them.
  for (let handle = 1; handle < MAX_EVTCHN_HANDLES; handle++) Atomics.store(machine.words, machine.handleBase(handle) + Handle.OWNER, 2);
  let refusal: PlatformError | undefined;
  try {
    open.push(platform.domain(1).openEventChannels());
  } catch (err) {
    refusal = err as PlatformError;
  }
  t.equal(refusal?.errno, 'ENOSPC', `handle ${MAX_EVTCHN_HANDLES + 1} is refused`);
  t.match(refusal?.message, String(MAX_EVTCHN_HANDLES), 'and the message says the limit');
  Atomics.store(machine.words, machine.handleBase(MAX_EVTCHN_HANDLES - 1) + Handle.OWNER, 0);
  open.push(platform.domain(1).openEventChannels());
  t.pass('one closed, one can be opened again');
  for (let handle = 1; handle < MAX_EVTCHN_HANDLES - 1; handle++) Atomics.store(machine.words, machine.handleBase(handle) + Handle.OWNER, 0);
});

t.test("maptrack: a domain holds as many mappings as its max_maptrack_frames allow, and no more", async (t) => {
  t.equal(DEFAULT_MAX_MAPTRACK_FRAMES * MAPTRACK_PER_FRAME, 262_144, "Xen's default: 1024 frames of 256");
  const platform = EmbeddedPlatform.create(2048);
  running(platform, 1, 512);
  platform.createDomain({ domid: 2, name: 'd2', pages: 16, maxMaptrackFrames: 1 });
  platform.unpauseDomain(2);
  t.equal(platform.machine.slotWord(platform.machine.requireSlot(1), DomainSlot.MAPTRACK_LIMIT), 262_144, 'the default when the toolstack says nothing');
  const granter = platform.domain(1).grants;
  const grantee = platform.domain(2).grants;
  const grefs = Array.from({ length: MAPTRACK_PER_FRAME + 1 }, (_, i) => granter.grantAccess(2, i, false));
  const held = grantee.map(1, grefs.slice(0, MAPTRACK_PER_FRAME), true);
  t.equal(errnoOf(() => grantee.map(1, [grefs.at(-1)!], true)), 'ENOSPC', `mapping ${MAPTRACK_PER_FRAME + 1} is refused`);
  held.unmap();
  const again = grantee.map(1, [grefs.at(-1)!], true);
  t.pass('once unmapped, there is room again');
  again.unmap();
});

t.test('a grant table grows a frame at a time, up to its 32 frames', async (t) => {
  const platform = EmbeddedPlatform.create(1024);
  running(platform, 1);
  running(platform, 2);
  const grants = platform.domain(1).grants;
  const frames = () => platform.machine.slotWord(platform.machine.requireSlot(1), DomainSlot.GRANT_FRAMES);
  t.equal(frames(), 1, 'a new domain has one frame');
  const grefs: number[] = [];
  for (let i = 0; i < GRANT_FRAME_ENTRIES - GNTTAB_NR_RESERVED_ENTRIES; i++) grefs.push(grants.grantAccess(2, 0, true));
  t.equal(frames(), 1, 'which its first grants fill');
  grefs.push(grants.grantAccess(2, 0, true));
  t.equal(frames(), 2, 'the next one grows the table');
  for (const gref of grefs) grants.endAccess(gref);
  grants.grantAccess(2, 0, true);
  t.equal(frames(), 2, 'entries freed are used again before the table grows');
  let refusal = 'OK';
  for (let i = 0; i < 32 * GRANT_FRAME_ENTRIES && refusal === 'OK'; i++) refusal = errnoOf(() => grants.grantAccess(2, 0, true));
  t.equal(refusal, 'ENOSPC', 'a full table refuses');
  t.equal(frames(), 32, 'at 32 frames');
});
