/**
 * Quotas: what Xen's C xenstored limits per domain, with its defaults and
 * names, the GET_QUOTA/SET_QUOTA requests, and dom0's exemption.
 */
import t from 'tap';
import { setLogSink } from '../shared/log.js';
import { XENSTORE_REL_PATH_MAX } from '../shared/xs-wire.js';
import { OptionError, parseXenstoredOptions } from '../xenstore/daemon/options.js';
import { errno, startDaemon, type RunningDaemon } from './helpers/daemon.js';

/** The shortest path-max a domain can live with: the home path of the largest domid. */
const SHORTEST_USABLE_PATH_MAX = '/local/domain/32751'.length;


/** A guest with a data directory it owns, and a dom0 client. */
async function guestWithHome(env: RunningDaemon, domid: number) {
  await env.makeDataDirectory(domid);
  return { dom0: await env.client(), guest: await env.domain(domid) };
}

t.test('GET_QUOTA and SET_QUOTA', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  t.equal(
    await dom0.getQuota(),
    'nodes watches transactions outstanding transaction-nodes memory soft-memory node-size path-max permissions',
    'without arguments: the quota names',
  );
  const defaults: Record<string, string> = {
    nodes: '1000',
    watches: '128',
    transactions: '10',
    outstanding: '20',
    'transaction-nodes': '1024',
    memory: '2621440',
    'soft-memory': '2097152',
    'node-size': '2048',
    'path-max': '2048',
    permissions: '5',
  };
  for (const [name, value] of Object.entries(defaults)) t.equal(await dom0.getQuota(name), value, `default ${name}`);
  await env.domain(5);
  await dom0.setQuota('nodes', 50);
  t.equal(await dom0.getQuota('nodes'), '50', 'SET_QUOTA sets the global value');
  t.equal(await dom0.getQuota('nodes', 5), '1000', 'a known domain keeps the quota it started with');
  await dom0.setQuota('nodes', 7, 5);
  t.equal(await dom0.getQuota('nodes', 5), '7', 'a domain can be given its own');
  await env.domain(6);
  t.equal(await dom0.getQuota('nodes', 6), '50', 'a new domain starts from the global values');
  await dom0.setQuota('soft-memory', 12345);
  t.equal(await dom0.getQuota('soft-memory'), '12345');
  t.equal(await errno(dom0.getQuota('bogus')), 'EINVAL', 'unknown name');
  t.equal(await errno(dom0.getQuota('soft-nodes')), 'EINVAL', 'there is no soft node quota');
  t.equal(await errno(dom0.setQuota('nodes', -1)), 'EINVAL', 'a negative quota');
  t.equal(await errno(dom0.setQuota('nodes', 0xffffffff)), 'EINVAL', 'the "disabled" marker is not a value');
  t.equal(await errno(dom0.request(26, Buffer.from('nodes\0'))), 'EINVAL', 'SET_QUOTA without a value');
  t.equal(await errno(dom0.request(25, Buffer.from('1\0nodes\0x\0'))), 'EINVAL', 'GET_QUOTA with three arguments');
  t.equal(await errno(dom0.getQuota('nodes', 70000)), 'EINVAL', 'a domid out of range');
  t.equal(await errno(dom0.control('quota', 'set', 'nodes', '-3')), 'EINVAL', 'xenstore-control quota set refuses negatives too');
});

t.test('nodes', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, guest } = await guestWithHome(env, 5);
  await dom0.setQuota('nodes', 5, 5);
  const owned = env.daemon.store.usageOf(5).nodes;
  t.equal(owned, 1, 'the data directory');
  for (let i = 0; i < 4; i++) await guest.write(`data/n${i}`, 'x');
  t.equal(await errno(guest.write('data/n4', 'x')), 'ENOSPC', 'the sixth node is refused');
  t.equal(await errno(guest.write('data/a/b/c', 'x')), 'ENOSPC', 'so is a write creating several');
  t.same(await guest.directory('data'), ['n0', 'n1', 'n2', 'n3'], 'a refused write creates nothing');
  await guest.rm('data/n0');
  await guest.write('data/n4', 'x');
  t.pass('removing a node frees quota');
  await dom0.write('/local/domain/5/data/from-dom0', 'x');
  t.equal(env.daemon.store.usageOf(5).nodes, 6, 'nodes dom0 creates for the domain count too, without refusal');
  for (let i = 0; i < 20; i++) await dom0.write(`/dom0-owned/n${i}`, 'x');
  t.pass('dom0 is exempt');
});

t.test('watches, transactions and permissions per node', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, guest } = await guestWithHome(env, 5);
  await dom0.setQuota('watches', 2, 5);
  await dom0.setQuota('transactions', 2, 5);
  await dom0.setQuota('permissions', 2, 5);
  await guest.watch('data', { token: 'a' });
  await guest.watch('data', { token: 'b' });
  t.equal(await errno(guest.watch('data', { token: 'c' })), 'ENOSPC', 'a third watch');
  await guest.resetWatches();
  await guest.watch('data', { token: 'c' });
  t.pass('RESET_WATCHES gives them back');

  const tx1 = await guest.startTransaction();
  const tx2 = await guest.startTransaction();
  t.equal(await errno(guest.startTransaction()), 'ENOSPC', 'a third transaction');
  await guest.endTransaction(tx1, false);
  await guest.endTransaction(tx2, true);
  await guest.endTransaction(await guest.startTransaction(), true);
  t.pass('ended transactions give them back');

  await guest.write('data/p', 'x');
  await guest.setPermissions('data/p', [{ domid: 5, access: 'none' }, { domid: 0, access: 'read' }]);
  t.equal(
    await errno(guest.setPermissions('data/p', [{ domid: 5, access: 'none' }, { domid: 0, access: 'read' }, { domid: 1, access: 'read' }])),
    'ENOSPC',
    'more permission entries than allowed',
  );
  for (let i = 0; i < 15; i++) await dom0.watch('/', { token: `dom0-${i}` });
  t.pass('dom0 is exempt');
});

t.test('node size, path length and transaction nodes', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, guest } = await guestWithHome(env, 5);
  await dom0.setQuota('node-size', 100, 5);
  await dom0.setQuota('path-max', 40, 5);
  await dom0.setQuota('transaction-nodes', 4, 5);
  await guest.write('data/small', 'x'.repeat(50));
  t.equal(await errno(guest.write('data/big', 'x'.repeat(100))), 'ENOSPC', 'a node over node-size');
  t.equal(await errno(guest.write('data/small', 'x'.repeat(100))), 'ENOSPC', 'growing a node over node-size');
  t.equal(await guest.readString('data/small'), 'x'.repeat(50), 'a refused write leaves the value alone');
  t.equal(await errno(guest.write(`data/${'p'.repeat(40)}`, 'x')), 'EINVAL', 'a path over path-max (counted from the home)');
  await guest.write(`data/${'p'.repeat(30)}`, 'x');

  const tx = await guest.startTransaction();
  await guest.write('data/t1', '1', { tx });
  t.equal(await errno(guest.write('data/t2/a/deeper', '1', { tx })), 'ENOSPC', 'a transaction touching too many nodes');
  await guest.endTransaction(tx, true);
  t.equal(await guest.readString('data/t1'), '1', 'what it did before the refusal still commits');

  await dom0.write(`/${'d'.repeat(300)}`, 'x'.repeat(3000));
  t.pass('dom0 is exempt from node-size, but not from the protocol limits');
});

t.test('memory', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, guest } = await guestWithHome(env, 5);
  await dom0.setQuota('memory', 6000, 5);
  let written = 0;
  let outcome = 'OK';
  while (outcome === 'OK' && written < 100) {
    outcome = await errno(guest.write(`data/n${written}`, 'x'.repeat(1000)));
    if (outcome === 'OK') written++;
  }
  t.equal(outcome, 'ENOMEM', 'nodes beyond the memory quota are refused');
  t.ok(written >= 4 && written <= 6, `about 6000 bytes of nodes were allowed (${written} of 1000 bytes)`);
  t.equal(await errno(guest.watch('data', { token: 'x'.repeat(2000) })), 'ENOMEM', 'so are watches');
  await guest.rm('data/n0');
  await guest.rm('data/n1');
  await guest.write('data/after', 'x'.repeat(1000));
  t.pass('removing nodes frees memory');
});

t.test('outstanding requests: a domain that does not read its replies', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { guest } = await guestWithHome(env, 5);
  const other = await env.domain(6);
  const ring = env.ringOf(5);
  ring.stopReading();
  const requests = Array.from({ length: 200 }, (_, i) => guest.write(`data/n${i % 10}`, 'x'.repeat(200)));
  await new Promise((resolve) => setTimeout(resolve, 200));
  const domain = env.daemon.domains.find(5)!;
  t.ok(domain.counts.outstanding <= 20, `at most 20 requests outstanding (${domain.counts.outstanding})`);
  t.equal(await other.getDomainPath(6), '/local/domain/6', 'other domains are served meanwhile');
  ring.startReading();
  await Promise.all(requests);
  t.pass('every request completes once the domain reads again');
  t.equal(domain.counts.outstanding, 0);
});

t.test('a quota that would lock domains out is refused, and dom0 keeps working', async (t) => {
  const warnings: string[] = [];
  setLogSink((level, component, message) => {
    if (level === 'warn' && component === 'xenstored') warnings.push(message);
  });
  t.teardown(() => setLogSink((level, component, message) => process.stderr.write(`${level} [${component}] ${message}\n`)));
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, guest } = await guestWithHome(env, 5);

  t.equal(await errno(dom0.setQuota('path-max', 1)), 'EINVAL', 'SET_QUOTA path-max 1, global');
  t.match(warnings.at(-1), /^SET_QUOTA path-max 1 \(global\) refused: path-max 1 is below 19/, 'the reason is logged');
  t.equal(await errno(dom0.setQuota('path-max', SHORTEST_USABLE_PATH_MAX - 1, 5)), 'EINVAL', 'SET_QUOTA path-max 18 for a guest');
  t.equal(await errno(dom0.setQuota('path-max', 1, 0)), 'EINVAL', "SET_QUOTA path-max 1 for dom0's own record");
  t.equal(await errno(dom0.setQuota('path-max', -1)), 'EINVAL', 'a negative path-max');
  t.equal(await errno(dom0.control('quota', 'set', 'path-max', '5')), 'EINVAL', 'xenstore-control quota set path-max 5');
  t.match(warnings.at(-1), /^control quota set path-max 5 refused: path-max 5 is below 19/, 'logged too');
  t.equal(await errno(dom0.control('quota', 'set', 'path-max', '0')), 'EINVAL', 'xenstore-control quota set path-max 0, as xenstored refuses 0');
  t.equal(await dom0.getQuota('path-max'), '2048', 'a refused value leaves the global quota alone');
  t.equal(await dom0.getQuota('path-max', 5), '2048', "and the guest's");
  t.equal(await dom0.getQuota('path-max', 0), '2048', "and dom0's");

  const fresh = await env.client();
  await fresh.write('/tool/after-refusal', 'x');
  t.equal(await fresh.readString('/tool/after-refusal'), 'x', 'a new socket client still reads and writes');
  await guest.write('data/after-refusal', 'x');
  t.equal(await guest.readString('/local/domain/5/data/after-refusal'), 'x', 'so does the guest');

  await dom0.setQuota('path-max', SHORTEST_USABLE_PATH_MAX, 5);
  await guest.watch('/local/domain/5', { token: 'home' });
  await guest.watch('@introduceDomain', { token: 'special' });
  t.pass('at the floor a guest still names its home and the special paths');
});

t.test('no path-max quota locks dom0 out, and 0 lifts the limit', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const { dom0, guest } = await guestWithHome(env, 5);
  const long = 'p'.repeat(100);
  await dom0.setQuota('path-max', SHORTEST_USABLE_PATH_MAX, 0);
  await dom0.setQuota('path-max', SHORTEST_USABLE_PATH_MAX);
  await dom0.write(`/tool/${long}`, 'x');
  t.pass("dom0's own path-max does not bind it");
  const fresh = await env.client();
  await fresh.write(`/tool/${long}/fresh`, 'x');
  const ring = await env.dom0Ring();
  await ring.write(`/tool/${long}/ring`, 'x');
  t.pass('nor new socket clients, nor dom0 on its ring');
  t.equal(await errno(dom0.write(`/${'q'.repeat(XENSTORE_REL_PATH_MAX)}`, 'x')), 'EINVAL', 'dom0 stays within XENSTORE_REL_PATH_MAX, as with Xen 4.17 defaults');

  await dom0.setQuota('path-max', 0, 0);
  await dom0.write(`/tool/${long}/zero`, 'x');
  t.pass('path-max 0 for dom0 changes nothing');
  await dom0.setQuota('path-max', 0, 5);
  // A node's size counts its path: lift that limit too, to see path-max alone.
  await dom0.setQuota('node-size', 0, 5);
  const beyond = `data/${'r'.repeat(XENSTORE_REL_PATH_MAX)}`;
  await guest.write(beyond, 'x');
  t.equal(await guest.readString(beyond), 'x', 'path-max 0 lifts the limit for a guest, as 0 does for every quota, rather than refusing every path');
});

t.test('the command line refuses a path-max that would lock domains out', async (t) => {
  const refusal = (args: string[]) => {
    try {
      parseXenstoredOptions(args);
      return 'accepted';
    } catch (err) {
      return err instanceof OptionError ? err.message : `not an OptionError: ${err}`;
    }
  };
  for (const args of [['-M', '5'], ['--path-max', '18'], ['-Q', 'path-max=1']]) {
    t.match(refusal(args), /^path-max \d+ is below 19, the length of the longest path xenstore gives a domain/, args.join(' '));
  }
  t.equal(parseXenstoredOptions(['-M', '19']).quotas.hard['path-max'], 19, 'the floor itself is fine');
  t.equal(parseXenstoredOptions(['-M', '0']).quotas.hard['path-max'], 0, '0 disables the limit');
  t.equal(parseXenstoredOptions(['-M', '4000']).quotas.hard['path-max'], XENSTORE_REL_PATH_MAX, 'still capped as xenstored caps it');
  t.equal(parseXenstoredOptions(['-w', 'unread-output=15']).unreadOutputTimeoutMs, 15_000, '-w unread-output sets how long a ring may go unread');
  t.equal(parseXenstoredOptions(['--timeout', 'watch-event=5']).watchEventTimeoutMs, 5_000, 'and watch-event still sets the event timeout');
  t.equal(refusal(['-w', 'unread=3']), 'unknown timeout "unread"', 'an unknown timeout is refused by name');
});
