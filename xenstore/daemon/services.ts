/**
 * What request handlers and CONTROL commands may use of the daemon: the
 * store, the connection, watches, transactions, domains. They are given
 * these as parameters, as Mirage's xenstore server takes its store and
 * transport, rather than the whole daemon; the daemon implements them. This
 * module imports no part of the daemon, so handlers, commands and daemon do
 * not import each other in a circle.
 */
import type { StoreView, Store, Caller } from '../store/store.js';
import type { Transaction } from '../store/transaction.js';
import type { Connection, RequestTicket } from './connection.js';
import type { DomainRegistry } from './domains.js';
import type { Tracer } from './trace.js';
import type { Watch } from './watches.js';

/** Watches of connections: set, removed, their first event. */
export interface WatchService {
  add(conn: Connection, watch: Watch<Connection>): void;
  remove(conn: Connection, watch: Watch<Connection>): void;
  /** RESET_WATCHES, or the connection is dropped. */
  removeAll(conn: Connection): void;
  /** Queues one WATCH_EVENT for `watch` (a new watch's first event). */
  sendEvent(watch: Watch<Connection>, path: string, ticket: RequestTicket | undefined, special: boolean): void;
}

/** Transactions of connections. */
export interface TransactionService {
  start(conn: Connection): Transaction;
  end(conn: Connection, tx: Transaction): void;
  endAll(conn: Connection): void;
}

/**
 * Where changes reach the live store. Every change that becomes visible to
 * other clients goes through one of these two, so that the daemon can
 * record it (the journal) and fire its watches in one place.
 */
export interface CommitService {
  /** Runs a store operation on the live store; what it changed is committed at once. */
  live<T>(conn: Connection | undefined, ticket: RequestTicket | undefined, op: (view: StoreView) => T): T;
  /** TRANSACTION_END with T: the transaction's changes, all or none (EAGAIN on a conflict). */
  transaction(conn: Connection, ticket: RequestTicket, tx: Transaction): void;
}

/** The domains xenstored serves: introduced, released, their settings. */
export interface DomainService {
  readonly registry: DomainRegistry;
  introduce(domid: number, gfn: bigint, port: number): void;
  release(domid: number): void;
  /** A domain's settings (features, target, shutdown flag, quotas; undefined: the global quotas) changed outside the store. */
  changed(domid: number | undefined): void;
}

/** What the CONTROL commands look at besides the store and domains. */
export interface ControlService {
  readonly tracer: Tracer;
  /** The connections served now, for `memreport`. */
  connections(): Iterable<Connection>;
  /** `check`: recounts the accounting, returns what had drifted. */
  checkStore(): string[];
}

/** Everything a request handler may use, besides its own connection and message. */
export interface RequestServices {
  readonly store: Store;
  readonly watches: WatchService;
  readonly transactions: TransactionService;
  readonly commit: CommitService;
  readonly domains: DomainService;
  readonly control: ControlService;
  /** The identity a connection acts with for permission checks. */
  callerOf(conn: Connection): Caller;
}
