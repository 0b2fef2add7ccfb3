import { performance } from 'node:perf_hooks';
import { XsError } from '../../shared/errors.js';
import { createLogger } from '../../shared/log.js';
import {
  XENSTORE_PAYLOAD_MAX,
  XS_HEADER_SIZE,
  XsServerFeature,
  XsType,
  encodeMessage,
  nulStrings,
  xsTypeName,
  type XsHeader,
  type XsMessage,
} from '../../shared/xs-wire.js';
import { INTRODUCE_DOMAIN, parseAbsolute, RELEASE_DOMAIN, ROOT_PATH } from '../store/path.js';
import { Access, accessFor, type PermList } from '../store/permissions.js';
import { defaultQuotas, exceeds, type QuotaSet } from '../store/quota.js';
import { Store, type Caller, type ChangeEvent, type SavedTree, type StoreView } from '../store/store.js';
import { Transaction } from '../store/transaction.js';
import { nodeMemory, type Node } from '../store/node.js';
import { Connection, RequestTicket } from './connection.js';
import { DEFAULT_QUEUED_OUTPUT_LIMIT, QueuedOutputLimit } from './output-limit.js';
import { queuedCost } from './output-queue.js';
import { DetachedBackend, type DomainBackend } from './domain-backend.js';
import { DomainRegistry, PRIVILEGED_DOMID, type DomainRecord, type SavedDomain } from './domains.js';
import { HANDLERS, type RequestContext } from './requests.js';
import type { CommitLog, DomainState } from './commit-log.js';
import type { Journal, Recovery } from './journal.js';
import type { RequestServices } from './services.js';
import { Tracer } from './trace.js';
import type { ServerTransport } from './transport.js';
import { WatchRegistry, type SpecialMatch, type Watch } from './watches.js';

const log = createLogger('xenstored');

/** The layout of SavedDaemonState; a daemon refuses a state of another. */
export const SAVED_STATE_VERSION = 1;

/** A daemon's store and domains, handed to the daemon that replaces it. */
export interface SavedDaemonState {
  readonly version: number;
  readonly tree: SavedTree;
  readonly domains: readonly SavedDomain[];
}

/** xenstored's default time a watch event may wait for an unprivileged domain (20 s). */
export const DEFAULT_WATCH_EVENT_TIMEOUT_MS = 20_000;

/**
 * A client that does not read its replies stops being served once output
 * costing this much (by queuedCost) is waiting for it, until it catches up:
 * a flood of requests costs the daemon bounded memory and slows only that
 * client. Unprivileged domains meet their memory quota long before this.
 */
export const OUTPUT_BACKLOG_LIMIT = 1024 * 1024;

/**
 * A privileged client that lets output costing this much pile up (watch
 * events keep coming while it does not read) is disconnected: it is not
 * reading, and the daemon's memory must stay bounded. Unprivileged domains
 * are held to their memory quota instead.
 */
export const OUTPUT_HARD_LIMIT = 32 * 1024 * 1024;

/** How often queued watch events are checked against their timeout. */
const EVENT_SWEEP_INTERVAL_MS = 1000;

/**
 * A domain whose ring holds a message it never finishes sending is dropped
 * (with the protocol error) after this long; while it is paused the clock
 * does not count against it.
 */
export const DEFAULT_INCOMPLETE_MESSAGE_TIMEOUT_MS = 10_000;

/**
 * A running domain that leaves its replies and events unread on its ring
 * this long (it consumes not a byte while output waits for room) loses its
 * connection (XENSTORE_ERROR_COMM); a paused or suspended one does not. Three
 * times xenstored's watch-event timeout: events alone expire before this,
 * so only a domain that stopped reading altogether is cut off.
 */
export const DEFAULT_UNREAD_OUTPUT_TIMEOUT_MS = 3 * DEFAULT_WATCH_EVENT_TIMEOUT_MS;

export interface DaemonOptions {
  quotas?: QuotaSet;
  /** Time a watch event may wait for an unprivileged domain before it is dropped; 0 keeps them. */
  watchEventTimeoutMs?: number;
  /** Time a domain may leave a message half sent before it is dropped. */
  incompleteMessageTimeoutMs?: number;
  /** Time a running domain may leave its ring's output unread before it is dropped; 0 never drops it. */
  unreadOutputTimeoutMs?: number;
  /**
   * Bound on the output queued for all clients together, by queuedCost
   * (default DEFAULT_QUEUED_OUTPUT_LIMIT); 0 for none. Over it, the client
   * holding the most is cut off.
   */
  queuedOutputLimit?: number;
  traceFile?: string | undefined;
  backend?: DomainBackend;
  /** Told of every commit before its client is answered (the journal). */
  commitLog?: CommitLog;
}

/**
 * The xenstore daemon: the store, the connections to it, their watches and
 * transactions, and the domains it serves. Transports (the Unix socket, the
 * domains' rings) hand it connections; everything else happens here, one
 * request at a time.
 */
export class XenStoreDaemon {
  readonly domains: DomainRegistry;
  readonly store: Store;
  readonly watches = new WatchRegistry<Connection>();
  readonly connections = new Set<Connection>();
  readonly tracer: Tracer;
  readonly backend: DomainBackend;
  watchEventTimeoutMs: number;
  incompleteMessageTimeoutMs: number;
  unreadOutputTimeoutMs: number;
  readonly outputLimit: QueuedOutputLimit<Connection>;
  private nextConnectionId = 1;
  private readonly waking = new Set<DomainRecord>();
  private sweepTimer: NodeJS.Timeout | undefined;
  /** What request handlers and CONTROL commands are given of the daemon. */
  readonly services: RequestServices;
  commitLog: CommitLog | undefined;
  /** The domain registry's revision the commit log last saw. */
  private loggedDomainRevision = -1;

  constructor(options: DaemonOptions = {}) {
    this.backend = options.backend ?? new DetachedBackend();
    this.domains = new DomainRegistry(options.quotas ?? defaultQuotas(), this.backend);
    this.store = new Store(this.domains);
    this.domains.store = this.store;
    this.domains.findOrCreate(PRIVILEGED_DOMID)!.introduced = true;
    this.tracer = new Tracer(options.traceFile);
    this.watchEventTimeoutMs = options.watchEventTimeoutMs ?? DEFAULT_WATCH_EVENT_TIMEOUT_MS;
    this.incompleteMessageTimeoutMs = options.incompleteMessageTimeoutMs ?? DEFAULT_INCOMPLETE_MESSAGE_TIMEOUT_MS;
    this.unreadOutputTimeoutMs = options.unreadOutputTimeoutMs ?? DEFAULT_UNREAD_OUTPUT_TIMEOUT_MS;
    this.outputLimit = new QueuedOutputLimit(options.queuedOutputLimit ?? DEFAULT_QUEUED_OUTPUT_LIMIT);
    this.sweepTimer = setInterval(() => this.sweep(), EVENT_SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
    this.backend.onDomainChange?.(() => this.checkDomains());
    this.commitLog = options.commitLog;
    this.services = {
      store: this.store,
      watches: {
        add: (conn, watch) => this.addWatch(conn, watch),
        remove: (conn, watch) => this.removeWatch(conn, watch),
        removeAll: (conn) => this.removeAllWatches(conn),
        sendEvent: (watch, path, ticket, special) => this.sendEvent(watch, path, ticket, special),
      },
      transactions: {
        start: (conn) => this.startTransaction(conn),
        end: (conn, tx) => this.endTransaction(conn, tx),
        endAll: (conn) => this.endAllTransactions(conn),
      },
      commit: {
        live: (conn, ticket, op) => this.commitLive(conn, ticket, op),
        transaction: (conn, ticket, tx) => this.commitTransaction(conn, ticket, tx),
      },
      domains: {
        registry: this.domains,
        introduce: (domid, gfn, port) => this.introduce(domid, gfn, port),
        release: (domid) => this.releaseDomain(domid),
        changed: () => this.logDomains(),
      },
      control: {
        tracer: this.tracer,
        connections: () => this.connections,
        checkStore: () => this.checkStore(),
      },
      callerOf: (conn) => this.callerOf(conn),
    };
  }

  /** Serves a new client: a socket (acting as dom0) or a domain's ring. */
  connect(transport: ServerTransport, domid = PRIVILEGED_DOMID): Connection {
    const domain = this.domains.findOrCreate(domid);
    if (!domain) throw new XsError('ENOENT', `domain ${domid} does not exist`);
    const conn = new Connection(this.nextConnectionId++, transport, domain, {
      process: (c, msg) => this.process(c, msg),
      mayProcess: (c) => this.mayProcess(c),
      oversize: (c, header) => this.oversize(c, header),
      memory: (c, delta) => this.outputMemory(c, delta),
      dropped: (c) => {
        this.removeAllWatches(c);
        this.endAllTransactions(c);
      },
      closed: (c) => this.disconnected(c),
    });
    this.connections.add(conn);
    this.tracer.event('obj', `CREATE connection ${conn.id} ${transport.label} (d${domid})`);
    return conn;
  }

  /** Stops serving: closes every connection, the hypervisor link and the trace. */
  shutdown(): void {
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    for (const conn of [...this.connections]) conn.destroy();
    this.backend.close?.();
    this.tracer.close();
  }

  // ---- restarting ---------------------------------------------------------------

  /**
   * What a daemon that replaces this one needs to carry on: the store and
   * the domains it serves. Connections are not part of it: their watches
   * and transactions end with this daemon.
   */
  saveState(): SavedDaemonState {
    return { version: SAVED_STATE_VERSION, tree: this.store.exportTree(), domains: this.domains.save() };
  }

  /**
   * Takes over a predecessor's store and domains, before serving anyone.
   * Each domain's ring is connected again with the ring's error indicator
   * set: the domain's client sees that the connection was lost, starts it
   * over (ring reconnection) and sets its watches again. Domains that died
   * meanwhile are released.
   */
  restoreState(state: SavedDaemonState): void {
    if (state.version !== SAVED_STATE_VERSION) throw new Error(`saved state version ${state.version} is not ${SAVED_STATE_VERSION}`);
    this.store.importTree(state.tree);
    this.restoreDomains(state.domains);
  }

  /**
   * Starts recording every commit in `journal`. With `recover`, the store
   * and domains are first taken from what the journal holds (a daemon that
   * crashed left them), each domain's ring connected again as restoreState()
   * does. The journal then starts over from a snapshot of the state the
   * daemon serves from. Returns what was recovered, if anything was.
   */
  attachJournal(journal: Journal, recover: boolean): Recovery | undefined {
    this.commitLog = undefined;
    const recovery = recover ? journal.recover(this.store) : undefined;
    if (recovery?.domains) {
      const quotas = recovery.domains.globalQuotas;
      Object.assign(this.domains.globalQuotas.hard, quotas.hard);
      Object.assign(this.domains.globalQuotas.soft, quotas.soft);
      this.restoreDomains(recovery.domains.domains);
    }
    journal.compact(this.store, this.domainState());
    this.commitLog = journal;
    return recovery;
  }

  private restoreDomains(domains: readonly SavedDomain[]): void {
    for (const saved of domains) {
      const domain = this.domains.restore(saved);
      if (!domain.introduced || !domain.ring || !this.backend.exists(domain.domid)) continue;
      try {
        const conn = this.connect(this.backend.connect(domain.domid, domain.ring.gfn, domain.ring.port, domain.features), domain.domid);
        conn.close('comm');
      } catch (err) {
        log.warn(`domain ${domain.domid}: cannot take its ring back: ${(err as Error).message}`);
      }
    }
    this.checkDomains();
  }

  /**
   * `xenstore-control check`: recounts the store's accounting from the tree
   * and reports what had drifted.
   */
  checkStore(): string[] {
    const problems = this.store.check();
    for (const conn of this.connections) {
      for (const watch of conn.watches) {
        if (!this.watches.has(watch)) problems.push(`watch ${watch.path} of connection ${conn.id} was not indexed`);
        this.watches.add(watch);
      }
    }
    return problems;
  }

  /** The identity a connection acts with for permission checks. */
  callerOf(conn: Connection): Caller {
    const domain = conn.domain;
    return {
      domid: domain.domid,
      target: domain.target,
      privileged: domain.privileged,
      domidAnyAllowed: (domain.features & XsServerFeature.DOMID_ANY) !== 0,
    };
  }

  // ---- requests -------------------------------------------------------------

  private process(conn: Connection, msg: XsMessage): void {
    const domain = conn.domain;
    domain.requestsHandled++;
    this.domains.adjust(domain, 'outstanding', 1);
    const ticket = new RequestTicket(() => {
      this.domains.adjust(domain, 'outstanding', -1);
      this.wake(domain);
    });
    ticket.hold(); // released below, once the reply is queued
    this.tracer.io('IN', `conn ${conn.id}`, conn.domid, msg);
    const deferred: (() => void)[] = [];
    let type = msg.type;
    let payload: Buffer;
    try {
      payload = this.dispatch({ services: this.services, conn, msg, ticket, afterReply: (fn) => deferred.push(fn) });
      if (payload.length > XENSTORE_PAYLOAD_MAX) throw new XsError('E2BIG', `reply of ${payload.length} bytes`);
    } catch (err) {
      type = XsType.ERROR;
      payload = nulStrings(this.errnoOf(err, conn, msg));
      deferred.length = 0;
    }
    const reply: XsMessage = { type, reqId: msg.reqId, txId: msg.txId, len: payload.length, payload };
    this.tracer.io('OUT', `conn ${conn.id}`, conn.domid, reply);
    conn.reply(encodeMessage(type, msg.reqId, msg.txId, payload), ticket);
    for (const fn of deferred) fn();
    ticket.drop();
  }

  private dispatch(ctx: RequestContext): Buffer {
    const { conn, msg } = ctx;
    const handler = HANDLERS.get(msg.type);
    if (!handler) throw new XsError('ENOSYS', `unknown message type ${msg.type}`);
    if (handler.privileged && !conn.domain.privileged) throw new XsError('EACCES', `${xsTypeName(msg.type)} is privileged`);
    if (!handler.ignoresTransaction && msg.txId !== 0 && !conn.transactions.has(msg.txId)) {
      throw new XsError('ENOENT', `no transaction ${msg.txId}`);
    }
    return handler.run(ctx);
  }

  private errnoOf(err: unknown, conn: Connection, msg: XsMessage): string {
    if (err instanceof XsError) return err.errno;
    log.error(`internal error on ${xsTypeName(msg.type)} from connection ${conn.id}: ${(err as Error)?.stack ?? err}`);
    return 'EIO';
  }

  private mayProcess(conn: Connection): boolean {
    if (conn.queuedBytes > OUTPUT_BACKLOG_LIMIT) return false;
    const domain = conn.domain;
    if (domain.privileged) return true;
    return !domain.wouldExceed('outstanding', domain.counts.outstanding, 1) && !exceeds(this.domains.memoryOf(domain), domain.quotas.hard.memory);
  }

  private oversize(conn: Connection, header: XsHeader): void {
    log.warn(`connection ${conn.id} (d${conn.domid}) sent a ${header.len}-byte payload, over ${XENSTORE_PAYLOAD_MAX}: disconnected`);
    conn.close('proto');
  }

  /** A connection's queued output changed by `delta` (by queuedCost). */
  private outputMemory(conn: Connection, delta: number): void {
    this.outputLimit.add(delta);
    this.connectionMemory(conn, delta);
    if (delta > 0) this.enforceOutputLimit();
  }

  /**
   * Cuts off the clients holding the most queued output until all of it is
   * within the bound again. A domain's connection is cut as a misbehaving
   * one is (ignored, told through its ring, free to reconnect).
   */
  private enforceOutputLimit(): void {
    const cut = new Set<Connection>();
    while (this.outputLimit.over) {
      const victim = this.outputLimit.victim(this.connections);
      // A connection cut already frees what it held: seeing it again means the accounting went wrong.
      if (!victim || cut.has(victim)) break;
      cut.add(victim);
      log.warn(
        `output queued for all clients is over ${this.outputLimit.limit} bytes: connection ${victim.id} (d${victim.domid}), ` +
          `holding the most (${victim.queuedBytes} bytes), is cut off`,
      );
      victim.close('comm');
    }
  }

  private connectionMemory(conn: Connection, delta: number): void {
    const domain = conn.domain;
    domain.connectionMemory += delta;
    if (!domain.privileged) this.reportMemory(domain);
    if (delta < 0) this.wake(domain);
  }

  /** Logs crossing the soft and hard memory quotas, once each way. */
  private reportMemory(domain: DomainRecord): void {
    const used = this.domains.memoryOf(domain);
    const hard = exceeds(used, domain.quotas.hard.memory);
    const soft = exceeds(used, domain.quotas.soft.memory);
    if (hard !== domain.hardMemoryReported) {
      domain.hardMemoryReported = hard;
      if (hard) log.error(`domain ${domain.domid} exceeds its hard memory quota: its requests are stalled`);
      else log.info(`domain ${domain.domid} is below its hard memory quota again`);
    }
    if (soft !== domain.softMemoryReported) {
      domain.softMemoryReported = soft;
      if (soft) log.warn(`domain ${domain.domid} exceeds its soft memory quota`);
      else log.info(`domain ${domain.domid} is below its soft memory quota again`);
    }
  }

  /**
   * Resumes a domain's stalled requests once it may be under its quotas
   * again. Deferred, so that it never runs inside another request.
   */
  private wake(domain: DomainRecord): void {
    if (this.waking.has(domain)) return;
    this.waking.add(domain);
    setImmediate(() => {
      this.waking.delete(domain);
      for (const conn of this.connections) if (conn.domain === domain) conn.pump();
    });
  }

  private disconnected(conn: Connection): void {
    this.connections.delete(conn);
    this.tracer.event('obj', `DESTROY connection ${conn.id}`);
  }

  // ---- commits ----------------------------------------------------------------

  /**
   * Runs a store operation on the live store and commits what it changed:
   * the commit log records it, then its watches fire (before the reply is
   * queued, the order xenstored uses). What a refused operation changed
   * (nothing, as the store checks before it changes) is recorded all the
   * same, so that the log never lags the store.
   */
  private commitLive<T>(conn: Connection | undefined, ticket: RequestTicket | undefined, op: (view: StoreView) => T): T {
    const events: ChangeEvent[] = [];
    const modified = new Set<string>();
    let result: T;
    try {
      result = op(this.store.liveView(events, modified));
    } finally {
      if (modified.size > 0) this.logCommit(modified);
    }
    this.fire(events, conn, ticket);
    return result;
  }

  /** TRANSACTION_END with T: merges the transaction (all or nothing), records it as one commit, fires its watches. */
  private commitTransaction(conn: Connection, ticket: RequestTicket, tx: Transaction): void {
    const { events } = tx.commit(this.callerOf(conn));
    if (tx.modifiedPaths.size > 0) this.logCommit(tx.modifiedPaths);
    this.fire(events, conn, ticket);
  }

  private logCommit(paths: Iterable<string>): void {
    if (!this.commitLog) return;
    this.commitLog.committed(this.store, paths, this.domainsIfChanged());
  }

  /** The domain state, if the registry changed since the commit log last saw it. */
  private domainsIfChanged(): DomainState | undefined {
    if (this.domains.revision === this.loggedDomainRevision) return undefined;
    return this.domainState();
  }

  private domainState(): DomainState {
    this.loggedDomainRevision = this.domains.revision;
    return { domains: this.domains.save(), globalQuotas: this.domains.globalQuotas };
  }

  /** Domain records or quotas changed outside a commit to the store. */
  private logDomains(): void {
    this.commitLog?.domainsChanged(this.store, this.domainState());
  }

  // ---- watches --------------------------------------------------------------

  addWatch(conn: Connection, watch: Watch<Connection>): void {
    conn.watches.add(watch);
    this.watches.add(watch);
    this.domains.adjust(conn.domain, 'watches', 1);
    this.connectionMemory(conn, watchMemory(watch));
  }

  removeWatch(conn: Connection, watch: Watch<Connection>): void {
    if (!conn.watches.delete(watch)) return;
    this.watches.remove(watch);
    this.domains.adjust(conn.domain, 'watches', -1);
    this.connectionMemory(conn, -watchMemory(watch));
  }

  /** RESET_WATCHES, or the connection is dropped: every watch goes, accounted for at once. */
  removeAllWatches(conn: Connection): void {
    const all = conn.watches.takeAll();
    if (all.length === 0) return;
    let memory = 0;
    for (const watch of all) {
      this.watches.remove(watch);
      memory += watchMemory(watch);
    }
    this.domains.adjust(conn.domain, 'watches', -all.length);
    this.connectionMemory(conn, -memory);
  }

  /**
   * Delivers the watch events for a set of changes. `ticket` belongs to the
   * request that made them; an unprivileged domain's request stays
   * outstanding until the events it fired for others are delivered.
   */
  fire(events: readonly ChangeEvent[], origin: Connection | undefined, ticket: RequestTicket | undefined): void {
    const held = origin && !origin.domain.privileged ? ticket : undefined;
    for (const event of events) {
      for (const watch of this.watches.matching(event.path, event.match)) {
        if (!mayObserve(this.callerOf(watch.owner), event)) continue;
        this.sendEvent(watch, event.path.slice(watch.prefixLength), held, false);
      }
    }
  }

  /** Fires `@introduceDomain` / `@releaseDomain` for a domain, as xenstored's fire_special_watches(). */
  fireSpecial(name: typeof INTRODUCE_DOMAIN | typeof RELEASE_DOMAIN, domid: number | undefined, matches: readonly SpecialMatch[]): void {
    const node = this.store.tree.roots.get(name)!;
    const event: ChangeEvent = {
      path: name,
      match: 'exact',
      perms: this.store.effectivePerms(node),
      parentPerms: this.store.effectivePerms(this.store.tree.get(ROOT_PATH)!),
      oldPerms: undefined,
    };
    for (const match of matches) {
      const path = match === 'depth' ? `${name}/${domid}` : name;
      for (const watch of this.watches.matchingSpecial(path, match)) {
        if (!mayObserve(this.callerOf(watch.owner), event)) continue;
        this.sendEvent(watch, path, undefined, true);
      }
    }
  }

  /** Queues one WATCH_EVENT, unless it is too long or the receiving domain is out of memory quota. */
  sendEvent(watch: Watch<Connection>, path: string, ticket: RequestTicket | undefined, special: boolean): void {
    const conn = watch.owner;
    const payload = nulStrings(path, watch.token);
    if (payload.length > XENSTORE_PAYLOAD_MAX) return;
    const cost = queuedCost(XS_HEADER_SIZE + payload.length);
    const domain = conn.domain;
    if (!domain.privileged && exceeds(this.domains.memoryOf(domain) + cost, domain.quotas.hard.memory)) {
      this.tracer.event('acc', `watch event ${path} for domain ${domain.domid} dropped: memory quota`);
      return;
    }
    if (conn.queuedBytes + cost > OUTPUT_HARD_LIMIT) {
      log.warn(`connection ${conn.id} (d${domain.domid}) has ${conn.queuedBytes} bytes of output it does not read: disconnected`);
      conn.close('comm');
      return;
    }
    if (!conn.event(payload, ticket, special, performance.now())) {
      this.tracer.event('obj', `dropping duplicate watch ${path} ${watch.token} for domain ${domain.domid}`);
    }
  }

  /** Once a second: watch events waiting too long, messages left half sent, rings left unread. */
  private sweep(): void {
    const now = Date.now();
    const queueClock = performance.now();
    for (const conn of [...this.connections]) {
      if (this.watchEventTimeoutMs > 0 && !conn.domain.privileged && conn.queuedBytes > 0) {
        const dropped = conn.expireEvents(queueClock, this.watchEventTimeoutMs);
        if (dropped > 0) this.tracer.event('obj', `${dropped} watch events for domain ${conn.domid} timed out`);
      }
      if (conn.transport.kind === 'ring' && !conn.ignored && !conn.closed) this.sweepRing(conn, now);
    }
  }

  /**
   * Drops a ring connection whose domain left a message unfinished, or its
   * output unread, too long. Only time the domain spent running counts:
   * while it is paused, suspended or dying the clocks start again.
   */
  private sweepRing(conn: Connection, now: number): void {
    const partialSince = conn.partialMessageSince;
    const unreadSince = this.unreadOutputTimeoutMs > 0 && !conn.domain.privileged ? conn.transport.unreadOutputSince?.() : undefined;
    if (partialSince === undefined && unreadSince === undefined) return;
    if ((this.backend.state?.(conn.domid)?.state ?? 'running') !== 'running') {
      conn.heldAt = now;
      return;
    }
    const held = conn.heldAt ?? 0;
    if (partialSince !== undefined && now - Math.max(partialSince, held) > this.incompleteMessageTimeoutMs) {
      log.warn(`domain ${conn.domid} left a message unfinished for ${now - partialSince} ms: its connection is dropped`);
      conn.close('proto');
    } else if (unreadSince !== undefined && now - Math.max(unreadSince, held) > this.unreadOutputTimeoutMs) {
      log.warn(`domain ${conn.domid} read nothing of its ring for ${now - unreadSince} ms while output waited: its connection is dropped`);
      conn.close('comm');
    }
  }

  /**
   * VIRQ_DOM_EXC: some domain shut down or died. Dead ones are released
   * (their nodes go, @releaseDomain fires); shut down ones fire
   * @releaseDomain once, as xenstored's check_domains() does.
   */
  checkDomains(): void {
    if (!this.backend.state) return;
    for (const domain of this.domains.all()) {
      if (domain.privileged) continue;
      const now = this.backend.state(domain.domid);
      // A domain that is gone, or whose domid now belongs to a new domain, is released.
      if (!now || (domain.uniqueId !== undefined && now.uniqueId !== domain.uniqueId)) this.releaseDomain(domain.domid);
      else if (now.state === 'shutdown') this.domainShutdown(domain.domid);
    }
  }

  // ---- transactions -----------------------------------------------------------

  startTransaction(conn: Connection): Transaction {
    const domain = conn.domain;
    if (domain.wouldExceed('transactions', domain.counts.transactions, 1)) {
      throw new XsError('ENOSPC', `domain ${domain.domid} has ${domain.counts.transactions} transactions open`);
    }
    const id = conn.allocateTransactionId();
    const tx = new Transaction(id, this.store, {
      accessedNodes: domain.privileged ? 0 : domain.quotas.hard['transaction-nodes'],
      chargeMemory: (bytes) => {
        if (!domain.privileged && exceeds(this.domains.memoryOf(domain) + bytes, domain.quotas.hard.memory)) {
          throw new XsError('ENOMEM', `domain ${domain.domid} is over its memory quota`);
        }
        this.connectionMemory(conn, bytes);
      },
    });
    conn.transactions.set(id, tx);
    this.domains.adjust(domain, 'transactions', 1);
    this.tracer.event('obj', `CREATE transaction ${id} on connection ${conn.id}`);
    return tx;
  }

  endTransaction(conn: Connection, tx: Transaction): void {
    if (!conn.transactions.delete(tx.id)) return;
    this.domains.adjust(conn.domain, 'transactions', -1);
    this.connectionMemory(conn, -tx.copiedBytes);
    this.tracer.event('obj', `DESTROY transaction ${tx.id} on connection ${conn.id}`);
  }

  endAllTransactions(conn: Connection): void {
    for (const tx of [...conn.transactions.values()]) this.endTransaction(conn, tx);
  }

  // ---- domains ------------------------------------------------------------------

  /**
   * INTRODUCE: connects to a domain's ring through the backend. A domain that
   * is introduced again keeps its record but starts a fresh connection, as
   * xenstored resets the ring for a domain that resumed.
   */
  introduce(domid: number, gfn: bigint, port: number): void {
    const domain = this.domains.findOrCreate(domid);
    if (!domain) throw new XsError('ENOENT', `domain ${domid} does not exist`);
    // Introduced again (it resumed): the old ring connection goes first, so
    // that its event channel is unbound and can be bound anew.
    const first = !domain.introduced;
    for (const conn of this.connectionsOf(domain)) conn.destroy();
    const transport = this.backend.connect(domid, gfn, port, domain.features);
    domain.ring = { gfn, port };
    domain.introduced = true;
    domain.shutdown = false;
    this.connect(transport, domid);
    this.logDomains();
    if (first && !domain.privileged) this.fireSpecial(INTRODUCE_DOMAIN, domid, ['nodepth', 'depth']);
  }

  /**
   * RELEASE, or the death of a domain: its connection goes (without telling
   * it of its own nodes' removal), the nodes it owns are deleted and its
   * permission entries dropped (XSA-322, XSA-419), and `@releaseDomain`
   * fires.
   */
  releaseDomain(domid: number): void {
    const domain = this.domains.find(domid);
    if (!domain) return;
    for (const conn of this.connectionsOf(domain)) {
      // Its own watches go first: it is not told of its nodes' removal.
      this.removeAllWatches(conn);
      conn.destroy();
    }
    const wasIntroduced = domain.introduced;
    this.removeDomainFromTree(domid);
    this.domains.forget(domid);
    for (const other of this.domains.all()) if (other.target === domid) other.target = undefined;
    this.logDomains();
    if (wasIntroduced) this.fireSpecial(RELEASE_DOMAIN, domid, ['nodepth', 'depth']);
  }

  /**
   * A domain shut down (but is not gone yet): `@releaseDomain` fires once,
   * until RESUME says the domain runs again.
   */
  domainShutdown(domid: number): void {
    const domain = this.domains.find(domid);
    if (!domain?.introduced || domain.shutdown) return;
    domain.shutdown = true;
    this.logDomains();
    this.fireSpecial(RELEASE_DOMAIN, domid, ['depth', 'nodepth']);
  }

  connectionsOf(domain: DomainRecord): Connection[] {
    return [...this.connections].filter((c) => c.domain === domain && c.transport.kind === 'ring');
  }

  /**
   * Deletes the nodes a domain owns and drops its entries from everyone
   * else's permissions, as xenstored's domain_tree_remove() does, firing the
   * watches the removals trigger.
   */
  private removeDomainFromTree(domid: number): void {
    const owned: string[] = [];
    const mentioned: string[] = [];
    const collect = (node: Node, full: string): void => {
      if (node.ownerDomid === domid && full !== '/' && !full.startsWith('@')) {
        owned.push(full);
        return;
      }
      if (node.perms.some((p, i) => i > 0 && p.domid === domid)) mentioned.push(full);
      for (const [name, child] of node.children) collect(child, full === '/' ? `/${name}` : `${full}/${name}`);
    };
    for (const [root, node] of this.store.tree.roots) collect(node, root);

    this.commitLive(undefined, undefined, (view) => {
      for (const full of owned) {
        const path = parseAbsolute(full);
        const node = this.store.tree.get(path);
        if (node) this.store.removeSubtree(view, DOM0_CALLER, path, node);
      }
      for (const full of mentioned) {
        const path = parseAbsolute(full);
        const existing = this.store.tree.get(path);
        if (!existing) continue;
        view.noteModify(path, existing, DOM0_CALLER);
        const node = this.store.tree.mutable(path);
        const before = nodeMemory(node, full);
        node.perms = node.perms.filter((p, i) => i === 0 || p.domid !== domid);
        node.generation = this.store.nextGeneration();
        if (path.root === '/') this.store.account(node.ownerDomid, 0, nodeMemory(node, full) - before);
      }
    });
  }
}

/** The daemon acting on its own behalf. */
const DOM0_CALLER: Caller = { domid: PRIVILEGED_DOMID, privileged: true, domidAnyAllowed: true };

/** Memory xenstored charges for a watch: its path and token. */
function watchMemory(watch: Watch<Connection>): number {
  return watch.path.length + watch.token.length;
}

/**
 * Whether a watcher may be told of a change (xenstored's watch_permitted()):
 * it could read the node before the change, can read it now, or can read its
 * parent. A node that no longer exists is only reported to those who could
 * read it before.
 */
function mayObserve(caller: Caller, event: ChangeEvent): boolean {
  const readable = (perms: PermList | undefined) => perms !== undefined && (accessFor(caller, perms) & Access.READ) !== 0;
  if (readable(event.oldPerms)) return true;
  if (!event.perms) return false;
  return readable(event.perms) || readable(event.parentPerms);
}
