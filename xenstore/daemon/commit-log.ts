import type { QuotaSet } from '../store/quota.js';
import type { Store } from '../store/store.js';
import type { SavedDomain } from './domains.js';

/** The daemon's state outside the store that a restarted daemon needs: its domains and global quotas. */
export interface DomainState {
  readonly domains: readonly SavedDomain[];
  readonly globalQuotas: QuotaSet;
}

/**
 * Told of every commit, where the daemon makes it (see CommitService), before
 * the client is answered: a journal records it there so that a daemon
 * restarted after a crash has every change a client saw acknowledged.
 */
export interface CommitLog {
  /**
   * One commit: the nodes at `paths` (full paths) changed, were created or
   * were removed; `store` holds their new state. `domains` is given when the
   * domain records changed too.
   */
  committed(store: Store, paths: Iterable<string>, domains: DomainState | undefined): void;
  /** The domain records or quotas changed outside any commit to the store. */
  domainsChanged(store: Store, domains: DomainState): void;
}
