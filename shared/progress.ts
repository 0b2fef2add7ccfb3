/**
 * Progress of long work on stderr: a benchmark's runs (which run of how
 * many, and the time left at the pace so far) and the filling of a large
 * file (how far along, at most a line a second), so that whoever waits
 * can tell it is moving and when it will end.
 */

/** The fewest milliseconds between two lines of a byte count's progress. */
export const PROGRESS_INTERVAL_MS = 1000;

export type ProgressWriter = (line: string) => void;

const toStderr: ProgressWriter = (line) => {
  process.stderr.write(`${line}\n`);
};

/** A duration as people read it: `45 s`, `3 min 20 s`, `1 h 05 min`. */
export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(seconds % 60).padStart(2, '0')} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, '0')} min`;
}

/**
 * Counts the runs of a benchmark, one line per run: `[run 3/24, about
 * 4 min 10 s left] <what the run gave>`. The time left is the mean run so
 * far times the runs to go.
 */
export class RunProgress {
  private done = 0;
  private readonly began: number;

  constructor(
    private readonly total: number,
    private readonly write: ProgressWriter = toStderr,
    private readonly now: () => number = Date.now,
  ) {
    this.began = now();
  }

  /** Says a run has finished, with what it gave. */
  finished(description: string): void {
    this.done++;
    const elapsed = this.now() - this.began;
    const left = this.done >= this.total ? 'done' : `about ${formatDuration((elapsed / this.done) * (this.total - this.done))} left`;
    this.write(`[run ${this.done}/${this.total}, ${left}] ${description}`);
  }
}

/**
 * Follows a byte count towards a total (a file being filled): a line when
 * PROGRESS_INTERVAL_MS has passed since the last, and one at the end.
 */
export class ByteProgress {
  private lastLine: number;
  private readonly began: number;

  constructor(
    private readonly what: string,
    private readonly total: number,
    private readonly write: ProgressWriter = toStderr,
    private readonly now: () => number = Date.now,
  ) {
    this.began = now();
    this.lastLine = this.began;
  }

  update(bytes: number): void {
    const at = this.now();
    const finished = bytes >= this.total;
    if (!finished && at - this.lastLine < PROGRESS_INTERVAL_MS) return;
    this.lastLine = at;
    const mib = (n: number) => (n / 2 ** 20).toFixed(0);
    const percent = this.total === 0 ? 100 : Math.floor((bytes / this.total) * 100);
    const elapsed = at - this.began;
    const left = finished || bytes === 0 ? '' : `, about ${formatDuration((elapsed / bytes) * (this.total - bytes))} left`;
    this.write(`${this.what}: ${mib(bytes)}/${mib(this.total)} MiB (${percent}%)${finished ? ` in ${formatDuration(elapsed)}` : left}`);
  }
}
