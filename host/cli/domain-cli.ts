/**
 * `xenmesh domain <action> <domain>`: xl's domain commands for the host
 * that `xenmesh up` runs, sent over its toolstack socket.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_ACTION_TIMEOUT_MS, DOMAIN_ACTIONS, type DomainActionOptions } from '../../control/actions.js';
import { SYSRQ_KEY_RULE, sysrqKeyError } from '../../control/protocol.js';
import { defaultSocketHelp, defaultSocketPath } from '../../shared/default-paths.js';
import { HostUnreachableError, askHost } from './toolstack-client.js';
import { TOOLSTACK_SOCKET_SUFFIX, isDomainAction, toolstackSocketPath, type DomainRequest } from './toolstack-protocol.js';

export const DOMAIN_USAGE = `Usage: xenmesh domain <action> <domain> [options]

Asks the host that \`xenmesh up\` runs to act on one of its domains, named by
its name or its domid, as xl asks libxl: through the toolstack socket the
host serves next to xenstored's (PATH${TOOLSTACK_SOCKET_SUFFIX} for --socket PATH).
Prints what happened. Exits 1 when the host refuses (as xl, it will not ask
a domain without PV control to shut down) or the domain does not act in time.

Actions:
  shutdown <domain>       ask the domain to power off (--halt: to halt)
  reboot <domain>         ask the domain to reboot, and start it again
  suspend <domain>        ask the domain to suspend itself
  resume <domain>         resume a suspended domain
  destroy <domain>        destroy the domain at once, without asking it
  sysrq <domain> <key>    send the domain a sysrq key (${SYSRQ_KEY_RULE})

Options:
  --socket PATH       the host's xenstored socket; by default xenmesh up's,
                      ${defaultSocketHelp('                      ')}
  --timeout SECONDS   how long to wait for the domain to act (default ${DEFAULT_ACTION_TIMEOUT_MS / 1000})
  --halt              shutdown: halt instead of powering off
  --backend DOMAIN    resume: the driver domain that serves its disks from now on`;

/**
 * How much longer than the domain's own deadline the client waits for an
 * answer: the toolstack still has its own work to do once the domain acted
 * (building it again, plugging its devices).
 */
const REPLY_GRACE_MS = 30_000;

/** Arguments that make no request; the message is printed above the usage. */
class UsageError extends Error {}

export async function runDomain(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseDomainArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError) && !isParseArgsError(err)) throw err;
    process.stderr.write(`xenmesh domain: ${err.message}\n${DOMAIN_USAGE}\n`);
    return 1;
  }
  if (parsed === 'help') {
    process.stdout.write(`${DOMAIN_USAGE}\n`);
    return 0;
  }
  const { socket, request } = parsed;
  const path = toolstackSocketPath(socket);
  const waitMs = (request.options.timeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS) + REPLY_GRACE_MS;
  try {
    const reply = await askHost(path, request, waitMs);
    if (!reply.ok) {
      process.stderr.write(`xenmesh domain: ${reply.error}\n`);
      return 1;
    }
    process.stdout.write(`${reply.message}\n`);
    return 0;
  } catch (err) {
    const message =
      err instanceof HostUnreachableError && err.noHost
        ? `no xenmesh host is running on ${socket} (${err.message}); start one with: xenmesh up --socket ${socket}`
        : (err as Error).message;
    process.stderr.write(`xenmesh domain: ${message}\n`);
    return 1;
  }
}

/** parseArgs' own complaints (an unknown option, a missing value) are usage errors too. */
function isParseArgsError(err: unknown): err is Error {
  const code = (err as { code?: unknown } | undefined)?.code;
  return err instanceof Error && typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS');
}

/** The request the arguments make, or 'help'; throws a UsageError (or parseArgs' own error) on bad arguments. */
function parseDomainArgs(argv: string[]): 'help' | { socket: string; request: DomainRequest } {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      timeout: { type: 'string' },
      halt: { type: 'boolean' },
      backend: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return 'help';
  const [action, domain, ...rest] = positionals;
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
  if (values.halt) {
    if (action !== 'shutdown') throw new UsageError('--halt goes with shutdown only');
    options.halt = true;
  }
  if (values.backend !== undefined) {
    if (action !== 'resume') throw new UsageError('--backend goes with resume only');
    if (values.backend === '') throw new UsageError('--backend needs a domain: its name or its domid');
    options.backend = values.backend;
  }
  if (values.timeout !== undefined) {
    const seconds = Number(values.timeout);
    if (values.timeout.trim() === '' || !Number.isFinite(seconds) || seconds <= 0) {
      throw new UsageError('--timeout must be a positive number of seconds');
    }
    options.timeoutMs = seconds * 1000;
  }
  return { socket: values.socket ?? defaultSocketPath(), request: { action, domain, options } };
}
