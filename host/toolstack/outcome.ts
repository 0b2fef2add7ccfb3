/**
 * The answer to a request that goes through a domain's control node
 * (shutdown, halt, reboot, suspend), from what became of the domain: xl
 * waits for the domain to go, come back or be saved, and so does the host.
 * A domain may end otherwise than it was asked (it rebooted itself as it
 * was asked to suspend; a destroy overtook its reboot; it could not be
 * created again after it shut down to reboot). The answer always says what
 * happened, and is an error when that is not what was asked.
 */
import { SHUTDOWN_REQUESTS, type ShutdownRequest } from '../../control/protocol.js';
import type { ShutdownReasonName } from '../../shared/platform.js';

/** What became of a domain, as the host's lifecycle events tell it. */
export type DomainEnd =
  | { readonly kind: 'destroyed'; readonly reason: ShutdownReasonName | undefined }
  | { readonly kind: 'rebooted'; readonly domid: number }
  | { readonly kind: 'saved'; readonly devices: number }
  /** It shut down to reboot, and was destroyed but not created again (`why`: a disk refused, say). */
  | { readonly kind: 'rebootFailed'; readonly why: string };

/** An end that left the domain destroyed, running again or saved, each of which may be what was asked. */
type SettledEnd = Exclude<DomainEnd, { readonly kind: 'rebootFailed' }>;

export type Verdict = { readonly ok: true; readonly message: string } | { readonly ok: false; readonly error: string };

/** Each request as what the domain was expected to be doing. */
const DOING: Record<ShutdownRequest, string> = {
  poweroff: 'powering off',
  halt: 'halting',
  reboot: 'rebooting',
  suspend: 'suspending',
  crash: 'crashing',
};

/** The answer to `request` of the domain `label` names, now that it has ended as `end`. */
export function judgeOutcome(label: string, request: ShutdownRequest, end: DomainEnd): Verdict {
  // Never what was asked: why the domain is not running again is the answer.
  if (end.kind === 'rebootFailed') {
    const instead = request === 'reboot' ? '' : ` instead of ${DOING[request]}`;
    return { ok: false, error: `${label} shut down to reboot${instead}, but was not started again: ${end.why}` };
  }
  if (isWhatWasAsked(request, end)) return { ok: true, message: `${label} ${done(request, end)}` };
  if (request === 'reboot' && end.kind === 'destroyed' && end.reason === 'reboot') {
    return { ok: false, error: `${label} was destroyed during its reboot; it did not come back` };
  }
  return { ok: false, error: `${label} ${happened(end)} instead of ${DOING[request]}` };
}

function isWhatWasAsked(request: ShutdownRequest, end: SettledEnd): boolean {
  switch (end.kind) {
    case 'rebooted':
      return request === 'reboot';
    case 'saved':
      return request === 'suspend';
    case 'destroyed':
      // A reboot or a suspend that ends in a destroy did not happen, whatever the domain's reason.
      return request !== 'reboot' && request !== 'suspend' && end.reason === SHUTDOWN_REQUESTS[request];
  }
}

/** What was asked, done. */
function done(request: ShutdownRequest, end: SettledEnd): string {
  switch (end.kind) {
    case 'rebooted':
      return `rebooted; it runs again as domain ${end.domid}`;
    case 'saved':
      return `suspended; ${end.devices} device(s) released by their backends; resume brings it back`;
    case 'destroyed':
      // A halted domain shuts down with the reason poweroff (manage.c), but the user asked to halt.
      return request === 'halt' ? 'halted' : describeEnd(end.reason);
  }
}

/** What happened instead. */
function happened(end: SettledEnd): string {
  switch (end.kind) {
    case 'rebooted':
      return `rebooted (it runs again as domain ${end.domid})`;
    case 'saved':
      return 'suspended (resume brings it back)';
    case 'destroyed':
      return describeEnd(end.reason);
  }
}

/** How a domain's end reads, from why it shut down (undefined: it was destroyed running). */
export function describeEnd(reason: ShutdownReasonName | undefined): string {
  switch (reason) {
    case 'poweroff':
      return 'powered off';
    case 'crash':
      return 'crashed and was destroyed';
    case 'reboot':
      return 'was destroyed during a reboot';
    case 'suspend':
      return 'was destroyed while suspended';
    case undefined:
      return 'was destroyed';
    default:
      return `shut down (${reason}) and was destroyed`;
  }
}
