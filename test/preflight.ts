/**
 * What the test suite needs from the machine, checked before any test
 * runs (tap's `before` script, package.json): each program, header or
 * module that is missing is named with the Debian package that provides
 * it, and the run stops. Without this a machine that lacks Xen's tools
 * fails dozens of tests in ways that do not say why (a spawn's ENOENT
 * read as an exit status, a C stand-in that does not build).
 *
 *   node dist/test/preflight.js       exit 1 and the list when something is missing
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';

/** What one row of the table needs: a program on PATH, a file, a Python module, or the compiler's 32-bit mode. */
export type Need =
  | { readonly kind: 'program'; readonly name: string }
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'python-module'; readonly module: string }
  | { readonly kind: 'cc-m32' };

export interface Requirement {
  readonly need: Need;
  /** The Debian (bookworm) package that provides it. */
  readonly debianPackage: string;
  /** Which tests use it. */
  readonly usedBy: string;
  /** Set where the tests run without it (skipping what needs it): why the run goes on. */
  readonly optional?: string;
}

/** Debian's python3, where python3-pyxs installs its module. */
const PYTHON3 = '/usr/bin/python3';
/** Where Debian's xen-utils-4.17 puts Xen's own daemon and tools. */
const XEN_BIN = '/usr/lib/xen-4.17/bin';

const program = (name: string): Need => ({ kind: 'program', name });
const file = (path: string): Need => ({ kind: 'file', path });

/** Everything the suite uses from the machine, and the package each comes from. */
export const REQUIREMENTS: readonly Requirement[] = [
  ...['xenstore-read', 'xenstore-write', 'xenstore-ls', 'xenstore-list', 'xenstore-exists', 'xenstore-rm', 'xenstore-chmod', 'xenstore-watch'].map(
    (name): Requirement => ({ need: program(name), debianPackage: 'xenstore-utils', usedBy: 'the xenstore-utils conformance tests, the host and bus tests' }),
  ),
  { need: file(`${XEN_BIN}/test-xenstore`), debianPackage: 'xen-utils-4.17', usedBy: 'test/conformance-test-xenstore.test.ts' },
  { need: file(`${XEN_BIN}/xenstore-control`), debianPackage: 'xen-utils-4.17', usedBy: 'test/xenstored-cli.test.ts, test/conformance-xenstore-utils.test.ts' },
  { need: file(`${XEN_BIN}/xenstored`), debianPackage: 'xen-utils-4.17', usedBy: "the tests that compare with Xen's own C xenstored" },
  { need: file(PYTHON3), debianPackage: 'python3', usedBy: 'test/conformance-pyxs.test.ts, test/host-prompt.test.ts (a pseudo-terminal)' },
  { need: { kind: 'python-module', module: 'pyxs' }, debianPackage: 'python3-pyxs', usedBy: 'test/conformance-pyxs.test.ts' },
  { need: program('cc'), debianPackage: 'gcc', usedBy: 'test/blkif-conformance.test.ts, the hypervisor stand-in of the C xenstored tests' },
  { need: file('/usr/include/stdio.h'), debianPackage: 'libc6-dev', usedBy: 'the C programs the tests build' },
  { need: { kind: 'cc-m32' }, debianPackage: 'gcc-multilib', usedBy: "test/blkif-conformance.test.ts (blkif.h's x86_32 ABI)" },
  ...['xen/io/ring.h', 'xen/io/blkif.h'].map(
    (header): Requirement => ({ need: file(`/usr/include/${header}`), debianPackage: 'libxen-dev', usedBy: 'test/blkif-conformance.test.ts (a C blkfront and blkback)' }),
  ),
  ...['xenctrl.h', 'xenevtchn.h', 'xengnttab.h'].map(
    (header): Requirement => ({ need: file(`/usr/include/${header}`), debianPackage: 'libxen-dev', usedBy: "the hypervisor stand-in under Xen's C xenstored (test/native/)" }),
  ),
  {
    need: file('/usr/include/liburing.h'),
    debianPackage: 'liburing-dev',
    usedBy: 'test/uring.test.ts, and block I/O through io_uring',
    optional: 'without it the io_uring tests are skipped and the block backend does its I/O on its pool',
  },
];

export interface Environment {
  /** The PATH programs are looked for on. */
  readonly path: string;
  /** Prefixed to every absolute file (for tests of the preflight itself); '' is the machine's own. */
  readonly root: string;
}

/** The name a requirement is listed under. */
export function describe(need: Need, root = ''): string {
  switch (need.kind) {
    case 'program':
      return need.name;
    case 'file':
      return root + need.path;
    case 'python-module':
      return `the python3 module ${need.module}`;
    case 'cc-m32':
      return 'cc -m32 (32-bit builds)';
  }
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function findProgram(name: string, env: Environment): string | undefined {
  return env.path
    .split(delimiter)
    .filter((dir) => dir !== '')
    .map((dir) => join(dir, name))
    .find(isExecutable);
}

function isPresent(need: Need, env: Environment): boolean {
  switch (need.kind) {
    case 'program':
      return findProgram(need.name, env) !== undefined;
    case 'file':
      try {
        accessSync(env.root + need.path, constants.R_OK);
        return true;
      } catch {
        return false;
      }
    case 'python-module': {
      const python = env.root + PYTHON3;
      if (!isExecutable(python)) return false;
      return spawnSync(python, ['-c', `import ${need.module}`], { stdio: 'ignore' }).status === 0;
    }
    case 'cc-m32': {
      const cc = findProgram('cc', env);
      if (cc === undefined) return false;
      // A program that includes a libc header: gcc-multilib brings the 32-bit libc's headers and crt files with it.
      const built = spawnSync(cc, ['-m32', '-x', 'c', '-', '-o', '/dev/null'], {
        input: '#include <stdio.h>\nint main(void) { return puts("") < 0; }\n',
        stdio: ['pipe', 'ignore', 'ignore'],
        env: { ...process.env, PATH: env.path },
      });
      return built.status === 0;
    }
  }
}

/** The requirements this machine does not meet, in the table's order. */
export function missingRequirements(env: Environment, table: readonly Requirement[] = REQUIREMENTS): Requirement[] {
  return table.filter((requirement) => !isPresent(requirement.need, env));
}

/** The report for what is missing: the required first, then the optional; '' when nothing is. */
export function report(missing: readonly Requirement[], root = ''): string {
  const required = missing.filter((r) => r.optional === undefined);
  const optional = missing.filter((r) => r.optional !== undefined);
  const rows = (list: readonly Requirement[]) => {
    const width = Math.max(...list.map((r) => describe(r.need, root).length));
    return list.map((r) => `  ${describe(r.need, root).padEnd(width)}  from ${r.debianPackage}, for ${r.usedBy}`);
  };
  const lines: string[] = [];
  if (required.length > 0) {
    const packages = [...new Set(required.map((r) => r.debianPackage))];
    lines.push(
      'The tests cannot run here: this machine lacks what they use.',
      ...rows(required),
      `Install them with: sudo scripts/install-test-peers   (or: apt-get install ${packages.join(' ')})`,
    );
  }
  for (const r of optional) lines.push(`Optional, and missing: ${describe(r.need, root)} (from ${r.debianPackage}): ${r.optional}.`);
  return lines.join('\n');
}

/** Prints what is missing; 1 if the tests cannot run, else 0. */
export function preflight(env: Environment): number {
  const missing = missingRequirements(env);
  const text = report(missing, env.root);
  if (text !== '') process.stderr.write(`${text}\n`);
  return missing.some((r) => r.optional === undefined) ? 1 : 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = preflight({ path: process.env['PATH'] ?? '', root: process.env['XENMESH_PREFLIGHT_ROOT'] ?? '' });
}
