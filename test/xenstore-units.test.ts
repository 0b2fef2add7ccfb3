/**
 * Unit tests of the pieces the daemon is built from: message framing, path
 * rules, permission parsing and access, the copy-on-write tree.
 */
import t from 'tap';
import { isXsError } from '../shared/errors.js';
import { XS_HEADER_SIZE, XsFrameDecoder, XsType, decodeHeader, encodeMessage, nulStrings, splitNulStrings, type XsMessage } from '../shared/xs-wire.js';
import { cAtoi } from '../xenstore/daemon/args.js';
import { parseDomid } from '../shared/domid.js';
import { canonicalize, isPathWithin, parentOf, parseAbsolute } from '../xenstore/store/path.js';
import { Access, accessFor, formatPerm, parsePermStrings } from '../xenstore/store/permissions.js';
import { Tree } from '../xenstore/store/tree.js';
import { Node } from '../xenstore/store/node.js';

function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (err) {
    return isXsError(err) ? err.errno : String(err);
  }
}

t.test('framing', async (t) => {
  const frame = encodeMessage(XsType.WRITE, 7, 9, nulStrings('/a', 'b'));
  t.same(decodeHeader(frame), { type: XsType.WRITE, reqId: 7, txId: 9, len: 5 }, 'a little-endian 16-byte header');
  t.same(splitNulStrings(Buffer.from('a\0bc\0tail')), { strings: ['a', 'bc'], trailing: 4 }, 'bytes after the last NUL are not a string');

  const got: XsMessage[] = [];
  const oversize: number[] = [];
  const decoder = new XsFrameDecoder((m) => got.push(m), (h) => oversize.push(h.len));
  const two = Buffer.concat([frame, encodeMessage(XsType.READ, 8, 0, nulStrings('/x'))]);
  for (const byte of two) decoder.push(Buffer.from([byte]));
  t.equal(got.length, 2, 'messages split across any number of chunks are reassembled');
  t.same(got.map((m) => m.reqId), [7, 8]);
  t.equal(decoder.bufferedBytes, 0, 'nothing is left over between messages');
  decoder.push(frame.subarray(0, XS_HEADER_SIZE));
  t.equal(decoder.bufferedBytes, XS_HEADER_SIZE, 'a header whose payload is still to come is an unfinished message');
  decoder.push(frame.subarray(XS_HEADER_SIZE));
  t.equal(decoder.bufferedBytes, 0, 'and its payload completes it');
  t.equal(got.length, 3);
  got.pop();
  decoder.push(encodeMessage(XsType.READ, 9, 0, Buffer.alloc(4097)));
  decoder.push(encodeMessage(XsType.READ, 10, 0, nulStrings('/y')));
  t.same(oversize, [4097], 'an oversized header is reported once');
  t.equal(got.length, 2, 'and nothing after it is decoded');
});

t.test('paths', async (t) => {
  const opts = { home: '/local/domain/3', allowSpecial: false, pathMax: 2048 };
  t.equal(canonicalize('/a/b', opts).full, '/a/b');
  t.equal(canonicalize('a/b', opts).full, '/local/domain/3/a/b', 'relative to the home');
  t.equal(canonicalize('/', opts).full, '/');
  for (const bad of ['', '/a/', '/a//b', 'a b', '/a\tb', '/a.b', '/a:b', '@x']) {
    t.equal(errnoOf(() => canonicalize(bad, opts)), 'EINVAL', `'${bad}' is EINVAL`);
  }
  t.equal(canonicalize('@releaseDomain/5', { ...opts, allowSpecial: true }).root, '@releaseDomain');
  t.equal(errnoOf(() => canonicalize(`/${'a'.repeat(2048)}`, opts)), 'EINVAL', 'over path-max');
  t.equal(canonicalize(`/local/domain/3/${'a'.repeat(2048)}`, opts).parts.length, 4, 'path-max counts after the domain home');
  t.equal(errnoOf(() => canonicalize(`/local/domain/3/${'a'.repeat(3060)}`, { ...opts, pathMax: 0 })), 'EINVAL', 'never over 3072');
  t.equal(parentOf(parseAbsolute('/a'))!.full, '/');
  t.equal(parentOf(parseAbsolute('@releaseDomain'))!.full, '/', 'special paths hang off the root, as xenstored has it');
  t.equal(parentOf(parseAbsolute('/')), undefined);
  t.ok(isPathWithin('/a/b', '/a'));
  t.notOk(isPathWithin('/ab', '/a'), 'a common prefix is not a parent');
  t.ok(isPathWithin('/a', '/a', 0));
  t.notOk(isPathWithin('/a/b', '/a', 0));
  t.ok(isPathWithin('/a/b', '/a', 1));
  t.notOk(isPathWithin('/a/b/c', '/a', 1));
  t.ok(isPathWithin('/x', '/', 1));
  t.notOk(isPathWithin('@introduceDomain', '/'), 'special paths are not under /');
});

t.test('permissions', async (t) => {
  t.same(parsePermStrings(['b0', 'r5', 'w0x10', 'n010']).map(formatPerm), ['b0', 'r5', 'w16', 'n8'], 'ids read like strtol base 0');
  for (const bad of ['', 'r', 'x1', 'r1x', 'r-1', 'r70000', 'b 1 ']) {
    t.equal(errnoOf(() => parsePermStrings([bad])), 'EINVAL', `'${bad}' is EINVAL`);
  }
  const perms = parsePermStrings(['n3', 'r5', 'w6', 'b7']);
  t.equal(accessFor({ domid: 3, privileged: false }, perms), Access.BOTH | Access.OWNER, 'the owner has everything');
  t.equal(accessFor({ domid: 0, privileged: true }, perms), Access.BOTH | Access.OWNER, 'dom0 has everything');
  t.equal(accessFor({ domid: 5, privileged: false }, perms), Access.READ);
  t.equal(accessFor({ domid: 6, privileged: false }, perms), Access.WRITE);
  t.equal(accessFor({ domid: 9, privileged: false }, perms), Access.NONE, 'others get the owner entry bits');
  t.equal(accessFor({ domid: 9, target: 3, privileged: false }, perms), Access.BOTH | Access.OWNER, "a target's controller acts as the owner");
  t.equal(accessFor({ domid: 5, privileged: false }, [perms[0]!, { ...perms[1]!, ignored: true }]), Access.NONE, 'ignored entries grant nothing');
});

t.test('numbers as xenstored reads them', async (t) => {
  t.equal(parseDomid('65535'), 65535);
  t.equal(parseDomid('65536'), undefined);
  t.equal(parseDomid('1x'), undefined);
  t.equal(parseDomid(''), undefined);
  t.equal(cAtoi('42abc'), 42);
  t.equal(cAtoi('  -7'), -7);
  t.equal(cAtoi('abc'), 0);
});

t.test('copy-on-write tree', async (t) => {
  const tree = new Tree(new Map());
  tree.roots.set('/', tree.newNode(Buffer.alloc(0), [{ domid: 0, access: 0, ignored: false }], 1));
  tree.mutable(parseAbsolute('/')).addChild('a', tree.newNode(Buffer.from('one'), [{ domid: 0, access: 0, ignored: false }], 2));
  const snapshot = tree.freeze();
  const before = snapshot.get('/')!.children.get('a')!;
  const node = tree.mutable(parseAbsolute('/a'));
  node.value = Buffer.from('two');
  t.equal(before.value.toString(), 'one', 'the snapshot does not see later writes');
  t.equal(tree.get(parseAbsolute('/a'))!.value.toString(), 'two');
  t.not(tree.roots.get('/'), snapshot.get('/'), 'the path to the change was copied');
  const again = tree.mutable(parseAbsolute('/a'));
  t.equal(again, node, 'a node already copied is changed in place');
  t.ok(new Node({}, Buffer.alloc(3), [{ domid: 0, access: 0, ignored: false }], new Map(), 0).size === 16 + 8 + 3, 'node size as xenstored counts it');
});
