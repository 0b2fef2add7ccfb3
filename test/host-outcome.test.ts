/**
 * The toolstack's answer to shutdown, halt, reboot and suspend, for every
 * way a domain can end: what was asked is answered as done; anything else
 * is an error that says what happened instead. A domain that shut down to
 * reboot and could not be created again is never what was asked: the
 * answer is why it was not.
 */
import t from 'tap';
import type { ShutdownRequest } from '../control/protocol.js';
import { judgeOutcome, type DomainEnd } from '../host/toolstack/outcome.js';

const LABEL = 'domain guest (2)';
const ENDS: Record<string, DomainEnd> = {
  poweroff: { kind: 'destroyed', reason: 'poweroff' },
  crash: { kind: 'destroyed', reason: 'crash' },
  destroyed: { kind: 'destroyed', reason: undefined },
  'destroyed rebooting': { kind: 'destroyed', reason: 'reboot' },
  'destroyed suspended': { kind: 'destroyed', reason: 'suspend' },
  watchdog: { kind: 'destroyed', reason: 'watchdog' },
  rebooted: { kind: 'rebooted', domid: 3 },
  saved: { kind: 'saved', devices: 2 },
  'reboot failed': { kind: 'rebootFailed', why: 'disk xvda: /images/guest.img does not exist' },
};

/** Each request, and each end: the answer expected, `ok: …` or `error: …`. */
const EXPECTED: Record<ShutdownRequest, Record<keyof typeof ENDS, string>> = {
  poweroff: {
    poweroff: 'ok: domain guest (2) powered off',
    crash: 'error: domain guest (2) crashed and was destroyed instead of powering off',
    destroyed: 'error: domain guest (2) was destroyed instead of powering off',
    'destroyed rebooting': 'error: domain guest (2) was destroyed during a reboot instead of powering off',
    'destroyed suspended': 'error: domain guest (2) was destroyed while suspended instead of powering off',
    watchdog: 'error: domain guest (2) shut down (watchdog) and was destroyed instead of powering off',
    rebooted: 'error: domain guest (2) rebooted (it runs again as domain 3) instead of powering off',
    saved: 'error: domain guest (2) suspended (resume brings it back) instead of powering off',
    'reboot failed': 'error: domain guest (2) shut down to reboot instead of powering off, but was not started again: disk xvda: /images/guest.img does not exist',
  },
  halt: {
    poweroff: 'ok: domain guest (2) halted',
    crash: 'error: domain guest (2) crashed and was destroyed instead of halting',
    destroyed: 'error: domain guest (2) was destroyed instead of halting',
    'destroyed rebooting': 'error: domain guest (2) was destroyed during a reboot instead of halting',
    'destroyed suspended': 'error: domain guest (2) was destroyed while suspended instead of halting',
    watchdog: 'error: domain guest (2) shut down (watchdog) and was destroyed instead of halting',
    rebooted: 'error: domain guest (2) rebooted (it runs again as domain 3) instead of halting',
    saved: 'error: domain guest (2) suspended (resume brings it back) instead of halting',
    'reboot failed': 'error: domain guest (2) shut down to reboot instead of halting, but was not started again: disk xvda: /images/guest.img does not exist',
  },
  reboot: {
    poweroff: 'error: domain guest (2) powered off instead of rebooting',
    crash: 'error: domain guest (2) crashed and was destroyed instead of rebooting',
    destroyed: 'error: domain guest (2) was destroyed instead of rebooting',
    'destroyed rebooting': 'error: domain guest (2) was destroyed during its reboot; it did not come back',
    'destroyed suspended': 'error: domain guest (2) was destroyed while suspended instead of rebooting',
    watchdog: 'error: domain guest (2) shut down (watchdog) and was destroyed instead of rebooting',
    rebooted: 'ok: domain guest (2) rebooted; it runs again as domain 3',
    saved: 'error: domain guest (2) suspended (resume brings it back) instead of rebooting',
    'reboot failed': 'error: domain guest (2) shut down to reboot, but was not started again: disk xvda: /images/guest.img does not exist',
  },
  suspend: {
    poweroff: 'error: domain guest (2) powered off instead of suspending',
    crash: 'error: domain guest (2) crashed and was destroyed instead of suspending',
    destroyed: 'error: domain guest (2) was destroyed instead of suspending',
    'destroyed rebooting': 'error: domain guest (2) was destroyed during a reboot instead of suspending',
    'destroyed suspended': 'error: domain guest (2) was destroyed while suspended instead of suspending',
    watchdog: 'error: domain guest (2) shut down (watchdog) and was destroyed instead of suspending',
    rebooted: 'error: domain guest (2) rebooted (it runs again as domain 3) instead of suspending',
    saved: 'ok: domain guest (2) suspended; 2 device(s) released by their backends; resume brings it back',
    'reboot failed': 'error: domain guest (2) shut down to reboot instead of suspending, but was not started again: disk xvda: /images/guest.img does not exist',
  },
  crash: {
    poweroff: 'error: domain guest (2) powered off instead of crashing',
    crash: 'ok: domain guest (2) crashed and was destroyed',
    destroyed: 'error: domain guest (2) was destroyed instead of crashing',
    'destroyed rebooting': 'error: domain guest (2) was destroyed during a reboot instead of crashing',
    'destroyed suspended': 'error: domain guest (2) was destroyed while suspended instead of crashing',
    watchdog: 'error: domain guest (2) shut down (watchdog) and was destroyed instead of crashing',
    rebooted: 'error: domain guest (2) rebooted (it runs again as domain 3) instead of crashing',
    saved: 'error: domain guest (2) suspended (resume brings it back) instead of crashing',
    'reboot failed': 'error: domain guest (2) shut down to reboot instead of crashing, but was not started again: disk xvda: /images/guest.img does not exist',
  },
};

for (const [request, byEnd] of Object.entries(EXPECTED) as [ShutdownRequest, Record<string, string>][]) {
  t.test(`${request}: the answer says what happened`, async (t) => {
    for (const [name, end] of Object.entries(ENDS)) {
      const verdict = judgeOutcome(LABEL, request, end);
      t.equal(verdict.ok ? `ok: ${verdict.message}` : `error: ${verdict.error}`, byEnd[name], `ended: ${name}`);
    }
  });
}
