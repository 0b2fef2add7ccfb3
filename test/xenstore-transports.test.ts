/**
 * The same request-level tests over both transports the daemon serves:
 * the Unix socket and a xenstore ring (dom0's own, so that the client is
 * privileged either way). Results must be identical.
 */
import t, { type Test } from 'tap';
import { XsType, nulStrings } from '../shared/xs-wire.js';
import type { XenStoreClient } from '../xenstore/client/client.js';
import type { Watcher } from '../xenstore/client/watcher.js';
import { errno, startDaemon, type RunningDaemon } from './helpers/daemon.js';

type Transport = 'socket' | 'ring';

interface Scenario {
  name: string;
  run(t: Test, client: XenStoreClient, helper: XenStoreClient, env: RunningDaemon): Promise<void>;
}

async function drain(watcher: Watcher): Promise<string[]> {
  await new Promise((resolve) => setTimeout(resolve, 40));
  const paths: string[] = [];
  while (watcher.pendingEvents > 0) paths.push((await watcher.next()).value!.path);
  return paths;
}

const SCENARIOS: Scenario[] = [
  {
    name: 'nodes',
    async run(t, c) {
      await c.write('/n/a/b', Buffer.from([0, 1, 2, 255]));
      t.same([...(await c.read('/n/a/b'))], [0, 1, 2, 255], 'binary values');
      await c.mkdir('/n/dir/sub');
      await c.mkdir('/n/dir/sub');
      t.same(await c.directory('/n'), ['a', 'dir'], 'children in creation order');
      t.equal(await c.readString('/n/dir'), '', 'created parents are empty');
      await c.rm('/n/a');
      t.equal(await errno(c.read('/n/a/b')), 'ENOENT', 'removal is recursive');
      t.equal(await errno(c.rm('/n/none/deeper')), 'ENOENT');
      await c.rm('/n/none');
      t.equal(await errno(c.rm('/')), 'EINVAL');
      await c.write('relative', 'home');
      t.equal(await c.readString('/local/domain/0/relative'), 'home', 'relative paths under /local/domain/0');
      for (const bad of ['/a//b', '/a/', 'a b', '']) t.equal(await errno(c.read(bad)), 'EINVAL', `'${bad}' is EINVAL`);
      const names = Array.from({ length: 300 }, (_, i) => `a-long-child-name-${i}`);
      for (const name of names) await c.write(`/long/${name}`, '');
      t.same(await c.directory('/long'), names, 'a long directory through DIRECTORY_PART');
    },
  },
  {
    name: 'permissions',
    async run(t, c) {
      await c.write('/p/x', 'v');
      t.same(await c.getPermissions('/p/x'), [{ domid: 0, access: 'none' }]);
      await c.setPermissions('/p/x', [{ domid: 0, access: 'read' }, { domid: 0x7ff5, access: 'both' }]);
      t.same(await c.getPermissions('/p/x'), [{ domid: 0, access: 'read' }, { domid: 0x7ff5, access: 'both' }]);
      t.equal(await errno(c.request(XsType.SET_PERMS, nulStrings('/p/x', 'q0'))), 'EINVAL', 'a bad permission');
      t.same(await c.getPermissions('@releaseDomain'), [{ domid: 0, access: 'none' }], 'special nodes have permissions');
    },
  },
  {
    name: 'watches',
    async run(t, c, helper) {
      const w = await c.watch('/w');
      const shallow = await c.watch('/w', { token: 'shallow', depth: 1 });
      const rel = await c.watch('rel');
      t.same(await drain(w), ['/w'], 'the first event');
      await drain(shallow);
      await drain(rel);
      await helper.write('/w/a', '1');
      await helper.write('/w/a/deep', '2');
      await helper.write('/local/domain/0/rel/x', '3');
      t.same(await drain(w), ['/w/a', '/w/a/deep']);
      t.same(await drain(shallow), ['/w/a'], 'depth 1');
      t.same(await drain(rel), ['rel/x'], 'relative paths stay relative');
      await w.close();
      await helper.write('/w/b', '4');
      t.same(await drain(w), [], 'UNWATCH');
    },
  },
  {
    name: 'transactions',
    async run(t, c, helper) {
      await c.write('/tx/v', '1');
      const tx = await c.startTransaction();
      await helper.write('/tx/v', '2');
      t.equal(await c.readString('/tx/v', { tx }), '1', 'a snapshot');
      await c.write('/tx/w', 'x', { tx });
      t.equal(await errno(c.endTransaction(tx, true)), 'EAGAIN', 'a conflict');
      t.equal(await errno(helper.read('/tx/w')), 'ENOENT', 'nothing applied');
      let attempts = 0;
      await c.transaction(async (id) => {
        attempts++;
        const v = await c.readString('/tx/v', { tx: id });
        if (attempts === 1) await helper.write('/tx/v', '3');
        await c.write('/tx/v', `${v}+`, { tx: id });
      });
      t.equal(attempts, 2, 'the helper retried once');
      t.equal(await helper.readString('/tx/v'), '3+');
      t.equal(await errno(c.read('/tx/v', { tx: 4242 })), 'ENOENT', 'an unknown transaction');
    },
  },
  {
    name: 'domains, quotas and control',
    async run(t, c, _helper, env) {
      t.equal(await c.getDomainPath(12), '/local/domain/12');
      t.notOk(await c.isDomainIntroduced(12));
      await env.domain(12);
      t.ok(await c.isDomainIntroduced(12));
      t.equal(await c.getQuota('nodes'), '1000');
      await c.setQuota('watches', 50, 12);
      t.equal(await c.getQuota('watches', 12), '50');
      t.match(await c.control('quota'), /^Quota settings:\n/);
      t.equal(await c.control('check'), 'OK');
      t.equal(await errno(c.request(99, Buffer.from('\0'))), 'ENOSYS');
    },
  },
];

for (const transport of ['socket', 'ring'] as Transport[]) {
  for (const scenario of SCENARIOS) {
    t.test(`${scenario.name} over the ${transport}`, async (t) => {
      const env = await startDaemon();
      t.teardown(() => env.close());
      const client = transport === 'socket' ? await env.client() : await env.dom0Ring();
      const helper = await env.client();
      await scenario.run(t, client, helper, env);
    });
  }
}
