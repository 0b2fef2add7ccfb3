/**
 * Quotas with the names, meanings and defaults of Xen's C xenstored, in the
 * order its `xenstore-control quota` lists them (Xen 4.17,
 * tools/xenstore/xenstored_control.c). A value of 0 disables the check; a
 * quota of N allows N. The privileged domain is exempt from every quota.
 */
import { SHORTEST_USABLE_PATH_MAX } from './path.js';

export const QUOTA_ITEMS = [
  'nodes',
  'watches',
  'transactions',
  'outstanding',
  'transaction-nodes',
  'memory',
  'node-size',
  'path-max',
  'permissions',
] as const;

export type QuotaItem = (typeof QUOTA_ITEMS)[number];

export const QUOTA_DESCRIPTIONS: Record<QuotaItem, string> = {
  nodes: 'Nodes per domain',
  watches: 'Watches per domain',
  transactions: 'Transactions per domain',
  outstanding: 'Outstanding requests per domain',
  'transaction-nodes': 'Max. number of accessed nodes per transaction',
  memory: 'Total Xenstore memory per domain (error level)',
  'node-size': 'Max. size of a node',
  'path-max': 'Max. length of a node path',
  permissions: 'Max. number of permissions per node',
};

export const SOFT_QUOTA_DESCRIPTIONS = {
  memory: 'Total Xenstore memory per domain (warning level)',
} as const;

/** Hard quota defaults of Xen's C xenstored. */
export const DEFAULT_HARD_QUOTAS: Readonly<Record<QuotaItem, number>> = {
  nodes: 1000,
  watches: 128,
  transactions: 10,
  outstanding: 20,
  'transaction-nodes': 1024,
  memory: 2 * 1024 * 1024 + 512 * 1024, // 2.5 MB
  'node-size': 2048,
  'path-max': 2048, // XENSTORE_REL_PATH_MAX
  permissions: 5,
};

/** Soft quotas only warn; xenstored has one, for memory (2 MB). */
export const SOFT_QUOTA_ITEMS = ['memory'] as const satisfies readonly QuotaItem[];
export type SoftQuotaItem = (typeof SOFT_QUOTA_ITEMS)[number];
export const DEFAULT_SOFT_QUOTAS: Readonly<Record<SoftQuotaItem, number>> = {
  memory: 2 * 1024 * 1024,
};

/** The prefix GET_QUOTA/SET_QUOTA put before a soft quota's name. */
export const SOFT_PREFIX = 'soft-';

export function isQuotaItem(name: string): name is QuotaItem {
  return (QUOTA_ITEMS as readonly string[]).includes(name);
}

export function isSoftQuotaItem(name: string): name is SoftQuotaItem {
  return (SOFT_QUOTA_ITEMS as readonly string[]).includes(name);
}

export interface QuotaSet {
  hard: Record<QuotaItem, number>;
  soft: Record<SoftQuotaItem, number>;
}

export function defaultQuotas(): QuotaSet {
  return { hard: { ...DEFAULT_HARD_QUOTAS }, soft: { ...DEFAULT_SOFT_QUOTAS } };
}

export function copyQuotas(quotas: QuotaSet): QuotaSet {
  return { hard: { ...quotas.hard }, soft: { ...quotas.soft } };
}

/**
 * Why a hard quota may not take `value`, or undefined if it may. Values that
 * would leave a domain unable to use the store at all are refused; 0, which
 * disables a check, is not one of them.
 */
export function quotaValueProblem(item: QuotaItem, value: number): string | undefined {
  if (item === 'path-max' && value !== 0 && value < SHORTEST_USABLE_PATH_MAX) {
    return `path-max ${value} is below ${SHORTEST_USABLE_PATH_MAX}, the length of the longest path xenstore gives a domain (its home /local/domain/<domid>)`;
  }
  return undefined;
}

/** Whether `value` is beyond `limit`; a limit of 0 means no limit. */
export function exceeds(value: number, limit: number): boolean {
  return limit > 0 && value > limit;
}

/** A quota as GET_QUOTA/SET_QUOTA name it: a hard one or a soft one. */
export type QuotaName = { kind: 'hard'; item: QuotaItem } | { kind: 'soft'; item: SoftQuotaItem };

/**
 * Resolves a quota name as GET_QUOTA/SET_QUOTA accept it: `<item>` for a hard
 * quota or `soft-<item>` for a soft one.
 */
export function resolveQuotaName(name: string): QuotaName | undefined {
  if (name.startsWith(SOFT_PREFIX)) {
    const item = name.slice(SOFT_PREFIX.length);
    return isSoftQuotaItem(item) ? { kind: 'soft', item } : undefined;
  }
  return isQuotaItem(name) ? { kind: 'hard', item: name } : undefined;
}

/** All quota names, space separated, as GET_QUOTA without arguments lists them. */
export function quotaNames(): string {
  const names: string[] = [];
  for (const item of QUOTA_ITEMS) {
    names.push(item);
    if (isSoftQuotaItem(item)) names.push(`${SOFT_PREFIX}${item}`);
  }
  return names.join(' ');
}
