/**
 * Progress of long work: a benchmark's runs say which of how many and the
 * time left; a file being filled says how far along, at most a line a
 * second and once at the end. The clock is the test's own.
 */
import t from 'tap';
import { ByteProgress, formatDuration, RunProgress } from '../shared/progress.js';

t.test('durations', async (t) => {
  t.equal(formatDuration(0), '0 s');
  t.equal(formatDuration(44_600), '45 s');
  t.equal(formatDuration(200_000), '3 min 20 s');
  t.equal(formatDuration(3_900_000), '1 h 05 min');
  t.equal(formatDuration(-5), '0 s', 'never negative');
});

t.test('runs: which of how many, and the time left at the pace so far', async (t) => {
  let now = 0;
  const lines: string[] = [];
  const progress = new RunProgress(4, (line) => lines.push(line), () => now);
  now = 10_000;
  progress.finished('first');
  now = 20_000;
  progress.finished('second');
  now = 40_000;
  progress.finished('third');
  now = 50_000;
  progress.finished('fourth');
  t.same(lines, [
    '[run 1/4, about 30 s left] first',
    '[run 2/4, about 20 s left] second',
    '[run 3/4, about 13 s left] third',
    '[run 4/4, done] fourth',
  ]);
});

t.test('bytes: at most a line a second, and the last one always', async (t) => {
  let now = 0;
  const lines: string[] = [];
  const mib = 2 ** 20;
  const progress = new ByteProgress('filling disk.img', 100 * mib, (line) => lines.push(line), () => now);
  for (let done = 1; done <= 100; done++) {
    now += 50; // 20 MiB a second
    progress.update(done * mib);
  }
  t.equal(lines.length, 5, 'one line a second for five seconds, the last at the end');
  t.equal(lines[0], 'filling disk.img: 20/100 MiB (20%), about 4 s left');
  t.equal(lines.at(-1), 'filling disk.img: 100/100 MiB (100%) in 5 s');
});
