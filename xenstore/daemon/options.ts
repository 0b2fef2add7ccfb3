import { XENSTORE_REL_PATH_MAX } from '../../shared/xs-wire.js';
import { SHORTEST_USABLE_PATH_MAX } from '../store/path.js';
import { defaultQuotas, isQuotaItem, isSoftQuotaItem, quotaValueProblem, type QuotaItem, type QuotaSet } from '../store/quota.js';
import { defaultSocketHelp, defaultSocketPath } from '../../shared/default-paths.js';
import { DEFAULT_QUEUED_OUTPUT_LIMIT } from './output-limit.js';
import { DEFAULT_UNREAD_OUTPUT_TIMEOUT_MS, DEFAULT_WATCH_EVENT_TIMEOUT_MS } from './xenstored.js';

/**
 * `--hypervisor`: serve the domains of the Xen host this runs in (`xen`),
 * only the Unix socket (`none`), or the host's where dom0's kernel offers
 * its xenstore ring (`auto`).
 */
export type HypervisorMode = 'auto' | 'xen' | 'none';
const HYPERVISOR_MODES: readonly string[] = ['auto', 'xen', 'none'] satisfies HypervisorMode[];

/** The command line of `xenmesh xenstored`, with the flags of Xen's C xenstored. */
export interface XenstoredOptions {
  socket: string;
  traceFile: string | undefined;
  pidFile: string | undefined;
  quotas: QuotaSet;
  watchEventTimeoutMs: number;
  unreadOutputTimeoutMs: number;
  queuedOutputLimit: number;
  /** Where the journal lives (default: journalDirFor(socket)); undefined with --no-journal. */
  journalDir: string | undefined;
  /** --log-format, checked by the logger (shared/log.ts). */
  logFormat: string | undefined;
  hypervisor: HypervisorMode;
  help: boolean;
}

/**
 * The journal directory of a daemon serving `socket` unless told otherwise:
 * next to its socket, so that it is under /var/run (gone with the machine,
 * as the store is) and two daemons on two sockets never share one.
 */
export function journalDirFor(socket: string): string {
  return `${socket}.journal`;
}

export class OptionError extends Error {}

export const XENSTORED_USAGE = `Usage: xenmesh xenstored [options]

  --socket <path>          Unix socket to serve; one that a running daemon or
                           host serves is refused. By default
                           ${defaultSocketHelp('                           ')}
  -T, --trace <file>       trace every request and reply to <file> (also --trace-file)
  -F, --pid-file <file>    write the daemon's pid to <file>
  -E, --entry-nb <nb>      limit the number of nodes per domain (default 1000)
  -S, --entry-size <size>  limit the size of a node (default 2048)
  -W, --watch-nb <nb>      limit the number of watches per domain (default 128)
  -t, --transaction <nb>   limit the number of transactions per domain (default 10)
  -A, --perm-nb <nb>       limit the number of permissions per node (default 5)
  -M, --path-max <chars>   limit the length of a node path (${SHORTEST_USABLE_PATH_MAX} to ${XENSTORE_REL_PATH_MAX})
  -Q, --quota <what>=<nb>  set the quota <what>: nodes, watches, outstanding, memory,
                           transactions, transaction-nodes, permissions,
                           path-max, node-size
  -q, --quota-soft <what>=<nb>  set a soft quota (memory), which only warns
  -w, --timeout <what>=<seconds>  watch-event: how long a watch event may wait
                           for an unprivileged domain (default 20);
                           unread-output: how long a running domain may leave
                           its ring unread before it is cut off (default ${DEFAULT_UNREAD_OUTPUT_TIMEOUT_MS / 1000}; 0: never)
  --queued-output-max <bytes>  bound the memory held by output waiting for all
                           clients together (default ${DEFAULT_QUEUED_OUTPUT_LIMIT}, 128 MiB; 0: none);
                           over it, the client holding the most is cut off
  --journal-dir <dir>      record every commit in <dir>, and recover the store
                           from it after a crash (default <socket>.journal)
  --no-journal             keep no journal: a crash loses the store
  --hypervisor auto|xen|none  serve the domains of the Xen host this runs in
                           (xen: dom0's ring from /proc/xen/xsd_kva and
                           xsd_port, other domains' rings as the toolstack
                           introduces them), or only the socket (none);
                           auto (the default) is xen where /proc/xen/xsd_port is
  --log-format json|text  log lines as JSON objects (pino's: time, level,
                           domain, component, msg) or as text (the default);
                           XENMESH_LOG=debug|info|warn|error sets the threshold
  -N, --no-fork            accepted for compatibility: the daemon always runs in the foreground
  -H, --help               show this help

A quota of 0 disables the check. The privileged domain (dom0, and every socket
client) is exempt from quotas. SIGTERM and SIGINT stop the daemon cleanly.`;

/** Flags taking a value, by every name they go by. */
const VALUE_FLAGS: Record<string, string> = {
  '--socket': 'socket',
  '-T': 'trace',
  '--trace': 'trace',
  '--trace-file': 'trace',
  '-F': 'pid-file',
  '--pid-file': 'pid-file',
  '-E': 'nodes',
  '--entry-nb': 'nodes',
  '-S': 'node-size',
  '--entry-size': 'node-size',
  '-W': 'watches',
  '--watch-nb': 'watches',
  '-t': 'transactions',
  '--transaction': 'transactions',
  '-A': 'permissions',
  '--perm-nb': 'permissions',
  '-M': 'path-max',
  '--path-max': 'path-max',
  '-Q': 'quota',
  '--quota': 'quota',
  '-q': 'quota-soft',
  '--quota-soft': 'quota-soft',
  '-w': 'timeout',
  '--timeout': 'timeout',
  '--queued-output-max': 'queued-output-max',
  '--journal-dir': 'journal-dir',
  '--log-format': 'log-format',
  '--hypervisor': 'hypervisor',
};

/** xenstored's get_optval_uint(): a whole decimal number no larger than INT_MAX. */
function unsignedValue(text: string): number {
  if (!/^[0-9]+$/.test(text) || Number(text) > 0x7fffffff) throw new OptionError(`invalid parameter value "${text}"`);
  return Number(text);
}

/**
 * Sets a hard quota from the command line: path-max no longer than
 * XENSTORE_REL_PATH_MAX, as xenstored clamps it, and no value that would
 * leave domains unable to use the store.
 */
function setHardQuota(quotas: QuotaSet, item: QuotaItem, value: number): void {
  const clamped = item === 'path-max' ? Math.min(value, XENSTORE_REL_PATH_MAX) : value;
  const problem = quotaValueProblem(item, clamped);
  if (problem) throw new OptionError(problem);
  quotas.hard[item] = clamped;
}

function assignment(text: string, what: string): [string, number] {
  const eq = text.indexOf('=');
  if (eq < 0) throw new OptionError(`${what} must be specified via <what>=<nb>`);
  return [text.slice(0, eq), unsignedValue(text.slice(eq + 1))];
}

export function parseXenstoredOptions(argv: readonly string[]): XenstoredOptions {
  const options: XenstoredOptions = {
    socket: '',
    traceFile: undefined,
    pidFile: undefined,
    quotas: defaultQuotas(),
    watchEventTimeoutMs: DEFAULT_WATCH_EVENT_TIMEOUT_MS,
    unreadOutputTimeoutMs: DEFAULT_UNREAD_OUTPUT_TIMEOUT_MS,
    queuedOutputLimit: DEFAULT_QUEUED_OUTPUT_LIMIT,
    journalDir: undefined,
    logFormat: undefined,
    hypervisor: 'auto',
    help: false,
  };
  let socket: string | undefined;
  let journal: 'default' | 'none' | 'given' = 'default';
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i]!;
    let value: string | undefined;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '-H' || arg === '--help' || arg === '-h') {
      options.help = true;
      continue;
    }
    if (arg === '-N' || arg === '--no-fork') continue;
    if (arg === '--no-journal') {
      journal = 'none';
      continue;
    }
    const name = VALUE_FLAGS[arg];
    if (!name) throw new OptionError(`unknown option '${arg}'`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new OptionError(`option '${arg}' needs a value`);
    }
    switch (name) {
      case 'socket':
        socket = value;
        break;
      case 'trace':
        options.traceFile = value;
        break;
      case 'pid-file':
        options.pidFile = value;
        break;
      case 'quota': {
        const [what, nb] = assignment(value, 'quotas');
        if (!isQuotaItem(what)) throw new OptionError(`unknown quota "${what}"`);
        setHardQuota(options.quotas, what, nb);
        break;
      }
      case 'quota-soft': {
        const [what, nb] = assignment(value, 'quotas');
        if (!isSoftQuotaItem(what)) throw new OptionError(`unknown soft quota "${what}"`);
        options.quotas.soft[what] = nb;
        break;
      }
      case 'timeout': {
        const [what, seconds] = assignment(value, 'timeouts');
        if (what === 'watch-event') options.watchEventTimeoutMs = seconds * 1000;
        else if (what === 'unread-output') options.unreadOutputTimeoutMs = seconds * 1000;
        else throw new OptionError(`unknown timeout "${what}"`);
        break;
      }
      case 'journal-dir':
        options.journalDir = value;
        journal = 'given';
        break;
      case 'log-format':
        options.logFormat = value;
        break;
      case 'hypervisor':
        if (!HYPERVISOR_MODES.includes(value)) throw new OptionError(`--hypervisor must be auto, xen or none, not ${JSON.stringify(value)}`);
        options.hypervisor = value as HypervisorMode;
        break;
      case 'queued-output-max':
        options.queuedOutputLimit = unsignedValue(value);
        break;
      default: {
        if (!isQuotaItem(name)) throw new OptionError(`unknown option '${arg}'`);
        setHardQuota(options.quotas, name, unsignedValue(value));
      }
    }
  }
  // Only when none is given: the default depends on who runs it and what is writable.
  options.socket = socket ?? defaultSocketPath();
  if (journal === 'default') options.journalDir = journalDirFor(options.socket);
  if (journal === 'none') options.journalDir = undefined;
  return options;
}
