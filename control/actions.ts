/**
 * What the toolstack can ask of a domain (`xenmesh domain <action>`), as xl
 * offers them: the requests that go through the guest's control node and
 * the ones the toolstack does itself.
 */
export const DOMAIN_ACTIONS = ['shutdown', 'reboot', 'halt', 'suspend', 'resume', 'pause', 'unpause', 'destroy', 'sysrq'] as const;
export type DomainAction = (typeof DOMAIN_ACTIONS)[number];

/**
 * What the toolstack does besides acting on one running domain, as xl's
 * list, create, block-list, block-attach and block-detach do.
 */
export const HOST_ACTIONS = ['list', 'create', 'block-list', 'block-attach', 'block-detach'] as const;
export type HostAction = (typeof HOST_ACTIONS)[number];

/** Everything the toolstack socket and the host's prompt take. */
export const TOOLSTACK_ACTIONS = [...DOMAIN_ACTIONS, ...HOST_ACTIONS] as const;
export type ToolstackAction = (typeof TOOLSTACK_ACTIONS)[number];

export interface DomainActionOptions {
  /** How long to wait for the domain to do what it was asked (xl waits too). */
  readonly timeoutMs?: number;
  /** `shutdown`: halt instead of poweroff (the value written is `halt`). */
  readonly halt?: boolean;
  /**
   * `resume`: the driver domain (name or domid) that serves the domain's
   * disks from now on; `block-attach`, `create`: the one that serves the
   * new disks.
   */
  readonly backend?: string;
  /** `sysrq`: the key. */
  readonly key?: string;
  /** `block-attach`: the disk's image (an absolute path). */
  readonly image?: string;
  /** `block-attach`, `block-detach`: the guest's name for the disk (xvda, xvdb, ...). */
  readonly vdev?: string;
  /** `block-attach`: serve the disk read-only (mode r). */
  readonly readOnly?: boolean;
  /** `create`: the new domain's disks' images (absolute paths), xvda first. */
  readonly disks?: readonly string[];
}

/** A request the toolstack refuses or that did not happen, with the reason as a user reads it. */
export class DomainActionError extends Error {
  override readonly name = 'DomainActionError';
}

/** How long the toolstack waits for a domain to act on a request unless told otherwise. */
export const DEFAULT_ACTION_TIMEOUT_MS = 30_000;
