/**
 * `xenmesh domain <action> <domain>`: xl's domain commands for the host
 * that `xenmesh up` runs, sent over its toolstack socket.
 */
import type { Command } from 'commander';
import { DEFAULT_ACTION_TIMEOUT_MS, DOMAIN_ACTIONS, type DomainAction, type DomainActionOptions } from '../../control/actions.js';
import { SYSRQ_KEY_RULE, sysrqKeyError } from '../../control/protocol.js';
import { defaultSocketHelp, defaultSocketPath } from '../../shared/default-paths.js';
import { UsageError, parseSeconds, runs, subcommand } from './command-line.js';
import { callToolstack } from './toolstack-call.js';
import { TOOLSTACK_SOCKET_SUFFIX, type ToolstackRequest } from './toolstack-protocol.js';

export const DOMAIN_USAGE = `Usage: xenmesh domain <action> <domain> [options]

Asks the host that \`xenmesh up\` runs to act on one of its domains, named by
its name or its domid, as xl asks libxl: through the toolstack socket the
host serves next to xenstored's (PATH${TOOLSTACK_SOCKET_SUFFIX} for --socket PATH).
Prints what happened. Exits 1 when the host refuses (as xl, it will not ask
a domain without PV control to shut down) or the domain does not act in time.

Actions:
  shutdown <domain>       ask the domain to power off (--halt: to halt)
  reboot <domain>         ask the domain to reboot; it runs again under a new domid
  halt <domain>           ask the domain to halt
  suspend <domain>        ask the domain to suspend itself
  resume <domain>         resume a suspended domain
  pause <domain>          stop scheduling the domain (its devices stay)
  unpause <domain>        let a paused domain run again
  destroy <domain>        destroy the domain at once, without asking it
  sysrq <domain> <key>    send the domain a sysrq key (${SYSRQ_KEY_RULE})

Options:
  --socket PATH       the host's xenstored socket; by default xenmesh up's,
                      ${defaultSocketHelp('                      ')}
  --timeout SECONDS   how long to wait for the domain to act (default ${DEFAULT_ACTION_TIMEOUT_MS / 1000})
  --halt              shutdown: halt instead of powering off
  --backend DOMAIN    resume: the driver domain that serves its disks from now on`;

interface DomainFlags {
  socket?: string;
  timeout?: string;
  halt?: boolean;
  backend?: string;
}

export function domainCommand(): Command {
  const command = subcommand('domain', DOMAIN_USAGE)
    .argument('[action]')
    .argument('[domain]')
    .argument('[rest...]')
    .option('--socket <path>')
    .option('--timeout <seconds>')
    .option('--halt')
    .option('--backend <domain>');
  return runs(command, async (action: string | undefined, domain: string | undefined, rest: string[], flags: DomainFlags) => {
    const request = domainRequest(action, domain, rest, flags);
    return callToolstack('xenmesh domain', flags.socket ?? defaultSocketPath(), request);
  });
}

function isDomainAction(word: string): word is DomainAction {
  return (DOMAIN_ACTIONS as readonly string[]).includes(word);
}

/** The request the arguments make; throws a UsageError on bad arguments. */
function domainRequest(action: string | undefined, domain: string | undefined, rest: string[], flags: DomainFlags): ToolstackRequest {
  if (action === undefined) throw new UsageError(`which action? one of ${DOMAIN_ACTIONS.join(', ')}`);
  if (!isDomainAction(action)) throw new UsageError(`unknown action '${action}'; the actions are ${DOMAIN_ACTIONS.join(', ')}`);
  if (domain === undefined || domain === '') throw new UsageError(`${action} needs a domain: its name or its domid`);

  const options: { -readonly [K in keyof DomainActionOptions]: DomainActionOptions[K] } = {};
  if (action === 'sysrq') {
    const [key, ...extra] = rest;
    if (key === undefined) throw new UsageError(`sysrq needs a key: ${SYSRQ_KEY_RULE}`);
    const keyError = sysrqKeyError(key);
    if (keyError) throw new UsageError(keyError);
    if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
    options.key = key;
  } else if (rest.length > 0) {
    throw new UsageError(`unexpected argument '${rest[0]}'`);
  }
  if (flags.halt) {
    if (action !== 'shutdown') throw new UsageError('--halt goes with shutdown only');
    options.halt = true;
  }
  if (flags.backend !== undefined) {
    if (action !== 'resume') throw new UsageError('--backend goes with resume only');
    if (flags.backend === '') throw new UsageError('--backend needs a domain: its name or its domid');
    options.backend = flags.backend;
  }
  if (flags.timeout !== undefined) options.timeoutMs = parseSeconds('--timeout', flags.timeout);
  return { action, domain, options };
}
