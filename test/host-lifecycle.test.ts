/**
 * Lifecycle operations on one domain that overlap: two destroys, a
 * toolstack destroy at each step of a reboot, and the host's shutdown
 * during a reboot. Each overlap is reached through an event the host or
 * its supervisor gives at that step, not by timing. Every request is
 * answered, a destroy wins over a reboot, and the host stops in bounded
 * time. A reboot that fails on its own (a disk whose image went away, a
 * device that cannot be plugged) leaves nothing of the domain, and is
 * answered at once with why.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForDevice } from '../host/toolstack/device-wait.js';
import { DEVICE_REMOVE_TIMEOUT_MS, diskDevice, type DeviceSpec } from '../host/toolstack/devices.js';
import { Host, SHUTDOWN_TIMEOUT_MS } from '../host/machine/host.js';
import type { DomainConfig } from '../host/toolstack/toolstack.js';
import { setLogSink } from '../shared/log.js';
import { STOP_TIMEOUT_MS, type RoleSpec } from '../shared/mesh/supervisor.js';
import { settleWithin, type Settled } from './helpers/settle.js';

/**
 * Far longer than any of these operations takes (a domain starts in well
 * under a second), far shorter than tap's timeout: a destroy that lands
 * while a device's backend is still attaching may wait out
 * DEVICE_REMOVE_TIMEOUT_MS for it once, and two destroys take turns.
 */
const SETTLE_MS = 3 * DEVICE_REMOVE_TIMEOUT_MS;
/** Terminating the workers that are left takes milliseconds; this covers a loaded machine. */
const TERMINATE_MARGIN_MS = 2000;
const STUCK_KERNEL = new URL('./helpers/stuck-kernel-worker.js', import.meta.url);

interface Bed {
  host: Host;
  logs: string[];
  /** The guest's domid when the test began. */
  guest: number;
  /** Domids the host said were rebooted, and those it said were destroyed. */
  rebooted: number[];
  destroyed: number[];
  /** Domids whose reboot failed, with why. */
  rebootFailed: [number, string][];
}

/**
 * A host with a driver domain and a guest with an echo device, shut down
 * (within a bound) when the test ends; with `vbd`, the two load the disk
 * drivers too, for a disk the test plugs.
 */
async function startBed(t: Test, options: { kernelModule?: URL; shutdownTimeoutMs?: number; vbd?: boolean } = {}): Promise<Bed> {
  const { vbd, ...hostOptions } = options;
  const drivers = vbd ? ['echo', 'vbd'] : ['echo'];
  const logs: string[] = [];
  setLogSink((level, component, message) => logs.push(`${level} [${component}] ${message}`));
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-lifecycle-'));
  const host = new Host({ socket: join(dir, 'socket'), frames: 8192, ...hostOptions });
  t.teardown(async () => {
    await settleWithin(host.shutdown(), SETTLE_MS);
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const driver = await host.startDomain({ name: 'driver', pages: 512 }, { backDrivers: drivers });
  const guest = await host.startDomain({ name: 'guest', pages: 512 }, { frontDrivers: drivers });
  await host.plugDevice({ kind: 'echo', frontendDomid: guest.domid, backendDomid: driver.domid, devid: 0 });
  const rebooted: number[] = [];
  const destroyed: number[] = [];
  const rebootFailed: [number, string][] = [];
  host.lifecycle.on('rebooted', (old: number) => rebooted.push(old));
  host.lifecycle.on('destroyed', (gone: number) => destroyed.push(gone));
  host.lifecycle.on('rebootFailed', (old: number, why: string) => rebootFailed.push([old, why]));
  return { host, logs, guest: guest.domid, rebooted, destroyed, rebootFailed };
}

/** The live domains (not dying) that carry this name. */
function named(host: Host, name: string): number[] {
  return host.platform
    .listDomains()
    .filter((d) => d.name === name && d.state !== 'dying')
    .map((d) => d.domid);
}

const messageOf = (settled: Settled<string>) =>
  settled.state === 'resolved' ? settled.value : settled.state === 'rejected' ? `error: ${settled.error.message}` : 'no answer';

t.test('two overlapping destroys of one domain both settle', async (t) => {
  const bed = await startBed(t);
  const both = await settleWithin(Promise.all([bed.host.destroyDomain(bed.guest), bed.host.destroyDomain(bed.guest)]), SETTLE_MS);
  t.equal(both.state, 'resolved', 'both destroys settle');
  t.same(bed.destroyed, [bed.guest], 'the domain is destroyed once');
  t.same(named(bed.host, 'guest'), [], 'and is gone');
  t.notOk(bed.host.workers().some((w) => w.name === 'kernel:guest'), 'with its kernel');
  const again = await settleWithin(bed.host.destroyDomain(bed.guest), SETTLE_MS);
  t.equal(again.state, 'resolved', 'destroying it once more settles at once');
  t.same(bed.destroyed, [bed.guest], 'and announces nothing');
});

/** Where in a reboot something else comes: each arms a hook on the host that calls `act` at that step, once. */
const REBOOT_STEPS: { step: string; arm: (bed: Bed, act: () => void) => void }[] = [
  {
    step: 'as the domain shuts down for reboot',
    arm: (bed, act) =>
      bed.host.lifecycle.on('shutdown', (domid: number, reason: string) => domid === bed.guest && reason === 'reboot' && act()),
  },
  {
    step: 'as the reboot stops its old kernel',
    arm: (bed, act) => bed.host.supervisor.once('exit', (name) => name === 'kernel:guest' && act()),
  },
  {
    // The old domain is gone and the new one not yet made: the name is on no domain the hypervisor has.
    step: 'between the old domain and the new one',
    arm: (bed, act) => {
      const toolstack = bed.host.toolstack;
      const create = toolstack.createDomain.bind(toolstack);
      toolstack.createDomain = (config: DomainConfig) => {
        toolstack.createDomain = create;
        act();
        return create(config);
      };
    },
  },
  {
    step: 'as its new kernel starts',
    arm: (bed, act) => {
      const supervisor = bed.host.supervisor;
      const start = supervisor.start.bind(supervisor);
      supervisor.start = (spec: RoleSpec) => {
        const started = start(spec);
        if (spec.name === 'kernel:guest') {
          supervisor.start = start;
          act();
        }
        return started;
      };
    },
  },
  {
    step: 'once its new kernel is ready, before its devices are plugged',
    arm: (bed, act) => bed.host.supervisor.on('ready', (name) => name === 'kernel:guest' && act()),
  },
];

for (const { step, arm } of REBOOT_STEPS) {
  t.test(`a destroy ${step} is answered, and the domain stays gone`, async (t) => {
    const bed = await startBed(t);
    let destroying: Promise<Settled<string>> | undefined;
    arm(bed, () => (destroying ??= settleWithin(bed.host.control('destroy', 'guest'), SETTLE_MS)));
    const reboot = await settleWithin(bed.host.control('reboot', 'guest'), SETTLE_MS);
    t.ok(destroying, 'the destroy was sent during the reboot');
    const destroy = (await destroying) ?? { state: 'pending' };
    t.match(messageOf(destroy), /^domain guest \(\d+\) destroyed$/, 'the destroy is answered');
    t.match(messageOf(reboot), /^error: domain guest \(\d+\) was destroyed during its reboot; it did not come back$/, 'the reboot is answered too, as not done');
    t.same(bed.rebooted, [], 'the host never says the domain rebooted');
    t.same(named(bed.host, 'guest'), [], 'no domain named guest runs');
    t.notOk(bed.host.workers().some((w) => w.name === 'kernel:guest'), 'nor its kernel');
    t.same(named(bed.host, 'driver').length, 1, 'the driver domain runs on');
    const again = await settleWithin(bed.host.control('destroy', 'guest'), SETTLE_MS);
    t.match(messageOf(again), /no domain 'guest'/, 'and a later destroy finds nothing to destroy');
  });
}

for (const { step, arm } of REBOOT_STEPS) {
  t.test(`the host shuts down ${step.replace('its', "the guest's")}`, async (t) => {
    const bed = await startBed(t);
    let stopping: Promise<Settled<void>> | undefined;
    arm(bed, () => (stopping ??= settleWithin(bed.host.shutdown(), SHUTDOWN_TIMEOUT_MS + TERMINATE_MARGIN_MS)));
    await settleWithin(bed.host.control('reboot', 'guest'), SETTLE_MS);
    t.ok(stopping, 'the shutdown began during the reboot');
    t.equal(((await stopping) ?? { state: 'pending' }).state, 'resolved', `the shutdown completes within ${SHUTDOWN_TIMEOUT_MS} ms`);
    t.notOk(bed.logs.some((line) => line.includes('did not stop within')), 'cleanly, without running out of time');
    t.same(bed.rebooted, [], 'the guest was not brought back');
    t.same(bed.host.workers(), [], 'no worker is left');
    t.same(
      bed.host.platform
        .listDomains()
        .filter((d) => d.state !== 'dying')
        .map((d) => d.name),
      ['Domain-0'],
      'only dom0 is left',
    );
  });
}

t.test('a suspend answered while the guest reboots instead says so, as an error', async (t) => {
  const bed = await startBed(t);
  const xs = bed.host.xenstore;
  const node = `/local/domain/${bed.guest}/control/shutdown`;
  // Nothing in the guest acts on the request (its kernel is gone, the features it published stay), so the test decides what happens.
  await bed.host.supervisor.stop('kernel:guest');
  const suspending = settleWithin(bed.host.control('suspend', 'guest'), SETTLE_MS);
  for (let tries = 0; (await xs.tryRead(node)) !== 'suspend'; tries++) {
    if (tries > SETTLE_MS / 10) throw new Error('the suspend request was never written');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  // The guest reboots of its own accord (SysRq b, a panic with reboot set) before it acts on the request.
  bed.host.platform.shutdownDomain(bed.guest, 'reboot');
  const answer = await suspending;
  t.match(messageOf(answer), /^error: domain guest \(\d+\) rebooted \(it runs again as domain \d+\) instead of suspending$/, 'the suspend is answered with what happened');
  t.same(bed.rebooted, [bed.guest], 'and the domain did reboot');
  t.same(named(bed.host, 'guest').length, 1, 'and runs again');
});

/** Counts the domains the toolstack creates from now on. */
function countCreates(host: Host): { count: number } {
  const created = { count: 0 };
  const toolstack = host.toolstack;
  const create = toolstack.createDomain.bind(toolstack);
  toolstack.createDomain = (config: DomainConfig) => {
    created.count++;
    return create(config);
  };
  return created;
}

/** What is left of a guest whose reboot failed: nothing, and the rest of the host runs on. */
async function assertGuestGone(t: Test, bed: Bed, why: string): Promise<void> {
  const line = `domain guest (${bed.guest}) shut down to reboot, but was not started again: ${why}`;
  t.same(bed.rebootFailed, [[bed.guest, why]], 'the domain\'s end is told once, as a failed reboot');
  t.same([bed.rebooted, bed.destroyed], [[], []], 'and not as a reboot or a destroy');
  t.ok(bed.logs.includes(`error [host] ${line}`), 'the log says why');
  t.same(named(bed.host, 'guest'), [], 'no domain named guest is left');
  t.notOk(bed.host.workers().some((w) => w.name === 'kernel:guest'), 'nor its kernel');
  const again = await settleWithin(bed.host.control('destroy', 'guest'), SETTLE_MS);
  t.match(messageOf(again), /no domain 'guest'/, 'the host has forgotten it');
  t.same(named(bed.host, 'driver').length, 1, 'the driver domain runs on');
}

t.test('a reboot whose disk image went away creates no domain, and is answered with why', async (t) => {
  const bed = await startBed(t, { vbd: true });
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-lifecycle-disk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'guest.img');
  writeFileSync(image, Buffer.alloc(64 * 1024));
  const [driver] = named(bed.host, 'driver');
  const disk = diskDevice({ frontendDomid: bed.guest, backendDomid: driver!, vdev: 'xvda', target: image });
  await bed.host.plugDevice(disk);
  t.same(await waitForDevice(bed.host.xenstore, disk, SETTLE_MS), { outcome: 'connected' }, 'the guest has its disk');
  // The image goes while the disk is in use: blkback keeps what it opened, and the reboot looks again.
  rmSync(image);
  const created = countCreates(bed.host);
  const reboot = await settleWithin(bed.host.control('reboot', 'guest'), SETTLE_MS);
  const why = `disk xvda: ${image} does not exist`;
  t.equal(messageOf(reboot), `error: domain guest (${bed.guest}) shut down to reboot, but was not started again: ${why}`, 'the reboot is answered with why it failed');
  t.equal(created.count, 0, 'the disk was looked at before any domain was created');
  await assertGuestGone(t, bed, why);
});

t.test('a reboot that fails once its domain is built destroys what it built', async (t) => {
  const bed = await startBed(t);
  const created = countCreates(bed.host);
  const toolstack = bed.host.toolstack;
  const plug = toolstack.plugDevice.bind(toolstack);
  toolstack.plugDevice = (spec: DeviceSpec) => {
    toolstack.plugDevice = plug;
    return Promise.reject(new Error(`${spec.kind} ${spec.devid} could not be plugged`));
  };
  const reboot = await settleWithin(bed.host.control('reboot', 'guest'), SETTLE_MS);
  const why = 'echo 0 could not be plugged';
  t.equal(messageOf(reboot), `error: domain guest (${bed.guest}) shut down to reboot, but was not started again: ${why}`, 'the reboot is answered with why it failed');
  t.equal(created.count, 1, 'a domain was created again');
  await assertGuestGone(t, bed, why);
});

t.test('a host whose kernels will not stop is shut down within its bound, and says what it terminated', async (t) => {
  // Shorter than the supervisor's own STOP_TIMEOUT_MS, so that the host's bound is what ends the wait.
  const limitMs = STOP_TIMEOUT_MS / 5;
  const bed = await startBed(t, { kernelModule: STUCK_KERNEL, shutdownTimeoutMs: limitMs });
  const began = Date.now();
  const stopped = await settleWithin(bed.host.shutdown(), limitMs + TERMINATE_MARGIN_MS);
  t.equal(stopped.state, 'resolved', `the shutdown completes within ${limitMs} ms and the time to terminate what is left (took ${Date.now() - began} ms)`);
  const said = bed.logs.find((line) => line.startsWith('warn [host] the host did not stop within'));
  t.match(said, new RegExp(`within ${limitMs} ms: terminating `), 'the log says the host ran out of time');
  t.same(said?.replace(/.*: terminating /, '').split(', ').sort(), ['kernel:driver', 'kernel:guest', 'xenstored'], 'and names what it terminated');
  t.same(bed.host.workers(), [], 'no worker is left');
  t.equal((await settleWithin(bed.host.shutdown(), TERMINATE_MARGIN_MS)).state, 'resolved', 'asking again settles at once');
});
