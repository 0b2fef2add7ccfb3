/**
 * Transactions: a snapshot of the whole store, all-or-nothing commits, and
 * EAGAIN exactly when a node the transaction looked at changed since.
 */
import t from 'tap';
import { errno, startDaemon } from './helpers/daemon.js';


t.test('reads see the store as it was when the transaction started', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const a = await env.client();
  const b = await env.client();
  await a.write('/snap/x', 'old');
  await a.write('/snap/y', 'old');
  const tx = await a.startTransaction();
  await b.write('/snap/x', 'new');
  await b.write('/snap/z', 'created later');
  await b.rm('/snap/y');
  t.equal(await a.readString('/snap/x', { tx }), 'old', 'a change made after the start is not seen');
  t.equal(await a.readString('/snap/y', { tx }), 'old', 'nor a removal');
  t.equal(await errno(a.read('/snap/z', { tx })), 'ENOENT', 'nor a creation');
  t.same(await a.directory('/snap', { tx }), ['x', 'y']);
  t.equal(await a.readString('/snap/x'), 'new', 'outside the transaction the store has moved on');
  t.equal(await errno(a.endTransaction(tx, true)), 'EAGAIN', 'what it read is stale, so the commit fails');
  t.equal(await errno(a.endTransaction(tx, true)), 'ENOENT', 'and the transaction is gone either way');
});

t.test('conflicts are only about nodes the transaction looked at', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const a = await env.client();
  const b = await env.client();
  await a.write('/c/read', '1');
  await a.write('/c/other', '1');
  const tx = await a.startTransaction();
  await a.read('/c/read', { tx });
  await a.write('/c/written', 'from tx', { tx });
  await b.write('/c/other', '2');
  await b.write('/elsewhere/deep/node', 'x');
  await a.endTransaction(tx, true);
  t.equal(await b.readString('/c/written'), 'from tx', 'unrelated changes do not conflict');
  t.equal(await b.readString('/c/other'), '2', 'and are kept');
  t.equal(await b.readString('/elsewhere/deep/node'), 'x');

  const tx1 = await a.startTransaction();
  await a.write('/c/another', 'from tx', { tx: tx1 });
  await b.write('/c/sibling-created-meanwhile', 'x');
  t.equal(await errno(a.endTransaction(tx1, true)), 'EAGAIN', 'a new sibling changes the parent the transaction added a child to');

  const tx2 = await a.startTransaction();
  await a.write('/c/new-in-tx', 'mine', { tx: tx2 });
  await b.write('/c/new-in-tx', 'theirs');
  t.equal(await errno(a.endTransaction(tx2, true)), 'EAGAIN', 'creating a node someone else created meanwhile conflicts');
  t.equal(await b.readString('/c/new-in-tx'), 'theirs');

  const tx3 = await a.startTransaction();
  await a.read('/c/read', { tx: tx3 });
  await b.rm('/c/read');
  t.equal(await errno(a.endTransaction(tx3, true)), 'EAGAIN', 'a removal of what it read conflicts');
});

t.test('commits are all or nothing', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const a = await env.client();
  const b = await env.client();
  await a.write('/atomic/keep', 'k');
  await a.write('/atomic/gone/child', 'c');
  const tx = await a.startTransaction();
  for (let i = 0; i < 50; i++) await a.write(`/atomic/new/n${i}`, String(i), { tx });
  await a.rm('/atomic/gone', { tx });
  await a.setPermissions('/atomic/keep', [{ domid: 0, access: 'read' }], { tx });
  t.equal(await errno(b.read('/atomic/new/n0')), 'ENOENT', 'nothing is visible before the commit');
  t.equal(await b.readString('/atomic/gone/child'), 'c');
  await a.endTransaction(tx, true);
  t.equal((await b.directory('/atomic/new')).length, 50, 'everything is visible after it');
  t.equal(await errno(b.read('/atomic/gone')), 'ENOENT');
  t.same(await b.getPermissions('/atomic/keep'), [{ domid: 0, access: 'read' }]);

  const failing = await a.startTransaction();
  await a.read('/atomic/keep', { tx: failing });
  for (let i = 0; i < 20; i++) await a.write(`/atomic/never/n${i}`, 'x', { tx: failing });
  await a.rm('/atomic/new', { tx: failing });
  await b.write('/atomic/keep', 'changed');
  t.equal(await errno(a.endTransaction(failing, true)), 'EAGAIN');
  t.equal(await errno(b.read('/atomic/never')), 'ENOENT', 'a failed commit applies nothing');
  t.equal((await b.directory('/atomic/new')).length, 50);
  t.same(JSON.stringify(env.daemon.checkStore()), '[]', 'the accounting still matches the tree');
});

t.test('the transaction helper retries on conflict, with a bound', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const a = await env.client();
  const b = await env.client();
  await a.write('/counter', '0');
  let attempts = 0;
  await a.transaction(async (tx) => {
    attempts++;
    const value = Number(await a.readString('/counter', { tx }));
    if (attempts < 3) await b.write('/counter', String(value + 100));
    await a.write('/counter', String(value + 1), { tx });
  });
  t.equal(attempts, 3, 'ran again after each conflict');
  t.equal(await a.readString('/counter'), '201', 'the last attempt saw the latest value');

  let tries = 0;
  const outcome = await errno(
    a.transaction(async (tx) => {
      tries++;
      await a.read('/counter', { tx });
      await b.write('/counter', String(tries));
    }, 4),
  );
  t.equal(outcome, 'EAGAIN', 'gives up with EAGAIN');
  t.equal(tries, 4, 'after the bound');

  const thrown = await a
    .transaction(async (tx) => {
      await a.write('/aborted', 'x', { tx });
      throw new Error('body failed');
    })
    .catch((err: Error) => err.message);
  t.equal(thrown, 'body failed', 'an error in the body aborts and passes through');
  t.equal(await errno(a.read('/aborted')), 'ENOENT');
});

t.test('concurrent read-modify-write loses no update', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const clients = await Promise.all(Array.from({ length: 8 }, () => env.client()));
  await clients[0]!.write('/shared-counter', '0');
  await Promise.all(
    clients.map(async (client) => {
      for (let i = 0; i < 25; i++) {
        await client.transaction(async (tx) => {
          const value = Number(await client.readString('/shared-counter', { tx }));
          await client.write('/shared-counter', String(value + 1), { tx });
        }, 1000);
      }
    }),
  );
  t.equal(await clients[0]!.readString('/shared-counter'), '200', '8 clients x 25 increments');
});

t.test('RESET_WATCHES inside a transaction ends it cleanly', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const a = await env.client();
  const tx = await a.startTransaction();
  await a.write('/reset/x', '1', { tx });
  const watcher = await a.watch('/reset');
  await a.request(21, Buffer.from('\0'), tx);
  t.equal(await errno(a.endTransaction(tx, true)), 'ENOENT', 'the transaction is gone');
  t.equal(await errno(a.read('/reset/x')), 'ENOENT', 'and nothing of it was applied');
  await a.write('/reset', 'after');
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.equal(watcher.pendingEvents, 1, 'only the first event: the watch went too');
  t.equal(await a.readString('/reset'), 'after', 'the connection keeps working');
});

t.test('transactions of an unprivileged domain', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  await guest.transaction(async (tx) => {
    await guest.write('data/a', '1', { tx });
    await guest.write('data/b', '2', { tx });
    t.equal(await errno(guest.read('/tool', { tx })), 'EACCES', 'permissions apply inside transactions');
  });
  t.same(await guest.directory('data'), ['a', 'b']);
  t.equal(env.daemon.store.usageOf(5).nodes, 3, 'the committed nodes count for the domain');
});
