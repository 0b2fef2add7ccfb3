/**
 * Debian's xenstore-utils and xenstore-control against our daemon. Every
 * command runs twice, against our daemon and against Xen's own C xenstored
 * (Debian's, under a stand-in hypervisor), and must print the same, exit the
 * same way and leave the same store; key outputs are also spelt out here.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { run, startDaemon, type RunResult } from './helpers/daemon.js';
import { startReferenceXenstored } from './helpers/reference-xenstored.js';

const XENSTORE_CONTROL = '/usr/lib/xen-4.17/bin/xenstore-control';

type Step = [program: string, ...args: string[]];

interface Pair {
  ours(step: Step): Promise<RunResult>;
  theirs(step: Step): Promise<RunResult>;
}

async function pair(t: Test): Promise<Pair> {
  const ours = await startDaemon({ detached: true });
  const theirs = await startReferenceXenstored();
  t.teardown(async () => {
    await ours.close();
    await theirs.close();
  });
  return {
    ours: ([program, ...args]) => run(program, args, { XENSTORED_PATH: ours.socketPath }),
    theirs: ([program, ...args]) => run(program, args, { XENSTORED_PATH: theirs.socketPath }),
  };
}

/**
 * Xen's xenstored also offers live update (replacing the daemon binary while
 * it runs), which ours does not; its entry in the command list is the one
 * expected difference.
 */
function withoutLiveUpdate(result: RunResult): RunResult {
  const strip = (text: string) => text.replace(/^live-update\t.*\n(?: {4}.*\n)*/m, '');
  return { ...result, stdout: strip(result.stdout), stderr: strip(result.stderr) };
}

/** Runs each step on both daemons in turn and checks that the results agree. */
async function same(t: Test, daemons: Pair, steps: Step[]): Promise<RunResult[]> {
  const results: RunResult[] = [];
  for (const step of steps) {
    const ours = await daemons.ours(step);
    const theirs = withoutLiveUpdate(await daemons.theirs(step));
    t.same(ours, theirs, `same result from ${step.join(' ')}`);
    results.push(ours);
  }
  return results;
}

/** The whole store as `xenstore-ls -p /` shows it, on both daemons. */
async function sameStore(t: Test, daemons: Pair, label: string): Promise<string> {
  const [result] = await same(t, daemons, [['xenstore-ls', '-p', '/']]);
  t.equal(result!.code, 0, `${label}: xenstore-ls -p / succeeds`);
  return result!.stdout;
}

t.test('xenstore-write, -read, -exists, -list and -ls', async (t) => {
  const daemons = await pair(t);
  const results = await same(t, daemons, [
    ['xenstore-write', '/vm/one', 'first', '/vm/two/deeper', 'second', 'relative', 'in home'],
    ['xenstore-read', '/vm/one'],
    ['xenstore-read', '-p', '/vm/one', '/vm/two/deeper'],
    ['xenstore-read', 'relative'],
    ['xenstore-read', '/vm/missing'],
    ['xenstore-read', '-R', '/vm/one'],
    ['xenstore-exists', '/vm/two'],
    ['xenstore-exists', '/vm/three'],
    ['xenstore-list', '/vm'],
    ['xenstore-list', '-p', '/vm'],
    ['xenstore-list', '-p', '/'],
    ['xenstore-list', '/vm/missing'],
    ['xenstore-ls', '/'],
    ['xenstore-ls', '-f', '/vm'],
    ['xenstore-ls', '/vm/missing'],
    ['xenstore-ls', '/local/domain/0'],
  ]);
  t.equal(results[1]!.stdout, 'first\n');
  t.equal(results[2]!.stdout, '/vm/one: first\n/vm/two/deeper: second\n');
  t.equal(results[3]!.stdout, 'in home\n', 'relative paths are under /local/domain/0 for socket clients');
  t.equal(results[4]!.code, 1);
  t.match(results[4]!.stderr, /couldn't read path \/vm\/missing/);
  t.equal(results[6]!.code, 0);
  t.equal(results[7]!.code, 1);
  t.equal(results[8]!.stdout, 'one\ntwo\n');
  t.equal(results[9]!.stdout, '/vm/one\n/vm/two\n');
  t.equal(results[12]!.stdout, 'tool = ""\n xenstored = ""\nvm = ""\n one = "first"\n two = ""\n  deeper = "second"\nlocal = ""\n domain = ""\n  0 = ""\n   relative = "in home"\n');
  t.equal(results[13]!.stdout, '/vm/one = "first"\n/vm/two = ""\n/vm/two/deeper = "second"\n');
  await sameStore(t, daemons, 'after writes');
});

t.test('values: escapes, binary, empty, long', async (t) => {
  const daemons = await pair(t);
  const long = 'x'.repeat(200);
  const results = await same(t, daemons, [
    ['xenstore-write', '/v/tab', 'a\\tb', '/v/nl', 'line\\nnext', '/v/bin', '\\x01\\x7f\\001', '/v/back', 'a\\\\b', '/v/empty', ''],
    ['xenstore-write', '/v/long', long],
    ['xenstore-read', '/v/tab', '/v/nl', '/v/bin', '/v/back', '/v/empty'],
    ['xenstore-read', '-R', '/v/tab'],
    ['xenstore-ls', '/v'],
    ['xenstore-ls', '-p', '/v'],
    ['xenstore-write', '-R', '/v/raw', '\\x41'],
    ['xenstore-read', '/v/raw'],
  ]);
  t.equal(results[2]!.stdout, 'a\\tb\nline\\nnext\n\\001\\x7f\\001\na\\\\b\n\n');
  t.equal(results[3]!.stdout, 'a\tb');
  t.match(results[4]!.stdout, /long = "x{50,}\\\.\.\."/, 'long values are cut at the terminal width');
  t.equal(results[7]!.stdout, '\\\\x41\n');
});

t.test('xenstore-rm, with and without -t', async (t) => {
  const daemons = await pair(t);
  const results = await same(t, daemons, [
    ['xenstore-write', '/r/a/b/c', '1', '/r/a/x', '2', '/r/keep/y', '3'],
    ['xenstore-rm', '/r/a/b/c'],
    ['xenstore-ls', '/r'],
    ['xenstore-rm', '/r/nothing'],
    ['xenstore-rm', '/r/no/parent'],
    ['xenstore-rm', '-t', '/r/keep/y'],
    ['xenstore-ls', '/'],
    ['xenstore-write', '/t/u/v/w', 'leaf', '/t/valued', 'v'],
    ['xenstore-write', '/t/u', 'has value'],
    ['xenstore-rm', '-t', '/t/u/v/w'],
    ['xenstore-ls', '/t'],
    ['xenstore-rm', '/r'],
    ['xenstore-rm', '/'],
    ['xenstore-rm', ''],
  ]);
  t.equal(results[3]!.code, 0, 'removing a missing node whose parent exists is fine');
  t.equal(results[4]!.code, 1, 'removing below a missing parent fails');
  t.match(results[4]!.stderr, /could not remove path \/r\/no\/parent/);
  t.equal(results[12]!.code, 1, 'the root cannot be removed');
  await sameStore(t, daemons, 'after removals');
});

t.test('xenstore-chmod, with and without -r and -u', async (t) => {
  const daemons = await pair(t);
  const results = await same(t, daemons, [
    ['xenstore-write', '/p/a/b/c', 'v', '/p/a/d', 'w'],
    ['xenstore-chmod', '/p/a', 'b1', 'r2'],
    ['xenstore-ls', '-p', '/p'],
    ['xenstore-chmod', '-r', '/p/a', 'n3', 'w4'],
    ['xenstore-ls', '-p', '/p'],
    ['xenstore-chmod', '-u', '/p/a/b/c', 'r5'],
    ['xenstore-ls', '-p', '/'],
    ['xenstore-chmod', '/p/a', 'x1'],
    ['xenstore-chmod', '/p/missing', 'b0'],
    ['xenstore-chmod', '/p/a', 'b0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6'],
    ['xenstore-ls', '-p', '/p'],
  ]);
  t.match(results[2]!.stdout, /^a = "" \. .*\(b1,r2\)$/m);
  t.match(results[4]!.stdout, / c = "v" .*\(n3,w4\)$/m, '-r applies to the children');
  t.equal(results[7]!.code, 1, 'an invalid permission letter is refused by the tool');
  t.equal(results[8]!.code, 1, 'a missing node cannot be chmod-ed');
  t.equal(results[9]!.code, 0, 'dom0 is not held to the permissions-per-node quota');
});

t.test('xenstore-watch -n', async (t) => {
  const ours = await startDaemon({ detached: true });
  const theirs = await startReferenceXenstored();
  t.teardown(async () => {
    await ours.close();
    await theirs.close();
  });
  const outputs: string[] = [];
  for (const socketPath of [ours.socketPath, theirs.socketPath]) {
    const env = { ...process.env, XENSTORED_PATH: socketPath };
    await run('xenstore-write', ['/w/existing', 'x'], { XENSTORED_PATH: socketPath });
    const watcher = spawn('xenstore-watch', ['-n', '4', '/w'], { env });
    const killer = setTimeout(() => watcher.kill(), 10_000);
    let stdout = '';
    const firstLine = new Promise<void>((resolve) =>
      watcher.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('\n')) resolve();
      }),
    );
    const exited = new Promise<number | null>((resolve) => watcher.on('exit', (code) => resolve(code)));
    await firstLine;
    for (const step of [
      ['xenstore-write', '/w/new', '1'],
      ['xenstore-write', '/unrelated', '1'],
      ['xenstore-chmod', '/w/existing', 'r0'],
      ['xenstore-rm', '/w'],
    ]) {
      await run(step[0]!, step.slice(1), { XENSTORED_PATH: socketPath });
    }
    t.equal(await exited, 0, 'xenstore-watch exits after its events');
    clearTimeout(killer);
    outputs.push(stdout);
  }
  t.equal(outputs[0], '/w\n/w/new\n/w/existing\n/w\n', 'first event, then one per change at or under the path');
  t.equal(outputs[0], outputs[1], "the same events as Xen's xenstored");
});

t.test('xenstore-control', async (t) => {
  const daemons = await pair(t);
  const results = await same(t, daemons, [
    [XENSTORE_CONTROL, 'help'],
    [XENSTORE_CONTROL, 'check'],
    [XENSTORE_CONTROL, 'quota'],
    [XENSTORE_CONTROL, 'quota-soft'],
    [XENSTORE_CONTROL, 'quota', 'set', 'nodes', '2000'],
    [XENSTORE_CONTROL, 'quota-soft', 'set', 'memory', '1000000'],
    [XENSTORE_CONTROL, 'quota'],
    [XENSTORE_CONTROL, 'quota-soft'],
    [XENSTORE_CONTROL, 'quota', 'set', 'nodes', '0'],
    [XENSTORE_CONTROL, 'quota', 'set', 'unknown', '5'],
    [XENSTORE_CONTROL, 'quota', '7'],
    [XENSTORE_CONTROL, 'print', 'hello from the test'],
    [XENSTORE_CONTROL, 'log', 'off'],
    [XENSTORE_CONTROL, 'log', 'sideways'],
    [XENSTORE_CONTROL, 'no-such-command'],
    [XENSTORE_CONTROL],
  ]);
  t.equal(
    results[0]!.stdout,
    'check\t\nlog\ton|off\nlogfile\t<file>\nmemreport\t[<file>]\nprint\t<string>\nquota\t[set <name> <val>|<domid>]\nquota-soft\t[set <name> <val>]\nhelp\t\n\n',
    'help lists the commands',
  );
  t.equal(
    results[2]!.stdout,
    'Quota settings:\n' +
      'nodes            :     1000 Nodes per domain\n' +
      'watches          :      128 Watches per domain\n' +
      'transactions     :       10 Transactions per domain\n' +
      'outstanding      :       20 Outstanding requests per domain\n' +
      'transaction-nodes:     1024 Max. number of accessed nodes per transaction\n' +
      'memory           :  2621440 Total Xenstore memory per domain (error level)\n' +
      'node-size        :     2048 Max. size of a node\n' +
      'path-max         :     2048 Max. length of a node path\n' +
      'permissions      :        5 Max. number of permissions per node\n\n',
  );
  t.match(results[6]!.stdout, /nodes {12}: {5}2000 Nodes per domain/);
  t.equal(results[10]!.code, 3, 'quota of an unknown domain fails');
  t.match(results[14]!.stderr, /Command not supported/);
});

t.test('xenstore-control quota <domid> and memreport', async (t) => {
  const ours = await startDaemon({ detached: true });
  const env = { XENSTORED_PATH: ours.socketPath };
  t.teardown(() => ours.close());
  const report = await run(XENSTORE_CONTROL, ['quota', '0'], env);
  t.equal(report.code, 0);
  t.match(report.stdout, /^Domain 0:\nnodes {11}: +3\nwatches {9}: +0\ntransactions {4}: +0\noutstanding {5}: +[01]\nmemory {10}: +\d+\n\n$/);
  const file = `${ours.dir}/memreport`;
  t.equal((await run(XENSTORE_CONTROL, ['memreport', file], env)).code, 0);
  const { readFileSync } = await import('node:fs');
  t.match(readFileSync(file, 'utf8'), /domain 0: 3 nodes/);
  t.equal((await run(XENSTORE_CONTROL, ['memreport'], env)).code, 3, 'without a trace file there is nowhere to write');
  t.equal((await run(XENSTORE_CONTROL, ['logfile', `${ours.dir}/trace`], env)).code, 0);
  t.equal((await run(XENSTORE_CONTROL, ['memreport'], env)).code, 0);
  t.match(readFileSync(`${ours.dir}/trace`, 'utf8'), /memory report/);
});
