/**
 * The block tests again with the backend's I/O on the piscina pool, the
 * engine a ring thread falls back to where io_uring is missing or refused
 * (the rest of the suite runs the default, io_uring where it can). Each
 * file runs in a process of its own with XENMESH_IO_ENGINE=pool and must
 * pass as it does on io_uring.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * The block tests whose I/O goes through the backend's engine. The
 * compatibility matrix (blk-matrix) is not repeated: it varies what the two
 * ends negotiate, each case a few requests on a fresh host, and which engine
 * carries them is covered by every file here; run on the pool it adds a
 * minute and a half to the suite for nothing these do not check.
 */
const BLOCK_TESTS = [
  'blk-e2e',
  'blk-hostile',
  'blk-image',
  'blk-mesh',
  'blk-stress',
  'host-disk',
  'fuzz-blkif',
];

/** The longest a block test file may take on a loaded CI machine. */
const FILE_TIMEOUT_MS = 300_000;
/** Lines of a failing file's output shown. */
const SHOWN_LINES = 60;

t.setTimeout(BLOCK_TESTS.length * FILE_TIMEOUT_MS);

for (const name of BLOCK_TESTS) {
  t.test(`${name} on the pool engine`, async (t) => {
    const file = fileURLToPath(new URL(`./${name}.test.js`, import.meta.url));
    const { code, signal, output } = await run(file);
    const summary = output.match(/# \{ total: \d+, pass: \d+.*\}/g)?.pop() ?? output.match(/^# (pass|fail) .*$/gm)?.join(', ') ?? '';
    t.equal(code, 0, `${name} passes with XENMESH_IO_ENGINE=pool ${summary}`, code === 0 ? {} : { signal, output: output.split('\n').slice(-SHOWN_LINES).join('\n') });
    // Files that keep their logs quiet say nothing; none may say it ran io_uring.
    t.notMatch(output, /block I\/O through io_uring/, 'and no backend of it ran io_uring');
  });
}

function run(file: string): Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--enable-source-maps', file], {
      env: { ...process.env, XENMESH_IO_ENGINE: 'pool', XENMESH_LOG: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: FILE_TIMEOUT_MS,
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('close', (code, signal) => resolve({ code, signal, output }));
  });
}
