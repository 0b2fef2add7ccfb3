/**
 * `npm run bench:startup`: how long `xenmesh` takes to start, command by
 * command, against node's own start (`node -e 0`) measured in the same run.
 * A process start is what an operator pays for every command typed, and
 * what a driver domain pays for its backend: under an emulated CPU
 * (QEMU's TCG) every module loaded costs a hundred times what it does here.
 *
 * Each command is started BENCH_STARTS times (default 20) a round, for
 * BENCH_ROUNDS rounds (default 5, at least 3), the commands' order rotated
 * from round to round; a round's figure is the median of its starts, and
 * what is printed is the median of the rounds with their range, and the
 * ratio to node's start taken within each round.
 *
 * `--against DIR`: also start the xenmesh of another checkout (its
 * dist/bin/xenmesh.js) in the same rounds, as a before-and-after baseline.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rotated, spread, withRange } from './rounds.js';

const STARTS = Number(process.env['BENCH_STARTS'] ?? 20);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 5);
/** Fewer rounds give no median worth the name and no range. */
const MIN_ROUNDS = 3;
const XENMESH = fileURLToPath(new URL('../bin/xenmesh.js', import.meta.url));
/** What each command is asked: enough to load what the command needs, and to stop. */
const COMMANDS: readonly (readonly string[])[] = [['--version'], ['list', '--help'], ['xenstored', '--help'], ['backend', '--help'], ['up', '--help']];

interface Measure {
  readonly name: string;
  readonly argv: readonly string[];
}

/** Milliseconds from spawning the process to its exit. */
function startOnce(argv: readonly string[]): number {
  const t0 = process.hrtime.bigint();
  const result = spawnSync(process.execPath, argv, { stdio: 'ignore' });
  if (result.status !== 0) throw new Error(`${argv.join(' ')} exited with ${result.status ?? result.signal}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function roundFigure(argv: readonly string[]): number {
  return spread(Array.from({ length: STARTS }, () => startOnce(argv))).median;
}

function main(): void {
  if (ROUNDS < MIN_ROUNDS) throw new Error(`BENCH_ROUNDS must be at least ${MIN_ROUNDS}`);
  const againstAt = process.argv.indexOf('--against');
  const against = againstAt > 0 ? resolve(process.argv[againstAt + 1] ?? '', 'dist/bin/xenmesh.js') : undefined;
  const measures: Measure[] = [{ name: 'node -e 0', argv: ['-e', '0'] }];
  for (const args of COMMANDS) {
    measures.push({ name: `xenmesh ${args.join(' ')}`, argv: [XENMESH, ...args] });
    if (against) measures.push({ name: `before: xenmesh ${args.join(' ')}`, argv: [against, ...args] });
  }
  const figures = new Map<string, number[]>(measures.map((m) => [m.name, []]));
  const ratios = new Map<string, number[]>(measures.map((m) => [m.name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    process.stderr.write(`round ${round + 1} of ${ROUNDS}\n`);
    const thisRound = new Map<string, number>();
    for (const m of rotated(measures, round)) thisRound.set(m.name, roundFigure(m.argv));
    const node = thisRound.get('node -e 0')!;
    for (const [name, ms] of thisRound) {
      figures.get(name)!.push(ms);
      ratios.get(name)!.push(ms / node);
    }
  }
  const ms = (n: number) => n.toFixed(0);
  const x = (n: number) => n.toFixed(2);
  console.log(`Process start to exit, ms: median of ${ROUNDS} rounds (range), each round the median of ${STARTS} starts; the order rotated each round`);
  console.log('| command | ms | over node -e 0 |');
  console.log('| --- | --- | --- |');
  for (const m of measures) console.log(`| \`${m.name}\` | ${withRange(spread(figures.get(m.name)!), ms)} | ${withRange(spread(ratios.get(m.name)!), x)} |`);
}

main();
