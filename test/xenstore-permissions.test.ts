/**
 * Xen's permission model, exercised by unprivileged domains connected over
 * (loopback) rings: owners, the `n r w b` entries for others, errors that
 * hide what a domain may not see, SET_TARGET, and DOMID_ANY.
 */
import t from 'tap';
import { errno, startDaemon } from './helpers/daemon.js';


t.test('a domain reaches only what its permissions allow', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const guest = await env.domain(5);

  await dom0.write('/secret/key', 'hidden');
  await dom0.write('/public/key', 'shown');
  await dom0.setPermissions('/public', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  await dom0.setPermissions('/public/key', [{ domid: 0, access: 'read' }]);

  t.equal(await errno(guest.read('/secret/key')), 'EACCES', 'n0 hides a node from others');
  t.equal(await errno(guest.read('/secret/missing')), 'EACCES', 'a missing node under a hidden one is EACCES, not ENOENT');
  t.equal(await errno(guest.directory('/secret')), 'EACCES');
  t.equal(await guest.readString('/public/key'), 'shown', 'the owner entry r0 lets everyone else read');
  t.equal(await errno(guest.read('/public/missing')), 'ENOENT', 'a missing node under a readable one is ENOENT');
  t.equal(await errno(guest.write('/public/key', 'x')), 'EACCES', 'read access is not write access');
  t.equal(await errno(guest.write('/public/new', 'x')), 'EACCES', 'creating needs write access to the parent');
  t.equal(await errno(guest.rm('/public/key')), 'EACCES');
  t.equal(await errno(guest.setPermissions('/public/key', [{ domid: 5, access: 'both' }])), 'EACCES', 'only the owner sets permissions');
  t.same(await guest.directory('/public'), ['key']);
  t.equal(await errno(guest.getPermissions('/secret/key')), 'EACCES');
});

t.test('a domain owns what it creates in its home', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const guest = await env.domain(5);
  // The layout libxl makes: a home the guest may only read, and a data directory it owns.
  await dom0.mkdir('/local/domain/5/data');
  await dom0.setPermissions('/local/domain/5', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  await dom0.setPermissions('/local/domain/5/data', [{ domid: 5, access: 'none' }]);

  await guest.write('data/value', 'mine');
  t.equal(await guest.readString('/local/domain/5/data/value'), 'mine', 'relative paths resolve under /local/domain/5');
  t.same(await guest.getPermissions('data/value'), [{ domid: 5, access: 'none' }], 'a new node takes its parent permissions');
  t.equal(await errno(guest.write('name', 'x')), 'EACCES', 'the home itself is read-only to it');
  t.equal(await errno(guest.rm('/local/domain/5')), 'EACCES');

  await dom0.write('/local/domain/5/data/from-dom0', 'x');
  t.same(await dom0.getPermissions('/local/domain/5/data/from-dom0'), [{ domid: 5, access: 'none' }], 'nodes dom0 creates there belong to the guest too');

  await dom0.mkdir('/shared');
  await dom0.setPermissions('/shared', [{ domid: 0, access: 'none' }, { domid: 5, access: 'both' }]);
  await guest.write('/shared/by-guest', 'v');
  t.same(await guest.getPermissions('/shared/by-guest'), [
    { domid: 5, access: 'none' },
    { domid: 5, access: 'both' },
  ], 'a node an unprivileged domain creates is owned by it, whatever its parent');

  await guest.setPermissions('data/value', [{ domid: 5, access: 'read' }, { domid: 7, access: 'write' }]);
  t.equal(await errno(guest.setPermissions('data/value', [{ domid: 0, access: 'read' }])), 'EPERM', 'only dom0 may change the owner');
  t.same(await dom0.getPermissions('/local/domain/5/data/value'), [
    { domid: 5, access: 'read' },
    { domid: 7, access: 'write' },
  ]);
  t.equal(await errno(guest.setPermissions('data/value', [{ domid: 5, access: 'read' }, { domid: 6, access: 'read' }])), 'OK', 'an entry for a domain that does not exist is accepted');
  t.same(await guest.getPermissions('data/value'), [{ domid: 5, access: 'read' }, { domid: 6, access: 'read' }], 'and reported, but ignored');
  env.build(6);
  await dom0.setPermissions('/local/domain/5/data/value', [{ domid: 6, access: 'none' }]);
  t.equal(await errno(guest.read('data/value')), 'EACCES', 'after dom0 gave the node away');
  await guest.rm('data/from-dom0');
  t.equal(await errno(dom0.read('/local/domain/5/data/from-dom0')), 'ENOENT', 'write access to a node lets its subtree be removed');
});

t.test("SET_TARGET: a device model acts with its guest's rights", async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const guest = await env.domain(5);
  const stub = await env.domain(6);
  await dom0.write('/local/domain/5/device-model', 'x');
  await dom0.setPermissions('/local/domain/5', [{ domid: 5, access: 'none' }]);
  await dom0.setPermissions('/local/domain/5/device-model', [{ domid: 5, access: 'none' }]);
  await dom0.write('/shared/for-guest', 'y');
  await dom0.setPermissions('/shared/for-guest', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);

  t.equal(await guest.readString('/local/domain/5/device-model'), 'x');
  t.equal(await errno(stub.read('/local/domain/5/device-model')), 'EACCES', 'before SET_TARGET');
  await dom0.setTarget(6, 5);
  t.equal(await stub.readString('/local/domain/5/device-model'), 'x', 'the target owner entry now matches');
  await stub.write('/local/domain/5/device-model', 'changed by stubdom');
  t.equal(await stub.readString('/shared/for-guest'), 'y', "and the target's entries elsewhere");
  await dom0.write('/secret', 'dom0 only');
  t.equal(await errno(stub.read('/secret')), 'EACCES', 'but nothing more than its target');
  t.equal(await errno(dom0.setTarget(6, 9)), 'ENOENT', 'the target must be introduced');
});

t.test('DOMID_ANY entries need the feature', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  env.build(8);
  await dom0.setFeature(8, 0);
  const plain = await env.domain(8);
  const any = await env.domain(9);
  t.equal(await dom0.getFeature(8), 0);
  t.equal(await dom0.getFeature(9), 15, 'reconnection, error indicator, watch depth and DOMID_ANY');
  await dom0.write('/anyone', 'open');
  await dom0.setPermissions('/anyone', [{ domid: 0, access: 'none' }, { domid: 0x7ff5, access: 'read' }]);
  t.equal(await any.readString('/anyone'), 'open', 'an entry for DOMID_ANY set by dom0 matches every domain');
  t.equal(await plain.readString('/anyone'), 'open');
  await any.mkdir('/local/domain/9').catch(() => {});
  await dom0.mkdir('/local/domain/8');
  await dom0.setPermissions('/local/domain/8', [{ domid: 8, access: 'none' }]);
  await plain.write('/local/domain/8/mine', 'z');
  await plain.setPermissions('/local/domain/8/mine', [{ domid: 8, access: 'none' }, { domid: 0x7ff5, access: 'read' }]);
  t.equal(await errno(any.read('/local/domain/8/mine')), 'EACCES', 'a domain without the feature cannot open a node to everyone');
  t.same(await dom0.getPermissions('/local/domain/8/mine'), [
    { domid: 8, access: 'none' },
    { domid: 0x7ff5, access: 'read' },
  ], 'the entry is kept, and reported, but grants nothing');
});

t.test('privileged requests are refused to domains', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const guest = await env.domain(5);
  t.equal(await errno(guest.introduce(6, 1, 2)), 'EACCES');
  t.equal(await errno(guest.release(5)), 'EACCES');
  t.equal(await errno(guest.resume(5)), 'EACCES');
  t.equal(await errno(guest.setTarget(5, 5)), 'EACCES');
  t.equal(await errno(guest.isDomainIntroduced(5)), 'EACCES');
  t.equal(await errno(guest.control('quota')), 'EACCES');
  t.equal(await errno(guest.getQuota()), 'EACCES');
  t.equal(await errno(guest.setQuota('nodes', 1)), 'EACCES');
  t.equal(await errno(guest.setFeature(5, 0)), 'EACCES');
  t.equal(await errno(guest.getFeature(0)), 'EACCES', 'another domain\'s features are privileged');
  t.equal(await guest.getFeature(), 15, 'its own features are not');
  t.equal(await guest.getDomainPath(5), '/local/domain/5');
});
