import { XENSTORE_REL_PATH_MAX, XsServerFeature } from '../../shared/xs-wire.js';
import { copyQuotas, exceeds, type QuotaItem, type QuotaSet } from '../store/quota.js';
import type { DomainPolicy, Store } from '../store/store.js';
import type { DomainBackend } from './domain-backend.js';

/** The domain xenstored treats as privileged (dom0, the toolstack domain). */
export const PRIVILEGED_DOMID = 0;

/**
 * Server features this daemon offers a domain (xs_wire.h): ring
 * reconnection, the ring's error field, the WATCH depth parameter and
 * permission entries for DOMID_ANY.
 */
export const SUPPORTED_FEATURES =
  XsServerFeature.RECONNECTION | XsServerFeature.ERROR | XsServerFeature.WATCHDEPTH | XsServerFeature.DOMID_ANY;

/** A domain's record as a saved state holds it (the page number as a decimal string). */
export interface SavedDomain {
  readonly domid: number;
  readonly generation: number;
  readonly quotas: QuotaSet;
  readonly uniqueId: number | undefined;
  readonly introduced: boolean;
  readonly shutdown: boolean;
  readonly features: number;
  readonly target: number | undefined;
  readonly ring: { readonly gfn: string; readonly port: number } | undefined;
}

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
  /** Where its ring is, as INTRODUCE gave it (page and event channel). */
  ring: { gfn: bigint; port: number } | undefined;
  readonly counts: Record<CountedItem, number> = { watches: 0, outstanding: 0, transactions: 0 };
  /** Requests answered for the domain since it became known (the metrics endpoint serves it). */
  requestsHandled = 0;
  /** Memory held outside the node tree: queued output, watches, transaction copies. */
  connectionMemory = 0;
  softMemoryReported = false;
  hardMemoryReported = false;

  constructor(
    readonly domid: number,
    /** Store generation when the domain became known (XSA-322). */
    readonly generation: number,
    readonly quotas: QuotaSet,
    /** The hypervisor's unique id of the domain, when it tells one: a reused domid has another. */
    readonly uniqueId: number | undefined,
  ) {}

  get privileged(): boolean {
    return this.domid === PRIVILEGED_DOMID;
  }

  /**
   * The longest path the domain may use, counted after its home prefix. The
   * privileged domain, exempt from every quota, is held to the protocol's
   * XENSTORE_REL_PATH_MAX (xs_wire.h) instead, which is what Xen 4.17's
   * default path-max gives it: a path-max quota, however low, cannot lock the
   * toolstack out of the store.
   */
  get pathMax(): number {
    return this.privileged ? XENSTORE_REL_PATH_MAX : this.quotas.hard['path-max'];
  }

  /** Whether adding `extra` to `item` would go over the domain's hard quota. */
  wouldExceed(item: QuotaItem, current: number, extra: number): boolean {
    return !this.privileged && exceeds(current + extra, this.quotas.hard[item]);
  }
}

/**
 * All domains the daemon knows, with the global quotas new ones start from.
 * Also the store's view of domains (quotas and existence).
 */
export class DomainRegistry implements DomainPolicy {
  private readonly records = new Map<number, DomainRecord>();
  store!: Store;
  /** Grows whenever a record is added or removed, so that a journal knows when to record them again. */
  revision = 0;

  constructor(
    readonly globalQuotas: QuotaSet,
    private readonly backend: DomainBackend,
  ) {}

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
    const record = new DomainRecord(domid, generation, copyQuotas(this.globalQuotas), this.backend.state?.(domid)?.uniqueId);
    this.records.set(domid, record);
    this.revision++;
    return record;
  }

  /** Puts back a record a saved state holds (the daemon restarted). */
  restore(saved: SavedDomain): DomainRecord {
    const record = new DomainRecord(saved.domid, saved.generation, copyQuotas(saved.quotas), saved.uniqueId);
    record.introduced = saved.introduced;
    record.shutdown = saved.shutdown;
    record.features = saved.features;
    record.target = saved.target;
    record.ring = saved.ring ? { gfn: BigInt(saved.ring.gfn), port: saved.ring.port } : undefined;
    this.records.set(saved.domid, record);
    this.revision++;
    return record;
  }

  /** Every record, as a saved state holds them. */
  save(): SavedDomain[] {
    return this.all().map((r) => ({
      domid: r.domid,
      generation: r.generation,
      quotas: r.quotas,
      uniqueId: r.uniqueId,
      introduced: r.introduced,
      shutdown: r.shutdown,
      features: r.features,
      target: r.target,
      ring: r.ring ? { gfn: String(r.ring.gfn), port: r.ring.port } : undefined,
    }));
  }

  forget(domid: number): void {
    if (this.records.delete(domid)) this.revision++;
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

  /** Memory a domain uses in total: its nodes plus what its connection holds. */
  memoryOf(record: DomainRecord): number {
    return this.store.usageOf(record.domid).memory + record.connectionMemory;
  }

  adjust(record: DomainRecord, item: CountedItem, delta: number): void {
    record.counts[item] += delta;
  }
}
