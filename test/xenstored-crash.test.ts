/**
 * xenstored survives its own crash: killed again and again under a load of
 * transactions and watches from several clients, it comes back with every
 * commit its clients saw acknowledged and nothing they did not send, and
 * they reconnect and set their watches again. In the embedded host (the
 * supervisor restarts the worker) and as `xenmesh xenstored` (SIGKILL, and
 * started again as an init system would).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { Host } from '../host/machine/host.js';
import { XenStoreClient } from '../xenstore/client/client.js';
import { audit, commitUntil, loadClient, watchOwn, LOAD_ROOT, type LoadClient } from './helpers/commit-load.js';
import { waitFor } from './helpers/daemon.js';

const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
/** Kills in a row, as the tests of crash recovery ask. */
const KILLS = 20;
const CLIENTS = 3;
/** How long the load runs between two kills. */
const LOAD_BETWEEN_KILLS_MS = 150;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs the clients' load while `kill()` crashes xenstored KILLS times, then audits the store. */
async function crashUnderLoad(t: Test, socket: string, kill: (round: number) => Promise<void>): Promise<void> {
  const clients: LoadClient[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const xs = await XenStoreClient.connect(socket, { reconnect: true });
    t.teardown(() => xs.close());
    clients.push(loadClient(`c${i}`, xs));
  }
  for (const client of clients) await client.xs.mkdir(`${LOAD_ROOT}/${client.name}`);
  for (const client of clients) await watchOwn(client);
  let stopping = false;
  const load = clients.map((client) => commitUntil(client, () => stopping));
  for (let round = 1; round <= KILLS; round++) {
    await sleep(LOAD_BETWEEN_KILLS_MS);
    await kill(round);
  }
  await sleep(LOAD_BETWEEN_KILLS_MS);
  stopping = true;
  await Promise.all(load);

  const checker = await XenStoreClient.connect(socket);
  t.teardown(() => checker.close());
  for (const client of clients) {
    t.same(client.errors.map((e) => e.message), [], `${client.name}: no request failed but by the crashes`);
    t.ok(client.acknowledged.size > KILLS, `${client.name}: ${client.acknowledged.size} commits acknowledged, ${client.inDoubt} in doubt`);
    const { lost, invented, torn } = await audit(client, checker);
    t.same(lost, [], `${client.name}: every acknowledged commit is there`);
    t.same(invented, [], `${client.name}: nothing it did not send is there`);
    t.same(torn, [], `${client.name}: no transaction is there in part`);
    // Its watch was set again after every restart: a new commit fires it.
    const before = client.events;
    await client.xs.write(`${LOAD_ROOT}/${client.name}/final`, 'x');
    await waitFor(() => client.events > before, `${client.name}'s watch to fire`, 10_000);
    t.pass(`${client.name}: its watch still fires`);
  }
}

t.test('the xenstored worker killed 20 times under load', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-crash-'));
  const host = new Host({
    socket: join(dir, 'socket'),
    frames: 8192,
    xenstoredRestart: { kind: 'on-failure', maxRestarts: KILLS + 5, windowMs: 600_000, delayMs: 10 },
  });
  t.teardown(async () => {
    await host.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });
  await host.boot();
  const guest = await host.startDomain({ name: 'guest', pages: 512 });
  await waitFor(() => host.workers().every((w) => w.state === 'ready'), 'every worker to be ready', 30_000);
  const status = () => host.workers().find((w) => w.name === 'xenstored')!;

  await crashUnderLoad(t, join(dir, 'socket'), async (round) => {
    await host.supervisor.kill('xenstored');
    await waitFor(() => status().restarts === round && status().state === 'ready', `xenstored to be restarted (${round})`, 30_000);
  });
  t.equal(status().restarts, KILLS, `the supervisor restarted it ${KILLS} times`);

  // The toolstack's own client reconnected; the guest's ring resumed and its kernel reconnected.
  t.equal(await host.xenstore.readString(`/local/domain/${guest.domid}/name`), 'guest', 'the domain home is there');
  t.ok(await host.xenstore.isDomainIntroduced(guest.domid), 'the domain is still introduced');
  const deadline = Date.now() + 20_000;
  let state: unknown;
  while (Date.now() < deadline) {
    state = (await host.supervisor.health('kernel:guest')).detail['xenstore'];
    if (state === 'connected') break;
    await sleep(50);
  }
  t.equal(state, 'connected', "the guest's kernel is connected over its ring again");
});

t.test('xenmesh xenstored SIGKILLed 20 times under load', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-crash-cli-'));
  const socket = join(dir, 'socket');
  let child: ChildProcess | undefined;
  const start = async () => {
    rmSync(socket, { force: true });
    child = spawn(process.execPath, [XENMESH, 'xenstored', '--socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const started = child;
    const deadline = Date.now() + 10_000;
    // It says so once it has recovered its store and serves.
    while (!/serving xenstore on/.test(stderr) && started.exitCode === null) {
      if (Date.now() > deadline) throw new Error(`xenstored did not start: ${stderr}`);
      await sleep(10);
    }
    if (started.exitCode !== null) throw new Error(`xenstored exited: ${stderr}`);
    return () => stderr;
  };
  t.teardown(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  let stderr = await start();
  let recovered = 0;
  await crashUnderLoad(t, socket, async () => {
    const dying = child!;
    const exited = new Promise((resolve) => dying.once('exit', resolve));
    dying.kill('SIGKILL');
    await exited;
    stderr = await start();
    if (/recovered the store from .*socket\.journal/.test(stderr())) recovered++;
  });
  t.equal(recovered, KILLS, 'it said it recovered its store each time');
  const stopping = child!;
  const exited = new Promise<number | null>((resolve) => stopping.once('exit', resolve));
  stopping.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM still stops it cleanly');
  t.notOk(existsSync(join(`${socket}.journal`, 'snapshot')), 'and a clean stop takes the store with it');
});
