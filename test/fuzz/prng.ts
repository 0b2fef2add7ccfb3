/**
 * A small seeded pseudo-random generator for the fuzzers: xoshiro128**
 * seeded through splitmix32, so that a 32-bit seed names a whole batch and
 * the same seed replays the same inputs on any machine. Not for anything
 * that needs to be unpredictable.
 */

/** Seeds are unsigned 32-bit integers, printed in decimal. */
export type Seed = number;

/** splitmix32: spreads one 32-bit state into well-mixed words. */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** The seed of batch `index` of a run: every batch can be replayed alone from its own seed. */
export function batchSeed(runSeed: Seed, index: number): Seed {
  const state = { s: (runSeed ^ Math.imul(index + 1, 0x632be5ab)) | 0 };
  splitmix32(state);
  return splitmix32(state);
}

/** A seed from the clock and Math.random, for runs that are not told one. */
export function freshSeed(): Seed {
  return (Date.now() ^ Math.floor(Math.random() * 0x1_0000_0000)) >>> 0;
}

/** Parses a seed given on the command line or in the environment (decimal or 0x hex). */
export function parseSeed(text: string): Seed {
  const value = Number(text.trim());
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw new Error(`'${text}' is not a seed (an unsigned 32-bit integer)`);
  return value >>> 0;
}

export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: Seed) {
    const state = { s: seed | 0 };
    this.a = splitmix32(state);
    this.b = splitmix32(state);
    this.c = splitmix32(state);
    this.d = splitmix32(state);
  }

  /** An independent generator for one part of a batch, so that parts do not shift each other's draws. */
  fork(label: string): Prng {
    let h = this.seed ^ 0x5bd1e995;
    for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
    return new Prng(h >>> 0);
  }

  /** Next 32 random bits (xoshiro128**). */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.u32() / 0x1_0000_0000;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** An integer in [min, max], both included. */
  int(min: number, max: number): number {
    return min + this.below(max - min + 1);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[this.below(items.length)]!;
  }

  /** Picks by weight: `[[weight, value], ...]`. */
  weighted<T>(choices: readonly (readonly [number, T])[]): T {
    const total = choices.reduce((sum, [w]) => sum + w, 0);
    let x = this.float() * total;
    for (const [w, value] of choices) {
      if ((x -= w) < 0) return value;
    }
    return choices[choices.length - 1]![1];
  }

  /** A uniformly random 64-bit unsigned integer. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  /** A length skewed towards small values but reaching `max`: most fuzz inputs are short, a few are long. */
  length(max: number): number {
    const r = this.float();
    if (r < 0.6) return this.int(0, Math.min(max, 16));
    if (r < 0.9) return this.int(0, Math.min(max, 256));
    return this.int(0, max);
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }

  /** A string of `n` characters drawn from `alphabet`. */
  string(n: number, alphabet: string): string {
    let out = '';
    for (let i = 0; i < n; i++) out += alphabet[this.below(alphabet.length)];
    return out;
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.below(i + 1);
      [items[i], items[j]] = [items[j]!, items[i]!];
    }
    return items;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
