/**
 * The worker mesh: supervision in msgpackr envelopes, restarts by policy,
 * and the embedded host (dom0 with xenstored, domains with their kernels,
 * each in a worker) surviving a kernel crash.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeEnvelope, encodeEnvelope } from '../shared/mesh/envelope.js';
import { Supervisor, type RestartPolicy } from '../shared/mesh/supervisor.js';
import { captureLogs } from './helpers/logs.js';
import { Host } from '../host/machine/host.js';
import { devicePaths } from '../host/toolstack/devices.js';
import { formatDevices, formatStatus, formatTree } from '../host/cli/report.js';
import { waitFor } from './helpers/daemon.js';

const TEST_ROLE = new URL('./helpers/test-role-worker.js', import.meta.url);
const CRASHING_KERNEL = new URL('./helpers/crashing-kernel-worker.js', import.meta.url);
const QUICK_RESTART: RestartPolicy = { kind: 'on-failure', maxRestarts: 2, windowMs: 60_000, delayMs: 10 };


t.test('envelopes are msgpackr-encoded and checked', async (t) => {
  const envelope = { kind: 'stats' as const, stats: { requests: 7, state: 'ready' } };
  const bytes = encodeEnvelope(envelope);
  t.ok(bytes instanceof Uint8Array);
  t.same(decodeEnvelope(bytes), envelope);
  t.throws(() => decodeEnvelope('not bytes'), /not an encoded envelope/);
  t.throws(() => decodeEnvelope(encodeEnvelope(42 as never)), /no kind/);
});

t.test('a role starts, reports, answers health checks and stops', async (t) => {
  const logs = captureLogs(t);
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  const stats = new Promise((resolve) => supervisor.once('stats', (_name, s) => resolve(s)));
  await supervisor.start({ name: 'probe', domid: 3, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: QUICK_RESTART });
  t.same(await stats, { served: 42, mood: 'fine' }, 'statistics arrive');
  const [status] = supervisor.status();
  t.equal(status!.state, 'ready');
  t.same(status!.info, { started: true }, 'with what it said when ready');
  const health = await supervisor.health('probe');
  t.same(health.detail, { served: 42 });
  t.ok(health.uptimeMs >= 0 && health.heapUsed > 0);
  t.ok(logs.some((line) => line === 'info [probe d3] hello from the test role'), 'its logs are forwarded with its domain');
  await supervisor.stop('probe');
  t.same(supervisor.status(), [], 'and it stops');
});

t.test('a role answers queries; an unknown topic, a silent role and a stopped one are errors, not waits', async (t) => {
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  await supervisor.start({ name: 'probe', domid: 3, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: QUICK_RESTART });
  t.same(await supervisor.query('probe', 'echo'), { topic: 'echo', list: [1, 2, 3] }, 'the answer arrives, structured');
  await t.rejects(supervisor.query('probe', 'nothing'), /probe cannot answer 'nothing': no query 'nothing'/, 'an unknown topic');
  await t.rejects(supervisor.query('probe', 'slow', 100), /probe did not answer the query 'slow' within 100 ms/, 'a role that does not answer in time');
  t.same(await supervisor.query('probe', 'echo'), { topic: 'echo', list: [1, 2, 3] }, 'and it still answers the next');
  await t.rejects(supervisor.query('nobody', 'echo'), /nobody is not running/, 'a role that is not there');
  await supervisor.stop('probe');
  await t.rejects(supervisor.query('probe', 'echo'), /probe is not running/, 'nor one that stopped');
});

t.test('a worker that throws is logged and restarted, within its policy', async (t) => {
  const logs = captureLogs(t);
  const supervisor = new Supervisor();
  t.teardown(() => supervisor.stopAll());
  const restarts: number[] = [];
  supervisor.on('restart', (_name, attempt) => restarts.push(attempt));
  await supervisor.start({ name: 'flaky', domid: 4, module: TEST_ROLE, config: { behaviour: 'crash-after-ready' }, shared: null, restart: QUICK_RESTART });
  await waitFor(() => supervisor.status()[0]!.state === 'failed', 'the restarts to run out', 10_000);
  t.same(restarts, [1, 2], 'restarted as often as the policy allows');
  t.match(supervisor.status()[0]!.lastError, /boom/, 'with the error it died of');
  t.ok(logs.some((line) => /flaky \(domain 4\) crashed: .*boom/.test(line)), 'logged with its domain');

  await supervisor.start({ name: 'quitter', domid: 5, module: TEST_ROLE, config: { behaviour: 'exit-after-ready' }, shared: null, restart: { kind: 'never' } });
  await waitFor(() => supervisor.status().find((s) => s.name === 'quitter')!.state === 'failed', 'the exit to be noticed');
  t.match(supervisor.status().find((s) => s.name === 'quitter')!.lastError, /exited with code 3/, 'an unasked exit is a crash too');

  await t.rejects(
    supervisor.start({ name: 'broken', domid: 6, module: TEST_ROLE, config: { behaviour: 'fail-start' }, shared: null, restart: { kind: 'never' } }),
    /cannot start/,
    'a role that fails to start rejects its start',
  );
  await supervisor.start({ name: 'healthy', domid: 7, module: TEST_ROLE, config: { behaviour: 'ok' }, shared: null, restart: QUICK_RESTART });
  t.equal((await supervisor.health('healthy')).detail['served'], 42, 'the rest of the mesh keeps running');
});

/** An embedded host in a fresh directory, booted, shut down when the test ends; its kernels can be told to crash. */
async function bootHost(t: Test): Promise<Host> {
  captureLogs(t);
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-host-'));
  const host = new Host({ socket: join(dir, 'socket'), frames: 8192, kernelModule: CRASHING_KERNEL });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  return host;
}

t.test('the embedded host', async (t) => {
  const host = await bootHost(t);
  const released = await host.xenstore.watch('@releaseDomain');
  await released.next();
  const driver = await host.startDomain({ name: 'driver', pages: 512 });
  const guest = await host.startDomain({ name: 'guest', pages: 512 });
  t.same([driver.domid, guest.domid], [1, 2], 'domains get the next free domids');
  t.same(host.platform.listDomains().map((d) => [d.domid, d.name, d.state]), [
    [0, 'Domain-0', 'running'],
    [1, 'driver', 'running'],
    [2, 'guest', 'running'],
  ]);

  const xs = host.xenstore;
  t.equal(await xs.readString('/local/domain/2/name'), 'guest', 'the toolstack wrote the domain home');
  t.same(await xs.getPermissions('/local/domain/2'), [{ domid: 0, access: 'none' }, { domid: 2, access: 'read' }], 'readable by the domain');
  t.same(await xs.getPermissions('/local/domain/2/device'), [{ domid: 2, access: 'none' }], 'its device directory is its own');
  t.equal(await xs.readString('/local/domain/2/store/port'), String(guest.storePort));
  t.ok(await xs.isDomainIntroduced(2));
  t.match(await formatTree(xs, '/local/domain/2'), /^ name = "guest"  \(n0,r2\)$/m, 'the host shows the tree with permissions');
  await waitFor(() => host.workers().every((w) => w.state === 'ready'), 'every worker to be ready');
  t.match(await formatStatus(host), /^2 +guest +running +kernel:guest ready +0 +connected$/m, 'the status shows the connection');

  // A kernel crash: the worker is restarted, finds its ring and port, and reconnects.
  await xs.write('/local/domain/2/data/crash', 'now');
  await waitFor(() => host.workers().find((w) => w.name === 'kernel:guest')!.restarts === 1, 'the kernel to be restarted');
  await waitFor(() => host.workers().find((w) => w.name === 'kernel:guest')!.state === 'ready', 'the restarted kernel to be ready');
  t.pass('the crashed kernel was restarted');
  t.match(await formatStatus(host), /^2 +guest +running +kernel:guest ready +1 +connected$/m, 'and is connected again');
  t.equal((await host.supervisor.health('kernel:guest')).detail['xenstore'], 'connected');
  t.match(await formatStatus(host), /^1 +driver +running +kernel:driver ready +0 +connected$/m, 'the other domain never noticed');

  await host.destroyDomain(1);
  t.same((await released.next()).value?.path, '@releaseDomain', 'destroying a domain fires @releaseDomain');
  t.notOk(await xs.isDomainIntroduced(1), 'xenstored released it');
  t.same(await xs.directory('/local/domain'), ['0', '2'], 'and the toolstack removed its home');
  t.equal(host.platform.domainInfo(1), undefined, 'the hypervisor freed it');
});

t.test('devices on the embedded host survive a backend crash and a xenstored restart', async (t) => {
  const host = await bootHost(t);
  const driver = await host.startDomain({ name: 'driver', pages: 512 }, { backDrivers: ['echo'] });
  const guest = await host.startDomain({ name: 'guest', pages: 512 }, { frontDrivers: ['echo'] });
  const connected = async (devid: number, what: string) => {
    const { frontend, backend } = devicePaths({ kind: 'echo', frontendDomid: guest.domid, backendDomid: driver.domid, devid });
    await waitFor(
      () => states.get(`${frontend}/state`) === '4' && states.get(`${backend}/state`) === '4',
      what,
      10_000,
    );
  };
  // The states as a toolstack polling xenstore sees them.
  const states = new Map<string, string | undefined>();
  const poll = setInterval(() => {
    for (const devid of [0, 1]) {
      const { frontend, backend } = devicePaths({ kind: 'echo', frontendDomid: guest.domid, backendDomid: driver.domid, devid });
      for (const path of [`${frontend}/state`, `${backend}/state`]) {
        // Between two xenstoreds the host has no connection for a moment.
        if (host.workers().find((w) => w.name === 'xenstored')?.state !== 'ready') continue;
        try {
          host.xenstore.tryRead(path).then((v) => states.set(path, v), () => {});
        } catch {
          // The host is reconnecting.
        }
      }
    }
  }, 20);
  t.teardown(() => clearInterval(poll));

  const first = { kind: 'echo', frontendDomid: guest.domid, backendDomid: driver.domid, devid: 0 };
  await host.plugDevice(first);
  await connected(0, 'the device to connect');
  t.match(await formatDevices(host.xenstore), /^echo 0 +\S+ \(2\) +Connected +\S+ \(1\) +Connected +connected$/m, 'both ends Connected');
  await waitFor(() => host.workers().find((w) => w.name === 'kernel:guest')!.stats['front echo/0'] !== undefined, 'the kernel to report its device');
  t.match(host.workers().find((w) => w.name === 'kernel:guest')!.stats['front echo/0'], /^Connected/, "the guest's kernel reports it");

  await host.xenstore.write(`/local/domain/${driver.domid}/data/crash`, 'now');
  await waitFor(() => host.workers().find((w) => w.name === 'kernel:driver')!.restarts === 1, 'the driver kernel to be restarted');
  await connected(0, 'the device to connect again to the restarted backend');
  t.pass('a restarted backend kernel reconnects its device');

  await host.restartXenstored();
  await connected(0, 'the device to stay connected');
  const second = { ...first, devid: 1 };
  await host.plugDevice(second);
  await connected(1, 'a device plugged after the restart to connect');
  t.pass('after a xenstored restart both buses still see hotplug');
  t.ok((await host.unplugDevice(first)).clean, 'and unplug works');
});
