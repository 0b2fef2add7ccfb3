/**
 * What the toolstack can ask of a domain (`xenmesh domain <action>`), as xl
 * offers them: the requests that go through the guest's control node and
 * the ones the toolstack does itself.
 */
export const DOMAIN_ACTIONS = ['shutdown', 'reboot', 'suspend', 'resume', 'destroy', 'sysrq'] as const;
export type DomainAction = (typeof DOMAIN_ACTIONS)[number];

export interface DomainActionOptions {
  /** How long to wait for the domain to do what it was asked (xl waits too). */
  readonly timeoutMs?: number;
  /** `shutdown`: halt instead of poweroff (the value written is `halt`). */
  readonly halt?: boolean;
  /** `resume`: the driver domain (name or domid) that serves the domain's disks from now on. */
  readonly backend?: string;
  /** `sysrq`: the key. */
  readonly key?: string;
}

/** A request the toolstack refuses or that did not happen, with the reason as a user reads it. */
export class DomainActionError extends Error {
  override readonly name = 'DomainActionError';
}

/** How long the toolstack waits for a domain to act on a request unless told otherwise. */
export const DEFAULT_ACTION_TIMEOUT_MS = 30_000;
