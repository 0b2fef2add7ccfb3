/**
 * The promise-based client every layer above uses.
 */
import t from 'tap';
import { isXsError } from '../shared/errors.js';
import { ConnectionClosedError, XenStoreClient } from '../xenstore/client/client.js';
import { startDaemon } from './helpers/daemon.js';

t.test('honours XENSTORED_PATH', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const saved = process.env['XENSTORED_PATH'];
  process.env['XENSTORED_PATH'] = env.socketPath;
  t.teardown(() => {
    if (saved === undefined) delete process.env['XENSTORED_PATH'];
    else process.env['XENSTORED_PATH'] = saved;
  });
  const client = await XenStoreClient.connect();
  t.teardown(() => client.close());
  await client.write('/env', 'found it');
  t.equal(await client.readString('/env'), 'found it');
});

t.test('concurrent requests are matched to their replies', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const client = await env.client();
  await Promise.all(Array.from({ length: 500 }, (_, i) => client.write(`/many/n${i}`, String(i))));
  const values = await Promise.all(Array.from({ length: 500 }, (_, i) => client.readString(`/many/n${i}`)));
  t.same(values, Array.from({ length: 500 }, (_, i) => String(i)));
  t.equal(await client.tryRead('/many/none'), undefined, 'tryRead gives undefined for a missing node');
  const refused = await client.write('/big', Buffer.alloc(5000)).catch((err: unknown) => err);
  t.ok(isXsError(refused, 'E2BIG'), 'a request over 4096 bytes is refused before it is sent');
  t.equal(await client.readString('/many/n1'), '1', 'and the connection is intact');
});

t.test('long directories come in parts', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const client = await env.client();
  const names = Array.from({ length: 400 }, (_, i) => `a-rather-long-child-name-${i}`);
  await Promise.all(names.map((name) => client.write(`/long/${name}`, '')));
  t.same(await client.directory('/long'), names, 'all children, in order, through DIRECTORY_PART');
  const tx = await client.startTransaction();
  await client.write('/long/in-tx', '', { tx });
  t.same((await client.directory('/long', { tx })).at(-1), 'in-tx', 'inside a transaction too');
  await client.endTransaction(tx, false);
});

t.test('watchers are async iterators', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const client = await env.client();
  const writer = await env.client();
  const watcher = await client.watch('/iter');
  const seen: string[] = [];
  const writes = (async () => {
    for (let i = 0; i < 3; i++) await writer.write(`/iter/n${i}`, 'x');
  })();
  for await (const event of watcher) {
    seen.push(event.path);
    if (seen.length === 4) break;
  }
  await writes;
  t.same(seen, ['/iter', '/iter/n0', '/iter/n1', '/iter/n2']);
  t.ok(isXsError(await client.request(5, Buffer.from(`/iter\0${watcher.token}\0`)).catch((e: unknown) => e), 'ENOENT'), 'leaving the loop removed the watch');

  const shared = await client.watch('/same', { token: 'mine' });
  t.ok(isXsError(await client.watch('/same', { token: 'mine' }).catch((e: unknown) => e), 'EEXIST'), 'a duplicate is refused');
  await shared.close();
});

t.test('a closed connection fails pending requests and ends watchers', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const client = await env.client();
  const watcher = await client.watch('/closing');
  await watcher.next();
  const pending = watcher.next();
  for (const conn of env.daemon.connections) conn.close();
  t.same(await pending, { value: undefined, done: true }, 'the watcher ends');
  const failed = await client.read('/x').catch((err: unknown) => err);
  t.ok(failed instanceof ConnectionClosedError, 'requests fail with ConnectionClosedError');
  t.ok(client.isClosed);
});
