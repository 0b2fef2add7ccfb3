import { XsServerFeature } from '../../shared/xs-wire.js';
import { QUOTA_ITEMS, copyQuotas, exceeds, type QuotaItem, type QuotaSet } from '../store/quota.js';
import type { DomainPolicy, NodeUsage, Store } from '../store/store.js';
import type { DomainBackend } from './domain-backend.js';

/** The domain xenstored treats as privileged (dom0, the toolstack domain). */
export const PRIVILEGED_DOMID = 0;

/**
 * Server features this daemon offers a domain (xs_wire.h): the ring's error
 * field, the WATCH depth parameter and permission entries for DOMID_ANY.
 */
export const SUPPORTED_FEATURES = XsServerFeature.ERROR | XsServerFeature.WATCHDEPTH | XsServerFeature.DOMID_ANY;

/** Accounting values that xenstored counts per domain (the rest are per-request maxima). */
export type CountedItem = 'watches' | 'outstanding' | 'transactions';

/**
 * What xenstored knows about one domain: whether it was introduced, its
 * features, its quotas, and what it uses. A record exists from the first
 * time the domain is referenced (introduced, or named in a permission) until
 * it is released or dies.
 */
export class DomainRecord {
  introduced = false;
  /** Set when the domain shut down and @releaseDomain fired; RESUME clears it. */
  shutdown = false;
  features = SUPPORTED_FEATURES;
  /** The domain whose nodes this one may access as if it owned them (SET_TARGET). */
  target: number | undefined;
  readonly counts: Record<CountedItem, number> = { watches: 0, outstanding: 0, transactions: 0 };
  /** Memory held outside the node tree: queued output, watches, transaction copies. */
  connectionMemory = 0;
  readonly maxSeen: Record<QuotaItem, number>;
  softMemoryReported = false;
  hardMemoryReported = false;

  constructor(
    readonly domid: number,
    /** Store generation when the domain became known (XSA-322). */
    readonly generation: number,
    readonly quotas: QuotaSet,
  ) {
    this.maxSeen = Object.fromEntries(QUOTA_ITEMS.map((item) => [item, 0])) as Record<QuotaItem, number>;
  }

  get privileged(): boolean {
    return this.domid === PRIVILEGED_DOMID;
  }

  /** Whether adding `extra` to `item` would go over the domain's hard quota. */
  wouldExceed(item: QuotaItem, current: number, extra: number): boolean {
    return !this.privileged && exceeds(current + extra, this.quotas.hard[item]);
  }

  /** Remembers the largest value seen, reported by `xenstore-control quota`. */
  noteValue(item: QuotaItem, value: number): void {
    if (value > this.maxSeen[item]) this.maxSeen[item] = value;
  }
}

/**
 * All domains the daemon knows, with the global quotas new ones start from.
 * Also the store's view of domains (quotas and existence).
 */
export class DomainRegistry implements DomainPolicy {
  private readonly records = new Map<number, DomainRecord>();
  /** Largest values seen over all unprivileged domains (`xenstore-control quota max`). */
  readonly globalMax: Record<QuotaItem, number>;
  store!: Store;

  constructor(
    readonly globalQuotas: QuotaSet,
    private readonly backend: DomainBackend,
  ) {
    this.globalMax = Object.fromEntries(QUOTA_ITEMS.map((item) => [item, 0])) as Record<QuotaItem, number>;
  }

  /** The record of a domain we already know about. */
  find(domid: number): DomainRecord | undefined {
    return this.records.get(domid);
  }

  /** The record of a domain, created if the hypervisor says the domain exists. */
  findOrCreate(domid: number): DomainRecord | undefined {
    const known = this.records.get(domid);
    if (known) return known;
    if (domid !== PRIVILEGED_DOMID && !this.backend.exists(domid)) return undefined;
    const generation = domid === PRIVILEGED_DOMID ? 0 : this.store.currentGeneration;
    const record = new DomainRecord(domid, generation, copyQuotas(this.globalQuotas));
    this.records.set(domid, record);
    return record;
  }

  forget(domid: number): void {
    this.records.delete(domid);
  }

  introducedDomains(): DomainRecord[] {
    return [...this.records.values()].filter((r) => r.introduced);
  }

  all(): DomainRecord[] {
    return [...this.records.values()];
  }

  quota(domid: number, item: QuotaItem): number {
    return (this.records.get(domid)?.quotas ?? this.globalQuotas).hard[item];
  }

  domainGeneration(domid: number): number | undefined {
    return this.findOrCreate(domid)?.generation;
  }

  usageChanged(domid: number, usage: NodeUsage): void {
    const record = this.records.get(domid);
    if (!record) return;
    this.noteValue(record, 'nodes', usage.nodes);
    this.noteValue(record, 'memory', this.memoryOf(record));
  }

  /** Memory a domain uses in total: its nodes plus what its connection holds. */
  memoryOf(record: DomainRecord): number {
    return this.store.usageOf(record.domid).memory + record.connectionMemory;
  }

  adjust(record: DomainRecord, item: CountedItem, delta: number): void {
    record.counts[item] += delta;
    this.noteValue(record, item, record.counts[item]);
  }

  noteValue(record: DomainRecord, item: QuotaItem, value: number): void {
    record.noteValue(item, value);
    if (!record.privileged && value > this.globalMax[item]) this.globalMax[item] = value;
  }

  /** Resets `quota max` to the current values (`xenstore-control quota max -r`). */
  resetMax(): void {
    for (const item of QUOTA_ITEMS) this.globalMax[item] = 0;
    for (const record of this.records.values()) {
      for (const item of QUOTA_ITEMS) record.maxSeen[item] = this.currentValue(record, item);
    }
  }

  /** The accounting value xenstored reports for an item. */
  currentValue(record: DomainRecord, item: QuotaItem): number {
    switch (item) {
      case 'nodes':
        return this.store.usageOf(record.domid).nodes;
      case 'memory':
        return this.memoryOf(record);
      case 'watches':
      case 'outstanding':
      case 'transactions':
        return record.counts[item];
      default:
        return 0;
    }
  }
}
