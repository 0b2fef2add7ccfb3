/** What the host tells the xenstored worker. */
export interface XenstoredRoleConfig {
  socket: string;
  traceFile?: string;
  /** Where a xenstored that is restarted leaves its state for its successor. */
  stateFile: string;
  /** Take over the state a predecessor left in `stateFile`. */
  restore: boolean;
  /**
   * Where xenstored journals its commits. A worker that finds a journal
   * there (its predecessor crashed and the supervisor restarted it) takes
   * the store over from it; the host empties the directory when it boots.
   */
  journalDir: string;
}

/** The stop reason that makes xenstored save its state for the one that replaces it. */
export const XENSTORED_RESTART = 'restart';
