/**
 * What the benchmarks that run their measures in rounds share: each
 * round runs every measure once, in an order rotated from round to round
 * (so that none always runs first on a warming or cooling machine), and a
 * figure is given as the median of the rounds with their range.
 */

export interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
}

export function spread(values: readonly number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

/** The measures in the order of round `round`: rotated by one each round. */
export function rotated<T>(items: readonly T[], round: number): T[] {
  const shift = round % items.length;
  return [...items.slice(shift), ...items.slice(0, shift)];
}

/** A figure and its range, as the reports print them: `median (min–max)`. */
export const withRange = (s: Spread, format: (n: number) => string) => `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
