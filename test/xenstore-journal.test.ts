/**
 * xenstored's journal: every commit recorded before its client is answered,
 * replayed after a crash into the same store; a torn last record dropped.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { captureLogs } from './helpers/logs.js';
import { XenStoreClient } from '../xenstore/client/client.js';
import { DetachedBackend } from '../xenstore/daemon/domain-backend.js';
import { Journal, JOURNAL_FILE, SNAPSHOT_FILE } from '../xenstore/daemon/journal.js';
import { frame, readFrames } from '../xenstore/daemon/record-file.js';
import { XenStoreSocketServer } from '../xenstore/daemon/socket-server.js';
import { XenStoreDaemon } from '../xenstore/daemon/xenstored.js';


interface Served {
  daemon: XenStoreDaemon;
  journal: Journal;
  client: XenStoreClient;
  /** Stops serving as a crash would: the journal's files stay as they are. */
  crash(): Promise<void>;
}

/** A daemon with no hypervisor behind it, journaling in `dir`, recovering what is there. */
async function serve(t: Test, dir: string, compactBytes?: number): Promise<Served> {
  const daemon = new XenStoreDaemon({ backend: new DetachedBackend() });
  const journal = new Journal(join(dir, 'journal'), { compactBytes });
  daemon.attachJournal(journal, journal.holdsState());
  const socket = join(dir, 'socket');
  const server = new XenStoreSocketServer(daemon, socket);
  await server.listen();
  const client = await XenStoreClient.connect(socket);
  let crashed = false;
  const crash = async () => {
    if (crashed) return;
    crashed = true;
    client.close();
    daemon.shutdown();
    journal.close();
    await server.close();
  };
  t.teardown(crash);
  return { daemon, journal, client, crash };
}

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-journal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * A store's whole content: every node with its value, permissions and
 * generation, usage and domains. The generation counter is not compared:
 * transactions that never commit advance it too, and a restarted daemon
 * need only go on from past every committed node's generation.
 */
function contents(daemon: XenStoreDaemon): unknown {
  const { roots } = daemon.store.exportTree();
  return structuredClone({ roots, usage: [...daemon.store.allUsage()], domains: daemon.domains.save() });
}

function maxGeneration(daemon: XenStoreDaemon): number {
  let max = 0;
  const visit = (node: { generation: number; children: readonly (readonly [string, unknown])[] }): void => {
    max = Math.max(max, node.generation);
    for (const [, child] of node.children) visit(child as never);
  };
  for (const [, node] of daemon.store.exportTree().roots) visit(node);
  return max;
}

/** Writes, directories, removals, permissions, a transaction, domains: one of each kind of commit. */
async function workload(xs: XenStoreClient): Promise<void> {
  await xs.write('/a/b/c', 'one');
  await xs.mkdir('/a/empty');
  await xs.write('/a/b/d', Buffer.from([0, 1, 2, 255]));
  await xs.setPermissions('/a/b', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  await xs.transaction(async (tx) => {
    await xs.write('/tx/x', 'in a transaction', { tx });
    await xs.rm('/a/b/c', { tx });
    await xs.write('/a/b/c', 'again', { tx });
    await xs.write('/a/b/c/deeper', 'new', { tx });
  });
  await xs.rm('/a/empty');
  await xs.introduce(5, 4096n, 7);
  await xs.setPermissions('@releaseDomain', [{ domid: 0, access: 'none' }, { domid: 5, access: 'read' }]);
  await xs.write('/local/domain/5/data/x', 'five');
}

t.test('a daemon recovers exactly the store its predecessor committed', async (t) => {
  const dir = tempDir(t);
  const first = await serve(t, dir);
  await workload(first.client);
  // A transaction aborted, one left open: neither is committed.
  const aborted = await first.client.startTransaction();
  await first.client.write('/aborted', 'no', { tx: aborted });
  await first.client.endTransaction(aborted, false);
  const open = await first.client.startTransaction();
  await first.client.write('/open', 'no', { tx: open });
  const before = contents(first.daemon);
  await first.crash();

  const second = await serve(t, dir);
  t.same(contents(second.daemon), before, 'the tree, generations, usage and domains are as they were');
  t.ok(second.daemon.store.currentGeneration >= maxGeneration(second.daemon), 'generations go on from past every committed one');
  t.equal(await second.client.readString('/a/b/c/deeper'), 'new');
  t.same(await second.client.read('/a/b/d'), Buffer.from([0, 1, 2, 255]), 'binary values survive');
  t.ok(await second.client.isDomainIntroduced(5), 'the introduced domain is known');
  t.notOk((await second.client.tryRead('/aborted')) !== undefined, 'an aborted transaction left nothing');
  t.notOk((await second.client.tryRead('/open')) !== undefined, 'a transaction still open left nothing');
  t.same(await second.client.directory('/a'), ['b'], 'the removed directory stays removed');
  // Its successor recovers its own commits too.
  await second.client.write('/after', 'x');
  const again = contents(second.daemon);
  await second.crash();
  const third = await serve(t, dir);
  t.same(contents(third.daemon), again, 'and so on, restart after restart');
});

t.test('compaction into a snapshot keeps everything', async (t) => {
  const dir = tempDir(t);
  const first = await serve(t, dir, 2048);
  for (let i = 0; i < 200; i++) await first.client.write(`/many/n${i % 37}`, `value ${i}`);
  await workload(first.client);
  t.ok(statSync(join(dir, 'journal', JOURNAL_FILE)).size < 4096, 'the journal was compacted as it grew');
  const before = contents(first.daemon);
  await first.crash();
  const second = await serve(t, dir, 2048);
  t.same(contents(second.daemon), before);
});

t.test('a torn or corrupted last record is dropped whole, with a log line', async (t) => {
  for (const damage of ['truncated', 'corrupted', 'header only'] as const) {
    await t.test(damage, async (t) => {
      const logs = captureLogs(t);
      const dir = tempDir(t);
      const first = await serve(t, dir);
      await workload(first.client);
      const before = contents(first.daemon);
      await first.client.write('/last', 'the record that is torn');
      await first.crash();
      const file = join(dir, 'journal', JOURNAL_FILE);
      const bytes = readFileSync(file);
      const { payloads } = readFrames(bytes);
      const lastLength = payloads.at(-1)!.length + 8;
      if (damage === 'truncated') truncateSync(file, bytes.length - 3);
      else if (damage === 'header only') truncateSync(file, bytes.length - lastLength + 5);
      else {
        const flipped = Buffer.from(bytes);
        flipped[flipped.length - 2]! ^= 0xff;
        writeFileSync(file, flipped);
      }
      const second = await serve(t, dir);
      t.same(contents(second.daemon), before, 'the store is as before the torn commit');
      t.notOk((await second.client.tryRead('/last')) !== undefined);
      t.ok(logs.some((line) => /journal .* dropped its torn tail/.test(line)), 'the drop is logged');
    });
  }
});

t.test('records after a corrupted one are not applied', async (t) => {
  const dir = tempDir(t);
  const first = await serve(t, dir);
  await first.client.write('/one', '1');
  const before = contents(first.daemon);
  await first.client.write('/two', '2');
  await first.client.write('/three', '3');
  await first.crash();
  const file = join(dir, 'journal', JOURNAL_FILE);
  const bytes = Buffer.from(readFileSync(file));
  const { payloads } = readFrames(bytes);
  // Corrupt the record of /two: /three, whole and intact, must not be applied without it.
  const offset = payloads.slice(0, -2).reduce((n, p) => n + p.length + 8, 0);
  bytes[offset + 8]! ^= 0xff;
  writeFileSync(file, bytes);
  const second = await serve(t, dir);
  t.same(contents(second.daemon), before);
});

t.test('a snapshot of another format or version is refused, not half read', async (t) => {
  const dir = tempDir(t);
  const first = await serve(t, dir);
  await first.client.write('/x', '1');
  await first.crash();
  const snapshotFile = join(dir, 'journal', SNAPSHOT_FILE);
  const original = readFileSync(snapshotFile);
  // The snapshot is a xenstore migration stream: its version is in its preamble.
  const stream = Buffer.from(readFrames(original).payloads[0]!);
  t.equal(stream.toString('latin1', 0, 8), 'xenstore', 'the snapshot is a xenstore migration stream');
  stream.writeUInt32BE(99, 8);
  writeFileSync(snapshotFile, frame(stream));
  const daemon = new XenStoreDaemon({ backend: new DetachedBackend() });
  t.teardown(() => daemon.shutdown());
  const journal = new Journal(join(dir, 'journal'));
  t.throws(() => daemon.attachJournal(journal, true), /version 99 is not supported \(this xenstored reads version 1\): refusing to start from it/);
  writeFileSync(snapshotFile, original.subarray(0, original.length - 1));
  t.throws(() => daemon.attachJournal(journal, true), /is damaged .*refusing to start/);
});

t.test('the journal directory: next to the socket unless told, or none', async (t) => {
  const { parseXenstoredOptions } = await import('../xenstore/daemon/options.js');
  const { defaultSocketPath } = await import('../shared/default-paths.js');
  t.equal(parseXenstoredOptions([]).journalDir, `${defaultSocketPath()}.journal`, 'the default, next to the default socket');
  t.equal(parseXenstoredOptions([]).socket, defaultSocketPath(), 'which is defaultSocketPath()');
  t.equal(parseXenstoredOptions(['--socket', '/tmp/s']).journalDir, '/tmp/s.journal', 'next to the socket given');
  t.equal(parseXenstoredOptions(['--journal-dir', '/tmp/j', '--socket', '/tmp/s']).journalDir, '/tmp/j');
  t.equal(parseXenstoredOptions(['--journal-dir=/tmp/j']).journalDir, '/tmp/j');
  t.equal(parseXenstoredOptions(['--no-journal']).journalDir, undefined, '--no-journal keeps none');
});
