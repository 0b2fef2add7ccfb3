/**
 * Hostile clients and the xenstored security advisories. Each case gets the
 * protocol's error or is cut off, affects that client alone, and the daemon
 * goes on serving everyone else.
 *
 * Bad inputs tried here: a payload length over 4096 (with and without the
 * payload), a header cut short, a megabyte of random bytes, a flood of
 * requests from a client that never reads, a watch whose events would be
 * over-long, a domain that never reads its ring, a domain flooding another's
 * watch queue, a transaction touching too many nodes, a dead domain's id
 * reused, and racing removals of a domain's nodes.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { XsType, encodeMessage, nulStrings } from '../shared/xs-wire.js';
import { OUTPUT_BACKLOG_LIMIT, OUTPUT_HARD_LIMIT } from '../xenstore/daemon/xenstored.js';
import { errno, startDaemon, waitFor, type RunningDaemon } from './helpers/daemon.js';
import { RawConnection } from './helpers/raw.js';


/** The daemon still answers a fresh client correctly. */
async function stillServes(t: Test, env: RunningDaemon, what: string): Promise<void> {
  const probe = await env.client();
  await probe.write('/probe', what);
  t.equal(await probe.readString('/probe'), what, `the daemon still serves others after ${what}`);
  probe.close();
}

t.test('a payload over 4096 bytes disconnects that client only', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const bystander = await env.client();
  await bystander.write('/kept', 'acknowledged');

  const withPayload = await RawConnection.connect(env.socketPath);
  withPayload.sendBytes(encodeMessage(XsType.WRITE, 1, 0, Buffer.alloc(4097, 0x61)));
  await withPayload.closed;
  t.pass('a 4097-byte payload: disconnected');

  const headerOnly = await RawConnection.connect(env.socketPath);
  const header = Buffer.alloc(16);
  header.writeUInt32LE(XsType.READ, 0);
  header.writeUInt32LE(0xffffffff, 12);
  headerOnly.sendBytes(header);
  await headerOnly.closed;
  t.pass('a header announcing 4 GiB: disconnected at once');

  const exact = await RawConnection.connect(env.socketPath);
  const value = Buffer.alloc(4096 - '/exact\0'.length, 0x62);
  const reply = await exact.call(XsType.WRITE, Buffer.concat([nulStrings('/exact'), value]));
  t.equal(reply.text, 'OK\0', 'exactly 4096 bytes is fine');
  exact.close();

  t.equal(await bystander.readString('/kept'), 'acknowledged', 'other clients and their data are untouched');
  await stillServes(t, env, 'oversized payloads');
});

t.test('a header cut short, and random bytes', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const partial = await RawConnection.connect(env.socketPath);
  partial.sendBytes(Buffer.from([2, 0, 0, 0, 9, 0]));
  await new Promise((resolve) => setTimeout(resolve, 50));
  partial.close();
  await stillServes(t, env, 'a partial header');

  for (let round = 0; round < 5; round++) {
    const noisy = await RawConnection.connect(env.socketPath);
    noisy.sendBytes(randomBytes(256 * 1024));
    await Promise.race([noisy.closed, new Promise((resolve) => setTimeout(resolve, 300))]);
    noisy.close();
  }
  await stillServes(t, env, 'random bytes');
});

t.test('XSA-325: a flood from a client that never reads its replies', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const flood = await RawConnection.connect(env.socketPath);
  flood.socket.pause();
  const requests = 60_000;
  const frames: Buffer[] = [];
  for (let i = 1; i <= requests; i++) frames.push(encodeMessage(XsType.GET_DOMAIN_PATH, i, 0, nulStrings('12345')));
  flood.sendBytes(Buffer.concat(frames));
  await new Promise((resolve) => setTimeout(resolve, 500));
  const conn = [...env.daemon.connections].find((c) => c.transport.label.startsWith('socket') && c.queuedBytes > 0);
  t.ok(conn, 'the daemon holds replies for the client');
  t.ok(conn!.queuedBytes <= OUTPUT_BACKLOG_LIMIT + 4200, `it stops serving it at the backlog limit (${conn!.queuedBytes} bytes queued)`);
  await stillServes(t, env, 'a flood');

  flood.socket.resume();
  let last = 0;
  let inOrder = true;
  for (let i = 1; i <= requests; i++) {
    const msg = await flood.next(10_000);
    if (msg.reqId !== last + 1) inOrder = false;
    last = msg.reqId;
  }
  t.ok(inOrder, 'once it reads, every reply arrives, in order');
  t.equal(last, requests);
  flood.close();
});

t.test('XSA-326: a privileged watcher that never reads is cut off, not fed forever', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const watcher = await RawConnection.connect(env.socketPath);
  const token = 't'.repeat(2000);
  t.equal((await watcher.call(XsType.WATCH, nulStrings('/flood', token))).text, 'OK\0');
  const watching = [...env.daemon.connections][0]!;
  watcher.socket.pause();
  const writer = await RawConnection.connect(env.socketPath);
  const writes = Math.ceil(OUTPUT_HARD_LIMIT / 2000) + 2000;
  const frames: Buffer[] = [];
  for (let i = 0; i < writes; i++) frames.push(encodeMessage(XsType.WRITE, i + 1, 0, Buffer.from(`/flood/n${i}\0x`)));
  writer.sendBytes(Buffer.concat(frames));
  let replies = 0;
  while (replies < writes) {
    const msg = await writer.next(20_000);
    if (msg.type === XsType.WRITE) replies++;
  }
  t.equal(replies, writes, 'the writer was served throughout');
  t.ok(watching.closed, `the watcher was disconnected once over ${OUTPUT_HARD_LIMIT} bytes of unread events`);
  watcher.socket.resume();
  await watcher.closed;
  writer.close();
  await stillServes(t, env, 'an unread event flood');
});

t.test('XSA-323: path length limits', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  // 2048 bytes, in components short enough to stay within node-size.
  const relative = `data${`/${'y'.repeat(99)}`.repeat(20)}/${'z'.repeat(43)}`;
  t.equal(relative.length, 2048);
  await guest.write(relative, 'x');
  t.pass('a relative path of 2048 bytes is accepted');
  t.equal(await errno(guest.write(`${relative}r`, 'x')), 'EINVAL', 'one more byte is EINVAL');
  t.equal(await errno(guest.write(`/local/domain/5/${relative}r`, 'x')), 'EINVAL', 'the same path given absolute');
  t.equal(await errno(dom0.write(`/${'a'.repeat(2048)}`, 'x')), 'EINVAL', 'dom0 too: over 2048 outside a domain home');
  t.equal(await errno(dom0.read(`/local/domain/5/${'a'.repeat(3060)}`)), 'EINVAL', 'and never over 3072');
  t.equal(await errno(guest.watch(`/${'w'.repeat(2100)}`)), 'EINVAL', 'watches on over-long paths too');
  await stillServes(t, env, 'over-long paths');
});

t.test('XSA-324: watch events too long to send are dropped, not fatal', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const watcher = await RawConnection.connect(env.socketPath);
  const path = `/${'w'.repeat(2000)}`;
  const token = 't'.repeat(2090);
  const reply = await watcher.call(XsType.WATCH, nulStrings(path, token));
  t.equal(reply.text, 'OK\0');
  const first = await watcher.next();
  t.equal(first.type, XsType.WATCH_EVENT, 'the first event fits');
  const writer = await env.client();
  await writer.write(`${path}/${'c'.repeat(20)}`, 'x');
  await writer.write(path, 'fits');
  const event = await watcher.next();
  t.equal(event.payload.toString('latin1'), `${path}\0${token}\0`, 'the over-long event was skipped, the next one arrives');
  await stillServes(t, env, 'an over-long watch event');
});

t.test('XSA-325, XSA-326: a domain that never reads its ring holds only its own memory', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  await env.makeDataDirectory(5);
  await dom0.setQuota('memory', 64 * 1024, 5);
  const guest = await env.domain(5);
  await guest.watch('data');
  env.ringOf(5).stopReading();
  for (let i = 0; i < 400; i++) await dom0.write(`/local/domain/5/data/n${i}`, 'x'.repeat(100));
  const domain = env.daemon.domains.find(5)!;
  const held = env.connectionOf(5).queuedBytes;
  t.ok(held <= 64 * 1024, `queued watch events stay within its memory quota (${held} bytes)`);
  t.ok(env.daemon.domains.memoryOf(domain) <= 64 * 1024 + 400 * 200, 'its nodes count too, nothing unbounded');
  await stillServes(t, env, 'a domain ignoring its ring');
});

t.test('XSA-416: nothing a request allocates outlives it', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  await env.makeDataDirectory(5);
  const guest = await env.domain(5);
  const domain = env.daemon.domains.find(5)!;
  const connection = env.connectionOf(5);
  for (let round = 0; round < 200; round++) {
    await guest.write(`data/n${round % 20}`, 'x'.repeat(round % 100));
    await errno(guest.read('/tool/xenstored'));
    await errno(guest.read(`data/missing${round}`));
    await errno(guest.request(2, Buffer.from('not terminated')));
    const watcher = await guest.watch(`data/n${round % 20}`);
    await watcher.close();
    const tx = await guest.startTransaction();
    await guest.write(`data/t${round % 5}`, 'y', { tx });
    if (round % 3 === 0) await dom0.write(`/local/domain/5/data/t${round % 5}`, 'conflict');
    await errno(guest.endTransaction(tx, round % 2 === 0));
    await errno(guest.rm(`data/n${(round + 7) % 20}`));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.equal(connection.queuedBytes, 0, 'no output waits');
  t.equal(domain.connectionMemory, 0, 'no memory is charged to the connection any more');
  t.same(domain.counts, { watches: 0, outstanding: 0, transactions: 0 }, 'no watch, request or transaction is left accounted');
  t.equal(connection.transactions.size, 0);
  t.equal(connection.watches.size, 0);
  t.same(env.daemon.checkStore(), [], 'node accounting matches the tree');
});

t.test("XSA-326: flooding another domain's watch queue stalls the flooder", async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const flooder = await env.domain(5);
  const victim = await env.domain(6);
  await dom0.mkdir('/shared');
  await dom0.setPermissions('/shared', [{ domid: 0, access: 'none' }, { domid: 5, access: 'both' }, { domid: 6, access: 'read' }]);
  await victim.watch('/shared');
  env.ringOf(6).stopReading();
  const writes = Array.from({ length: 100 }, (_, i) => flooder.write(`/shared/n${i % 5}`, String(i)));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const flooderRecord = env.daemon.domains.find(5)!;
  t.ok(flooderRecord.counts.outstanding <= 20, `the flooder has at most 20 requests outstanding (${flooderRecord.counts.outstanding})`);
  await stillServes(t, env, 'a watch flood');
  env.ringOf(6).startReading();
  await Promise.all(writes);
  t.pass('the flooder completes once the victim reads');
});

t.test('XSA-326: a huge transaction is refused and costs nothing after', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  await env.makeDataDirectory(5);
  await dom0.setQuota('nodes', 5000, 5);
  const guest = await env.domain(5);
  const tx = await guest.startTransaction();
  let outcome = 'OK';
  let i = 0;
  for (; i < 1100 && outcome === 'OK'; i++) outcome = await errno(guest.write(`data/n${i}`, 'x', { tx }));
  t.equal(outcome, 'ENOSPC', `refused after ${i - 1} nodes (transaction-nodes is 1024)`);
  await guest.endTransaction(tx, false);
  const domain = env.daemon.domains.find(5)!;
  t.equal(domain.connectionMemory, env.connectionOf(5).queuedBytes, 'the aborted copies are released');
  t.equal(domain.counts.transactions, 0);
});

t.test('XSA-322: a new domain with a dead one\'s id inherits nothing', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const first = await env.domain(7);
  await dom0.write('/private/for-7', 'secret');
  await dom0.setPermissions('/private/for-7', [{ domid: 0, access: 'none' }, { domid: 7, access: 'read' }]);
  t.equal(await first.readString('/private/for-7'), 'secret', 'the domain it was meant for can read');
  await dom0.release(7);
  t.same(await dom0.getPermissions('/private/for-7'), [{ domid: 0, access: 'none' }], 'its entry is gone once it is released');

  await dom0.setPermissions('/private/for-7', [{ domid: 0, access: 'none' }, { domid: 7, access: 'read' }]);
  env.platform.destroyDomain(7);
  await waitFor(() => env.daemon.domains.find(7) === undefined, 'the daemon to forget domain 7');
  await dom0.write('/private/set-while-dead', 'x');
  await dom0.setPermissions('/private/set-while-dead', [{ domid: 0, access: 'none' }, { domid: 7, access: 'read' }]);
  const reused = await env.domain(7);
  t.equal(await errno(reused.read('/private/for-7')), 'EACCES', 'an entry from before it existed does not apply');
  t.equal(await errno(reused.read('/private/set-while-dead')), 'EACCES', 'nor one set while no domain 7 existed');
  await dom0.setPermissions('/private/for-7', [{ domid: 0, access: 'none' }, { domid: 7, access: 'read' }]);
  t.equal(await reused.readString('/private/for-7'), 'secret', 'an entry set for the new domain does');
});

t.test('XSA-419, XSA-483: a destroyed domain leaves nothing behind', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  await env.makeDataDirectory(5);
  await dom0.mkdir('/shared');
  await dom0.setPermissions('/shared', [{ domid: 0, access: 'none' }, { domid: 5, access: 'both' }]);
  const guest = await env.domain(5);
  for (let i = 0; i < 30; i++) await guest.write(`data/n${i}`, 'x'.repeat(50));
  await guest.write('/shared/by-5/deep', 'x');
  await guest.watch('data');
  const tx = await guest.startTransaction();
  await guest.write('data/in-tx', 'x', { tx });
  const released = await dom0.watch('@releaseDomain');
  await released.next();
  t.ok(env.daemon.store.usageOf(5).nodes > 30);

  env.platform.destroyDomain(5);
  t.same((await released.next()).value, { path: '@releaseDomain', token: released.token }, '@releaseDomain fires');
  t.same(await dom0.directory('/local/domain/5'), [], 'its nodes are deleted');
  t.equal(await errno(dom0.read('/shared/by-5')), 'ENOENT', 'wherever they were');
  t.same(env.daemon.store.usageOf(5), { nodes: 0, memory: 0 }, 'its node quota usage is released');
  t.equal(env.daemon.domains.find(5), undefined, 'and its record, watches and transactions with it');
  t.same(await dom0.getPermissions('/shared'), [{ domid: 0, access: 'none' }], 'its entries on others\' nodes are dropped');
  t.same(env.daemon.checkStore(), [], 'the accounting matches the tree');
  t.notOk(await dom0.isDomainIntroduced(5));
});

t.test('accounting never goes negative under racing removals', async (t) => {
  const env = await startDaemon();
  t.teardown(() => env.close());
  const dom0 = await env.client();
  const other = await env.client();
  await env.makeDataDirectory(5);
  env.build(6);
  const guest = await env.domain(5);
  for (let round = 0; round < 20; round++) {
    await guest.write(`data/r${round}/x`, '1');
    const tx = await dom0.startTransaction();
    await dom0.rm(`/local/domain/5/data/r${round}`, { tx });
    await dom0.setPermissions('/local/domain/5/data', [{ domid: round % 2 ? 5 : 6, access: 'none' }, { domid: 5, access: 'both' }], { tx });
    if (round % 2) await other.rm(`/local/domain/5/data/r${round}`);
    await dom0.endTransaction(tx, true).catch(() => {});
  }
  for (const [domid, usage] of env.daemon.store.allUsage()) {
    t.ok(usage.nodes >= 0 && usage.memory >= 0, `domain ${domid} usage is not negative`);
  }
  t.same(env.daemon.checkStore(), [], 'the accounting matches the tree');
});
