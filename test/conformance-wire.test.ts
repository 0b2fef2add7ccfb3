/**
 * Raw protocol requests, well-formed and malformed, sent to our daemon and
 * to Xen's own C xenstored (Debian's, under a stand-in hypervisor): the
 * replies must be the same, byte for byte, except where noted.
 *
 * Bad inputs tried here: payloads without a NUL, with extra strings, empty
 * (a lookup of such a payload finds no node, as in Xen 4.17);
 * paths with bad characters, trailing or doubled slashes, empty, over the
 * length limits; unknown and reserved message types; unknown transaction ids;
 * nested TRANSACTION_START; TRANSACTION_END with a bad argument or none;
 * SET_PERMS with no entries, bad letters, bad domain ids; GET_PERMS and
 * SET_PERMS of `@` names that are no special node; WATCH and UNWATCH
 * with the wrong number of arguments; WATCH with a depth that is not a
 * number; INTRODUCE, RELEASE with bad domain ids and ports; DIRECTORY_PART
 * without an offset.
 */
import t, { type Test } from 'tap';
import { XsType, nulStrings, xsTypeName } from '../shared/xs-wire.js';
import { startDaemon } from './helpers/daemon.js';
import { RawConnection } from './helpers/raw.js';
import { startReferenceXenstored } from './helpers/reference-xenstored.js';

/**
 * A request, and when our reply deliberately differs from Xen 4.17's, what
 * ours is and why.
 */
type Request = [type: number, payload: Buffer | string, txId?: number, differs?: { ours: string; why: string }];

/**
 * MKDIR and RM with a payload that is not one string: Xen 4.17's xenstored
 * finds no node, then no name to create or remove, and says ENOMEM, which
 * would send a client looking for a memory shortage that is not there.
 */
const MALFORMED_CHANGE = { ours: 'ERROR "EINVAL\\u0000"', why: 'a malformed payload is EINVAL (Xen 4.17 says ENOMEM)' };

const S = (...parts: string[]) => nulStrings(...parts);

/** Runs the same requests over one connection to each daemon and compares every reply. */
async function compare(t: Test, requests: Request[], label: string): Promise<string[]> {
  const ours = await startDaemon({ detached: true });
  const theirs = await startReferenceXenstored();
  t.teardown(async () => {
    await ours.close();
    await theirs.close();
  });
  const a = await RawConnection.connect(ours.socketPath);
  const b = await RawConnection.connect(theirs.socketPath);
  t.teardown(() => {
    a.close();
    b.close();
  });
  const replies: string[] = [];
  for (const [type, payload, txId = 0, differs] of requests) {
    const mine = await a.call(type, payload, txId);
    const reference = await b.call(type, payload, txId);
    const show = (r: { type: number; text: string }) => {
      // DIRECTORY_PART starts with the node's generation count, which is the daemon's own.
      const text = r.type === XsType.DIRECTORY_PART ? r.text.replace(/^\d+\0/, '<gen>\0') : r.text;
      return `${xsTypeName(r.type)} ${JSON.stringify(text)}`;
    };
    const request = `${label}: ${xsTypeName(type)} ${JSON.stringify(typeof payload === 'string' ? payload : payload.toString('latin1'))} tx ${txId}`;
    if (mine.msg.txId !== txId || reference.msg.txId !== txId) {
      t.fail(`${request}: the reply echoes tx_id ${txId} (ours ${mine.msg.txId}, Xen's ${reference.msg.txId})`);
    }
    if (differs) {
      t.equal(show(mine), differs.ours, `${request}: ${differs.why}`);
      t.not(show(reference), differs.ours, `${request}: Xen 4.17 differs`);
    } else {
      t.equal(show(mine), show(reference), request);
    }
    replies.push(show(mine));
  }
  return replies;
}

const LONG = 'a'.repeat(2047);

t.test('reads, writes and directories', async (t) => {
  const replies = await compare(
    t,
    [
      [XsType.WRITE, Buffer.concat([S('/data/bin'), Buffer.from([0, 1, 2, 0, 255])])],
      [XsType.READ, S('/data/bin')],
      [XsType.WRITE, S('/data/empty')],
      [XsType.WRITE, '/data/no-nul'],
      [XsType.READ, S('/data/empty')],
      [XsType.READ, S('/data/missing')],
      [XsType.READ, S('/data/missing/deeper')],
      [XsType.READ, '/data/bin'],
      [XsType.READ, S('/data/bin', 'extra')],
      [XsType.READ, ''],
      [XsType.READ, S('')],
      [XsType.READ, S('/data/bin/')],
      [XsType.READ, S('/data//bin')],
      [XsType.READ, S('/data/b in')],
      [XsType.READ, S('/data/b!n')],
      [XsType.READ, S('/data/b\x01n')],
      [XsType.READ, S('@introduceDomain')],
      [XsType.READ, S('/')],
      [XsType.MKDIR, S('/data/dir/sub')],
      [XsType.MKDIR, S('/data/dir/sub')],
      [XsType.MKDIR, S('/data/bin')],
      [XsType.READ, S('/data/bin')],
      [XsType.MKDIR, S('@foo')],
      [XsType.DIRECTORY, S('/data')],
      [XsType.DIRECTORY, S('/data/missing')],
      [XsType.DIRECTORY, S('/data', 'x')],
      [XsType.DIRECTORY, '/data'],
      [XsType.MKDIR, '/data/dir/other', 0, MALFORMED_CHANGE],
      [XsType.RM, '/data/dir/sub', 0, MALFORMED_CHANGE],
      [XsType.DIRECTORY, S('/')],
      [XsType.WRITE, S(`/${LONG}`)],
      [XsType.WRITE, S(`/${LONG}x`)],
      [XsType.WRITE, S(`/local/domain/0/${LONG}x`)],
      [XsType.WRITE, S(`${LONG}x`)],
      [XsType.WRITE, S(`${LONG}xx`)],
      [XsType.READ, S(`/${'b'.repeat(3072)}`)],
      [XsType.RM, S(`/${LONG}`)],
      [XsType.RM, S('/local')],
    ],
    'nodes',
  );
  t.equal(replies[1], 'READ "\\u0000\\u0001\\u0002\\u0000ÿ"', 'values are binary, NULs included');
  t.equal(replies[3], 'ERROR "EINVAL\\u0000"', 'WRITE without a NUL after the path is EINVAL');
  t.equal(replies[7], 'ERROR "ENOENT\\u0000"', 'READ without its NUL finds no node, as in Xen 4.17');
  t.equal(replies[12], 'ERROR "EINVAL\\u0000"', 'a doubled slash is EINVAL');
});

t.test('removal', async (t) => {
  await compare(
    t,
    [
      [XsType.WRITE, S('/r/a/b', 'x')],
      [XsType.RM, S('/r/a/missing')],
      [XsType.RM, S('/r/missing/deeper')],
      [XsType.RM, S('/r/a')],
      [XsType.DIRECTORY, S('/r')],
      [XsType.RM, S('/')],
      [XsType.RM, S('@releaseDomain')],
      [XsType.RM, '/r'],
      [XsType.RM, S('/r')],
    ],
    'rm',
  );
});

t.test('directory parts', async (t) => {
  const names = Array.from({ length: 300 }, (_, i) => `child-with-a-long-name-${String(i).padStart(4, '0')}`);
  const requests: Request[] = names.map((name) => [XsType.WRITE, S(`/many/${name}`, '')]);
  const ours = await startDaemon({ detached: true });
  t.teardown(() => ours.close());
  const raw = await RawConnection.connect(ours.socketPath);
  t.teardown(() => raw.close());
  for (const [type, payload] of requests) await raw.call(type, payload);
  t.equal((await raw.call(XsType.DIRECTORY, S('/many'))).text, 'E2BIG\0', 'a list over 4096 bytes is E2BIG');
  const listed: string[] = [];
  let offset = 0;
  let generation: string | undefined;
  for (;;) {
    const reply = await raw.call(XsType.DIRECTORY_PART, S('/many', String(offset)));
    t.equal(reply.type, XsType.DIRECTORY_PART);
    t.ok(reply.msg.payload.length <= 4096, 'each part fits a payload');
    const [gen, ...rest] = reply.text.split('\0');
    generation ??= gen;
    t.equal(gen, generation, 'the generation is stable while nothing changes');
    const done = reply.text.endsWith('\0\0');
    const chunk = rest.slice(0, done ? -2 : -1);
    listed.push(...chunk);
    offset += chunk.reduce((n, s) => n + s.length + 1, 0);
    if (done) break;
  }
  t.same(listed, names, 'the parts add up to every child, in creation order');
  t.equal((await raw.call(XsType.DIRECTORY_PART, S('/many', '999999'))).text, `${generation}\0\0`, 'past the end: an empty list');
  t.equal((await raw.call(XsType.DIRECTORY_PART, S('/many'))).text, 'EINVAL\0', 'no offset: EINVAL');
  await raw.call(XsType.WRITE, S('/many/another', ''));
  const after = (await raw.call(XsType.DIRECTORY_PART, S('/many', '0'))).text.split('\0')[0];
  t.not(after, generation, 'a new child changes the generation');

  await compare(
    t,
    [
      [XsType.WRITE, S('/few/a', '1')],
      [XsType.WRITE, S('/few/b', '2')],
      [XsType.DIRECTORY_PART, S('/few', '0')],
      [XsType.DIRECTORY_PART, S('/few', '2')],
      [XsType.DIRECTORY_PART, S('/few', '100')],
      [XsType.DIRECTORY_PART, S('/few', 'abc')],
      [XsType.DIRECTORY_PART, S('/few')],
      [XsType.DIRECTORY_PART, S('/missing', '0')],
    ].map(([type, payload]) => [type, payload] as Request),
    'directory_part',
  ).then((replies) => replies);
});

t.test('permissions', async (t) => {
  const replies = await compare(
    t,
    [
      [XsType.WRITE, S('/p/node', 'v')],
      [XsType.GET_PERMS, S('/p/node')],
      [XsType.SET_PERMS, S('/p/node', 'b3', 'r4', 'w5', 'n6')],
      [XsType.GET_PERMS, S('/p/node')],
      [XsType.SET_PERMS, S('/p/node')],
      [XsType.SET_PERMS, S('/p/node', 'x3')],
      [XsType.SET_PERMS, S('/p/node', 'r')],
      [XsType.SET_PERMS, S('/p/node', 'r3x')],
      [XsType.SET_PERMS, S('/p/node', 'r0x10', 'b010')],
      [XsType.GET_PERMS, S('/p/node')],
      [XsType.SET_PERMS, S('/p/missing', 'b0')],
      [XsType.SET_PERMS, S('/p//bad', 'b0')],
      [XsType.GET_PERMS, S('/p/missing')],
      [XsType.GET_PERMS, '/p/node'],
      [XsType.GET_PERMS, S('/p/node', 'extra')],
      [XsType.GET_PERMS, S('@foo')],
      [XsType.GET_PERMS, S('@')],
      [XsType.GET_PERMS, S('@introduceDomain/x')],
      [XsType.SET_PERMS, S('@foo', 'n0')],
      [XsType.SET_PERMS, S('@releaseDomain/x', 'n0')],
      [XsType.GET_PERMS, S('@releaseDomain'), 0, { ours: 'GET_PERMS "n0\\u0000"', why: 'the special nodes show their permissions, as newer Xen does (4.17 says EINVAL)' }],
      [XsType.WRITE, S('/p/node/child', 'inherits')],
      [XsType.GET_PERMS, S('/p/node/child')],
      [XsType.SET_PERMS, S('/p/node', 'n0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7')],
      [XsType.GET_PERMS, S('/p/node')],
    ],
    'perms',
  );
  t.equal(replies[15], 'ERROR "EINVAL\\u0000"', 'GET_PERMS of an @ name that is no special node is EINVAL');
});

t.test('watches', async (t) => {
  const replies = await compare(
    t,
    [
      [XsType.WATCH, S('/w', 'tok')],
      [XsType.WATCH, S('/w', 'tok')],
      [XsType.WATCH, S('/w', 'other')],
      [XsType.WATCH, S('/w')],
      [XsType.WATCH, S('/w//x', 'tok')],
      [XsType.WATCH, S('@introduceDomain', 'intro')],
      [XsType.WATCH, S('@whatever', 'special')],
      [XsType.WATCH, S('relative/path', 'rel')],
      [XsType.WATCH, S('/w', 'in-tx'), 12345],
      [XsType.UNWATCH, S('/w', 'tok')],
      [XsType.UNWATCH, S('/w', 'tok')],
      [XsType.UNWATCH, S('/w')],
      [XsType.UNWATCH, S('/w', 'other', 'extra')],
      [XsType.UNWATCH, S('relative/path', 'rel')],
      [XsType.RESET_WATCHES, S('')],
      [XsType.UNWATCH, S('/w', 'other')],
      [XsType.WATCH, S('/w', 'depth', 'abc')],
      [XsType.WATCH, S('/w', 'depth', '')],
      [XsType.WATCH, S('/w', 'depth', '2x')],
      [XsType.WATCH, S('/w', 'depth', '-1')],
      [XsType.WATCH, S('/w', 'depth', '1', 'extra')],
      [XsType.WATCH, S('/w', 'depth', '1'), 0, { ours: 'WATCH "OK\\u0000"', why: 'we offer the watch depth (XENSTORE_SERVER_FEATURE_WATCHDEPTH), which 4.17 lacks' }],
    ],
    'watch',
  );
  t.equal(replies[1], 'ERROR "EEXIST\\u0000"', 'a duplicate watch is EEXIST');
  t.equal(replies[8], 'WATCH "OK\\u0000"', "WATCH ignores the transaction id");
  t.equal(replies[16], 'ERROR "EINVAL\\u0000"', 'a watch depth that is not a number is EINVAL');
});

t.test('transactions', async (t) => {
  await compare(
    t,
    [
      [XsType.WRITE, S('/tx/a', 'before')],
      [XsType.TRANSACTION_START, S('')],
      [XsType.READ, S('/tx/a'), 1],
      [XsType.WRITE, S('/tx/a', 'inside'), 1],
      [XsType.READ, S('/tx/a')],
      [XsType.READ, S('/tx/a'), 1],
      [XsType.TRANSACTION_START, S(''), 1],
      [XsType.READ, S('/tx/a'), 99],
      [XsType.TRANSACTION_END, S('X'), 1],
      [XsType.TRANSACTION_END, 'T', 1],
      [XsType.TRANSACTION_END, S('T'), 0],
      [XsType.TRANSACTION_END, S('T'), 99],
      [XsType.TRANSACTION_END, S('T'), 1],
      [XsType.READ, S('/tx/a')],
      [XsType.READ, S('/tx/a'), 1],
      [XsType.TRANSACTION_START, S('')],
      [XsType.RM, S('/tx/a'), 2],
      [XsType.READ, S('/tx/a'), 2],
      [XsType.TRANSACTION_END, S('F'), 2],
      [XsType.READ, S('/tx/a')],
      [XsType.TRANSACTION_START, S('')],
      [XsType.READ, S('/tx/a'), 3],
      [XsType.WRITE, S('/tx/a', 'concurrent')],
      [XsType.WRITE, S('/tx/b', 'from tx'), 3],
      [XsType.TRANSACTION_END, S('T'), 3],
      [XsType.READ, S('/tx/b')],
    ],
    'transaction',
  );
});

t.test('message types', async (t) => {
  const replies = await compare(
    t,
    [
      [20, S('')],
      [XsType.WATCH_EVENT, S('/x', 'y')],
      [XsType.ERROR, S('EINVAL')],
      [27, S('')],
      [100, S('')],
      [0xffff, S('')],
      [XsType.GET_DOMAIN_PATH, S('7')],
      [XsType.GET_DOMAIN_PATH, S('65535')],
      [XsType.GET_DOMAIN_PATH, ''],
      [XsType.IS_DOMAIN_INTRODUCED, S('7')],
      [XsType.IS_DOMAIN_INTRODUCED, S('0')],
      [XsType.INTRODUCE, S('7', '4096')],
      [XsType.INTRODUCE, S('7', '4096', '0')],
      [XsType.INTRODUCE, S('7', '4096', '-3'), 0, { ours: 'ERROR "EINVAL\\u0000"', why: 'a negative event channel is EINVAL (Xen reads it as unsigned)' }],
      [XsType.INTRODUCE, S('7', '4096', '5')],
      [XsType.IS_DOMAIN_INTRODUCED, S('7')],
      [XsType.SET_TARGET, S('7', '8')],
      [XsType.INTRODUCE, S('8', '4096', '6')],
      [XsType.SET_TARGET, S('7', '8')],
      [XsType.SET_TARGET, S('7')],
      [XsType.RESUME, S('7')],
      [XsType.RESUME, S('9')],
      [XsType.RELEASE, S('9')],
      [XsType.RELEASE, S('7')],
      [XsType.RELEASE, S('7')],
      [XsType.IS_DOMAIN_INTRODUCED, S('7')],
      [XsType.RELEASE, S('8')],
      [XsType.RELEASE, S('0')],
      [XsType.RESUME, S('0')],
      [XsType.CONTROL, S('print', 'wire test')],
      [XsType.CONTROL, S('nonsense')],
      [XsType.CONTROL, ''],
    ],
    'types',
  );
  t.equal(replies[0], 'ERROR "ENOSYS\\u0000"', 'the removed XS_RESTRICT is ENOSYS');
  t.equal(replies[6], 'GET_DOMAIN_PATH "/local/domain/7\\u0000"');
});
