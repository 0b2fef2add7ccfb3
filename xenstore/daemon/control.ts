import { appendFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { XsError } from '../../shared/errors.js';
import { createLogger } from '../../shared/log.js';
import { nulStrings, splitNulStrings } from '../../shared/xs-wire.js';
import { QUOTA_DESCRIPTIONS, QUOTA_ITEMS, SOFT_QUOTA_DESCRIPTIONS, SOFT_QUOTA_ITEMS, isQuotaItem, isSoftQuotaItem, type QuotaName } from '../store/quota.js';
import { cAtoi } from './args.js';
import type { Connection } from './connection.js';
import { setQuota } from './quota-setting.js';
import type { RequestServices } from './services.js';

const log = createLogger('xenstored');

/**
 * The CONTROL commands, with the names, arguments and output formats of
 * the C xenstored that Debian's xenstore-control comes with (Xen 4.17,
 * tools/xenstore/xenstored_control.c): the tool prints what we return.
 */
interface Command {
  readonly name: string;
  readonly params: string;
  run(services: RequestServices, args: string[], conn: Connection): string;
}

const OK = 'OK';

function noArgs(args: string[]): void {
  if (args.length !== 0) throw new XsError('EINVAL', 'this command takes no arguments');
}

/** `quota` or `quota-soft` without arguments: the global values with what they limit. */
function quotaSettings(services: RequestServices, kind: 'hard' | 'soft'): string {
  const quotas = services.domains.registry.globalQuotas;
  const rows: [string, number, string][] =
    kind === 'hard'
      ? QUOTA_ITEMS.map((item) => [item, quotas.hard[item], QUOTA_DESCRIPTIONS[item]])
      : SOFT_QUOTA_ITEMS.map((item) => [item, quotas.soft[item], SOFT_QUOTA_DESCRIPTIONS[item]]);
  return `Quota settings:\n${rows.map(([name, value, descr]) => `${name.padEnd(17)}: ${String(value).padStart(8)} ${descr}\n`).join('')}`;
}

function quotaSet(services: RequestServices, args: string[], kind: 'hard' | 'soft'): string {
  if (args.length !== 2) throw new XsError('EINVAL', 'usage: set <name> <value>');
  const [name, valueText] = args as [string, string];
  const value = cAtoi(valueText);
  // xenstored's quota_set(): 0 would disable the quota, which this command never does.
  if (value < 1) throw new XsError('EINVAL', `quota value must be at least 1`);
  let quota: QuotaName;
  if (kind === 'hard' && isQuotaItem(name)) quota = { kind, item: name };
  else if (kind === 'soft' && isSoftQuotaItem(name)) quota = { kind, item: name };
  else throw new XsError('EINVAL', `unknown quota '${name}'`);
  setQuota(services.domains.registry.globalQuotas, quota, value, `control ${kind === 'hard' ? 'quota' : 'quota-soft'} set ${name} ${value}`);
  services.domains.changed(undefined);
  return OK;
}

/** `quota <domid>`: what a domain uses, as xenstored 4.17 prints it. */
function domainQuotaReport(services: RequestServices, domidText: string): string {
  const domid = cAtoi(domidText);
  const domain = services.domains.registry.find(domid);
  if (!domain) throw new XsError('ENOENT', `domain ${domid} is not known`);
  const rows: [string, number][] = [
    ['nodes', services.store.usageOf(domid).nodes],
    ['watches', domain.counts.watches],
    ['transactions', domain.counts.transactions],
    ['outstanding', domain.counts.outstanding],
    ['memory', services.domains.registry.memoryOf(domain)],
  ];
  return `Domain ${domid}:\n${rows.map(([name, value]) => `${name.padEnd(16)}: ${String(value).padStart(8)}\n`).join('')}`;
}

/** What `memreport` writes: the store, the connections and the process's memory. */
function memoryReport(services: RequestServices): string {
  const usage = process.memoryUsage();
  const lines = [
    `memory report ${new Date().toISOString()}`,
    `process: rss ${usage.rss} heapUsed ${usage.heapUsed} heapTotal ${usage.heapTotal} external ${usage.external} arrayBuffers ${usage.arrayBuffers}`,
  ];
  for (const [domid, u] of services.store.allUsage()) lines.push(`domain ${domid}: ${u.nodes} nodes, ${u.memory} bytes of nodes`);
  for (const conn of services.control.connections()) {
    lines.push(
      `connection ${conn.id} ${conn.transport.label} (d${conn.domid}): ${conn.watches.size} watches, ` +
        `${conn.transactions.size} transactions, ${conn.queuedBytes} bytes queued`,
    );
  }
  return `${lines.join('\n')}\n`;
}

const COMMANDS: Command[] = [
  {
    name: 'check',
    params: '',
    run: (services, args) => {
      noArgs(args);
      const problems = services.control.checkStore();
      for (const problem of problems) log.warn(`check: ${problem}`);
      return OK;
    },
  },
  {
    name: 'log',
    params: 'on|off',
    run: (services, args) => {
      if (args.length !== 1) throw new XsError('EINVAL', 'log takes on or off');
      if (args[0] === 'on') services.control.tracer.reopen();
      else if (args[0] === 'off') services.control.tracer.close();
      else throw new XsError('EINVAL', `log takes on or off, not '${args[0]}'`);
      return OK;
    },
  },
  {
    name: 'logfile',
    params: '<file>',
    run: (services, args) => {
      if (args.length !== 1) throw new XsError('EINVAL', 'logfile takes a file name');
      services.control.tracer.setFile(args[0]!);
      return OK;
    },
  },
  {
    name: 'memreport',
    params: '[<file>]',
    run: (services, args) => {
      if (args.length > 1) throw new XsError('EINVAL', 'memreport takes at most a file name');
      const file = args.length === 1 ? resolve(args[0]!) : services.control.tracer.fileName;
      if (!file) throw new XsError('EINVAL', 'no trace file to write the report to');
      try {
        appendFileSync(file, memoryReport(services), { mode: 0o600 });
      } catch (err) {
        throw new XsError('EINVAL', `cannot write ${file}: ${(err as Error).message}`);
      }
      return OK;
    },
  },
  {
    name: 'print',
    params: '<string>',
    run: (services, args) => {
      if (args.length !== 1) throw new XsError('EINVAL', 'print takes one string');
      log.info(`control: ${args[0]}`);
      services.control.tracer.write(`control: ${args[0]}`);
      return OK;
    },
  },
  {
    name: 'quota',
    params: '[set <name> <val>|<domid>]',
    run: (services, args) => {
      if (args.length === 0) return quotaSettings(services, 'hard');
      if (args[0] === 'set') return quotaSet(services, args.slice(1), 'hard');
      if (args.length !== 1) throw new XsError('EINVAL', 'usage: quota <domid>');
      return domainQuotaReport(services, args[0]!);
    },
  },
  {
    name: 'quota-soft',
    params: '[set <name> <val>]',
    run: (services, args) => {
      if (args.length === 0) return quotaSettings(services, 'soft');
      if (args[0] === 'set') return quotaSet(services, args.slice(1), 'soft');
      throw new XsError('EINVAL', 'usage: quota-soft [set <name> <val>]');
    },
  },
  {
    name: 'help',
    params: '',
    run: (_services, args) => {
      noArgs(args);
      return COMMANDS.map((cmd) => `${cmd.name}\t${cmd.params}\n`).join('');
    },
  },
];

/** Runs one CONTROL request: the command name, then its arguments, each NUL-terminated. */
export function runControl(services: RequestServices, conn: Connection, payload: Buffer): Buffer {
  const [name, ...args] = splitNulStrings(payload).strings;
  if (name === undefined) throw new XsError('EINVAL', 'CONTROL needs a command');
  const command = COMMANDS.find((cmd) => cmd.name === name);
  if (!command) throw new XsError('EINVAL', `unknown control command '${name}'`);
  return nulStrings(command.run(services, args, conn));
}
