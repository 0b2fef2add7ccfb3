/**
 * Domains from the command line, as xl's list, create, pause, unpause and
 * halt do them, against a running `xenmesh up`: a paused domain shows p, a
 * suspended one shows as suspended with its devices held, a reboot gives
 * a new domid, and a resume to a backend that cannot serve the disks is
 * refused up front, the domain left suspended and resumable.
 */
import t from 'tap';
import { startXenmeshHost, type XenmeshHost } from './helpers/xenmesh-host.js';

/** The row of `xenmesh list` for a domain. */
async function listRow(host: XenmeshHost, name: string): Promise<string | undefined> {
  const list = await host.xenmesh('list');
  return list.stdout.split('\n').find((line) => line.startsWith(`${name} `));
}

/** The domid `xenmesh list` shows for a domain. */
async function listedDomid(host: XenmeshHost, name: string): Promise<number | undefined> {
  const row = await listRow(host, name);
  return row === undefined ? undefined : Number(row.split(/\s+/)[1]);
}

t.test('list, pause, unpause, create, reboot, halt', async (t) => {
  const host = await startXenmeshHost(t, 'xenmesh-list-');

  const list = await host.xenmesh('list');
  t.equal(list.code, 0, 'list exits 0', { stderr: list.stderr });
  t.match(list.stdout, /^Name +ID +Mem\(MiB\) +State +Devices$/m, "xl list's columns");
  t.match(list.stdout, /^Domain-0 +0 +1 +r----- running +no devices$/m, 'Domain-0');
  t.match(list.stdout, /^driver +1 +4 +r----- running +no devices$/m, 'the driver domain');
  t.match(list.stdout, /^guest +2 +4 +r----- running +vbd xvda, echo 0$/m, 'the guest and its devices');
  t.ok(list.stdout.split('\n').every((line) => line.length <= 80), 'within 80 columns');

  const paused = await host.xenmesh('pause', 'guest');
  t.equal(paused.code, 0, 'pause exits 0', { stderr: paused.stderr });
  t.equal(paused.stdout, 'domain guest (2) paused\n');
  t.match(await listRow(host, 'guest'), /^guest +2 +4 +--p--- paused/, 'list shows it paused, p');
  const again = await host.xenmesh('pause', 'guest');
  t.equal(again.code, 1, 'pausing it again is refused');
  t.equal(again.stderr, 'xenmesh pause: domain guest (2) is already paused\n');
  const unpaused = await host.xenmesh('unpause', 'guest');
  t.equal(unpaused.stdout, 'domain guest (2) unpaused\n', 'unpause');
  t.match(await listRow(host, 'guest'), /^guest +2 +4 +r----- running/, 'and it runs again');
  t.equal((await host.xenmesh('unpause', 'guest')).stderr, 'xenmesh unpause: domain guest (2) is not paused (running)\n', 'unpausing a running domain is refused');
  t.match((await host.xenmesh('pause', 'nosuch')).stderr, /^xenmesh pause: no domain 'nosuch'/, 'an unknown domain is refused');
  t.match((await host.xenmesh('pause', 'Domain-0')).stderr, /^xenmesh pause: Domain-0 is the host itself/, 'and Domain-0');

  // At the prompt too.
  await host.type('pause guest', /domain guest \(2\) paused/);
  await host.type('list', /^guest +2 +4 +--p--- paused/m);
  await host.type('unpause guest', /domain guest \(2\) unpaused/);

  const image = host.makeImage('extra.img');
  const created = await host.xenmesh('create', 'extra', '--disk', image);
  t.equal(created.code, 0, 'create exits 0', { stderr: created.stderr });
  t.match(created.stdout, /^domain extra \((\d+)\) created, 1 disk\(s\) served by domain 1, connected$/m, 'create says where its disk is served');
  const extra = await listedDomid(host, 'extra');
  t.ok(extra !== undefined && extra > 2, 'a new domid');
  t.match(await listRow(host, 'extra'), /r----- running +vbd xvda, echo 0|r----- running +vbd xvda$/, 'list shows it with its disk');
  const extraDisks = (await host.xenmesh('block-list', 'extra')).stdout;
  t.match(extraDisks, /^\d+ xvda rw +\/tmp\//m, 'and block-list its disk');
  t.match(extraDisks, /extra\.img/, 'with its image');
  t.match((await host.xenmesh('create', 'extra')).stderr, /^xenmesh create: a domain named extra exists already$/m, 'a name in use is refused');
  t.match((await host.xenmesh('create', 'other', '--disk', `${host.dir}/missing.img`)).stderr, /^xenmesh create: domain other not created: .*missing\.img/, 'a missing image is refused');
  t.equal(await listedDomid(host, 'other'), undefined, 'and nothing was created');
  t.match((await host.xenmesh('create', 'other', '--backend', 'guest')).stderr, /^xenmesh create: domain guest \(2\) has no vbd back driver/, 'a backend without a vbd back driver is refused');

  // A reboot makes a new domain, with a new domid, as xl does.
  const before = await listedDomid(host, 'guest');
  const rebooted = await host.xenmesh('domain', 'reboot', 'guest');
  t.equal(rebooted.code, 0, 'reboot exits 0', { stderr: rebooted.stderr });
  const after = await listedDomid(host, 'guest');
  t.ok(after !== undefined && after !== before, `the guest runs under a new domid (${before} -> ${after})`);
  t.ok(after! > extra!, 'the next one, not the one just freed');
  t.match(rebooted.stdout, new RegExp(`\\b${after}\\b`), 'and the reboot says which');

  const halted = await host.xenmesh('halt', 'extra');
  t.equal(halted.code, 0, 'halt exits 0', { stderr: halted.stderr });
  t.match(halted.stdout, /extra/, 'it says what happened');
  t.equal(await listedDomid(host, 'extra'), undefined, 'and the domain is gone');
  t.equal(host.child.exitCode, null, 'the host runs on');
});

t.test('a suspended domain: shown with its held devices; a resume to a bad backend is refused up front', async (t) => {
  const host = await startXenmeshHost(t, 'xenmesh-suspend-');
  const suspended = await host.xenmesh('domain', 'suspend', 'guest');
  t.equal(suspended.code, 0, 'suspend exits 0', { stderr: suspended.stderr });
  t.match(await listRow(host, 'guest'), /^guest +2 +4 +---s-- suspended +held: vbd xvda, echo 0$/, 'list shows it suspended, holding its devices');
  await host.type('status', /guest \(2\) is suspended, holding vbd xvda, echo 0 until it resumes/);

  // A domain whose kernel loads no back drivers: a guest, made without disks.
  const plain = await host.xenmesh('create', 'plain');
  t.match(plain.stdout, /^domain plain \((\d+)\) created, no disks$/m, 'a guest without disks', { stderr: plain.stderr });
  const bad: [string, RegExp][] = [
    ['guest', /domain guest \(2\) stays suspended: a domain cannot serve its own vbd devices/],
    ['Domain-0', /domain guest \(2\) stays suspended: Domain-0 runs no vbd backend on this host/],
    ['plain', /domain guest \(2\) stays suspended: domain plain \(\d+\) has no vbd back driver/],
    ['nosuch', /no domain 'nosuch'/],
  ];
  for (const [backend, error] of bad) {
    const result = await host.xenmesh('domain', 'resume', 'guest', '--backend', backend, '--timeout', '5');
    t.equal(result.code, 1, `--backend ${backend}: refused`);
    t.match(result.stderr, error, 'saying why');
    t.match(await listRow(host, 'guest'), /---s-- suspended +held: vbd xvda, echo 0$/, 'the domain is still suspended, its devices held');
  }
  t.equal((await host.xenstore('xenstore-read', '/local/domain/1/backend/vbd/2/51712/state')).code, 1, 'and no backend was left behind');

  const resumed = await host.xenmesh('domain', 'resume', 'guest');
  t.equal(resumed.code, 0, 'it resumes afterwards', { stderr: resumed.stderr });
  t.match(resumed.stdout, /domain guest \(2\) resumed; 2 device\(s\) reconnected/);
  t.match(await listRow(host, 'guest'), /^guest +2 +4 +r----- running +vbd xvda, echo 0$/, 'running with its devices');
});
