/**
 * The suite's preflight (test/preflight.ts): on a machine that lacks what
 * the tests use, it names each missing program or file with its Debian
 * package and exits 1 before any test runs; what is optional is said, and
 * does not stop the run. Tried: a PATH of one directory that does not
 * exist, an empty root for the absolute files, a PATH holding a program
 * that is not executable, and a table of nothing but an optional row.
 */
import t from 'tap';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { missingRequirements, report, REQUIREMENTS, type Requirement } from './preflight.js';
import { run } from './helpers/daemon.js';

const PREFLIGHT = fileURLToPath(new URL('./preflight.js', import.meta.url));
const NOWHERE = '/nonexistent-dir';

t.test('with a PATH that holds nothing, it names the missing tools and their packages, and exits 1', async (t) => {
  const result = await run(process.execPath, [PREFLIGHT], { PATH: NOWHERE });
  t.equal(result.code, 1, 'exit status 1');
  t.match(result.stderr, /^The tests cannot run here/, 'it says the tests cannot run');
  t.match(result.stderr, /^ +xenstore-ls +from xenstore-utils, /m, 'xenstore-ls, from xenstore-utils');
  t.match(result.stderr, /^ +xenstore-watch +from xenstore-utils, /m, 'xenstore-watch, from xenstore-utils');
  t.match(result.stderr, /^ +cc +from gcc, /m, 'cc, from gcc');
  t.match(result.stderr, /^ +cc -m32 .* from gcc-multilib, /m, '32-bit builds, from gcc-multilib');
  t.match(result.stderr, /^Install them with: sudo scripts\/install-test-peers .*apt-get install xenstore-utils gcc gcc-multilib\)$/m, 'how to install them');
  t.equal(result.stdout, '', 'nothing on stdout, which is TAP\'s');
});

t.test('with an empty root, every absolute file is missing, named with its package', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'xenmesh-preflight-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const result = await run(process.execPath, [PREFLIGHT], { XENMESH_PREFLIGHT_ROOT: root });
  t.equal(result.code, 1, 'exit status 1');
  for (const [path, pkg] of [
    ['/usr/lib/xen-4.17/bin/test-xenstore', 'xen-utils-4.17'],
    ['/usr/lib/xen-4.17/bin/xenstore-control', 'xen-utils-4.17'],
    ['/usr/lib/xen-4.17/bin/xenstored', 'xen-utils-4.17'],
    ['/usr/bin/python3', 'python3'],
    ['/usr/include/xen/io/blkif.h', 'libxen-dev'],
    ['/usr/include/xengnttab.h', 'libxen-dev'],
    ['/usr/include/stdio.h', 'libc6-dev'],
  ]) {
    t.match(result.stderr, new RegExp(`^ +${root}${path} +from ${pkg}, `, 'm'), `${path}, from ${pkg}`);
  }
  t.match(result.stderr, /^ +the python3 module pyxs +from python3-pyxs, /m, 'pyxs, from python3-pyxs');
  t.match(result.stderr, `Optional, and missing: ${root}/usr/include/liburing.h (from liburing-dev): without it`, 'liburing-dev, as optional');
});

t.test('a program must be executable to count', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-preflight-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'xenstore-ls'), '#!/bin/sh\n');
  chmodSync(join(dir, 'xenstore-ls'), 0o755);
  writeFileSync(join(dir, 'xenstore-read'), '#!/bin/sh\n');
  chmodSync(join(dir, 'xenstore-read'), 0o644);
  const missing = missingRequirements({ path: `${NOWHERE}:${dir}`, root: '' }, REQUIREMENTS.filter((r) => r.need.kind === 'program'));
  const names = missing.map((r) => (r.need.kind === 'program' ? r.need.name : ''));
  t.notOk(names.includes('xenstore-ls'), 'an executable xenstore-ls on the PATH is found');
  t.ok(names.includes('xenstore-read'), 'a xenstore-read that cannot be executed is not');
});

t.test('a file that is there is not reported', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'xenmesh-preflight-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const header = join(root, 'usr/include/xen/io/ring.h');
  mkdirSync(dirname(header), { recursive: true });
  writeFileSync(header, '');
  const files = REQUIREMENTS.filter((r) => r.need.kind === 'file' && r.need.path.startsWith('/usr/include/xen/io/'));
  const missing = missingRequirements({ path: '', root }, files);
  t.same(missing.map((r) => (r.need.kind === 'file' ? r.need.path : '')), ['/usr/include/xen/io/blkif.h'], 'only blkif.h is missing');
});

t.test('only optional things missing: said, and the run goes on', async (t) => {
  const optional: Requirement[] = REQUIREMENTS.filter((r) => r.optional !== undefined);
  t.ok(optional.length > 0, 'the table has optional rows');
  const text = report(optional);
  t.notMatch(text, /cannot run/, 'no refusal');
  t.match(text, /^Optional, and missing: \/usr\/include\/liburing\.h \(from liburing-dev\)/m);
  t.equal(report([]), '', 'nothing missing, nothing said');
});
