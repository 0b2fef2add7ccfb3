/**
 * A broken oracle: what the fuzzer saw that the protocol does not allow,
 * with what led up to it, so that the report of a failing batch says more
 * than its seed.
 */
export class FuzzViolation extends Error {
  constructor(
    message: string,
    /** The last things the fuzzer did before it saw the problem, oldest first. */
    readonly trail: readonly string[] = [],
  ) {
    super(message);
    this.name = 'FuzzViolation';
  }
}

/** The last few things a fuzzing actor did, for a FuzzViolation's trail. */
export class Trail {
  private readonly entries: string[] = [];

  constructor(private readonly keep = 16) {}

  add(entry: string): void {
    this.entries.push(entry);
    if (this.entries.length > this.keep) this.entries.shift();
  }

  get recent(): readonly string[] {
    return [...this.entries];
  }

  violation(message: string): FuzzViolation {
    return new FuzzViolation(message, this.recent);
  }
}
