import { XsError } from '../../shared/errors.js';
import {
  XENSTORE_PAYLOAD_MAX,
  XsType,
  encodeMessage,
  isXsErrorName,
  nulStrings,
  splitNulStrings,
  type XsMessage,
} from '../../shared/xs-wire.js';
import { openTransport, SocketClientTransport, type ClientTransport, type SocketConnectOptions } from './transport.js';
import { Watcher } from './watcher.js';

/** A node permission as the client reads and sets it: `r0`, `b5`, ... */
export interface PermissionEntry {
  domid: number;
  access: 'none' | 'read' | 'write' | 'both';
}

const ACCESS_LETTER = { none: 'n', read: 'r', write: 'w', both: 'b' } as const;
const LETTER_ACCESS = { n: 'none', r: 'read', w: 'write', b: 'both' } as const;

/** A link that breaks this many times within REPAIR_WINDOW_MS is given up. */
const MAX_REPAIRS_IN_WINDOW = 5;
const REPAIR_WINDOW_MS = 10_000;

/** The default bound on commit attempts of `transaction()` before it gives up with EAGAIN. */
export const DEFAULT_TRANSACTION_ATTEMPTS = 16;

/**
 * `transaction()` runs at most this many transactions at once and queues
 * the rest: xenstored refuses an unprivileged domain more than 10 open
 * transactions (its default quota-max-transaction) with ENOSPC, and many
 * devices changing state together must not run into that.
 */
export const CONCURRENT_TRANSACTIONS = 10;

export interface RequestOptions {
  /** The transaction to run in (0 or absent: none). */
  tx?: number;
}

interface Pending {
  resolve(payload: Buffer): void;
  reject(err: Error): void;
  /** Part of a transaction (in one, starting or ending one): a reset fails it EAGAIN. */
  transactional: boolean;
}

/** Raised for every request outstanding when the connection to xenstored goes away. */
export class ConnectionClosedError extends Error {
  constructor(cause?: Error) {
    super(`connection to xenstored closed${cause ? `: ${cause.message}` : ''}`, { cause });
    this.name = 'ConnectionClosedError';
  }
}

/** Raised for every request in flight when the connection is started over (ring reconnection). */
export class ConnectionResetError extends Error {
  constructor() {
    super('the connection to xenstored was reset');
    this.name = 'ConnectionResetError';
  }
}

/**
 * Whether a request failed because the connection went (reset or closed)
 * rather than because xenstored refused it: the request may not have been
 * carried out, and the caller's watches tell it when to look again.
 */
export function isConnectionLoss(err: unknown): boolean {
  return err instanceof ConnectionResetError || err instanceof ConnectionClosedError;
}

/**
 * A promise-based xenstore client. Requests may be issued concurrently; each
 * reply is matched to its request by req_id. Watches are async iterators;
 * `transaction()` runs a function in a transaction and retries it when the
 * commit conflicts (EAGAIN), up to a bound.
 */
export class XenStoreClient {
  private nextReqId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly watchers = new Map<string, Set<Watcher>>();
  private nextToken = 1;
  private closedError: Error | undefined;
  private readonly reconnectListeners: (() => void)[] = [];
  private recentRepairs: number[] = [];
  private openTransactions = 0;
  private readonly transactionWaiters: (() => void)[] = [];

  constructor(private readonly transport: ClientTransport) {
    transport.start({
      message: (msg) => this.onMessage(msg),
      closed: (error) => this.onClosed(error),
      broken: (error) => this.onBroken(error),
    });
  }

  /**
   * Called after the connection was started over (a ring error repaired, a
   * xenstored that restarted): watches are set again, but anything the
   * caller had in flight failed and must be redone.
   */
  onReconnected(listener: () => void): void {
    this.reconnectListeners.push(listener);
  }

  /**
   * Connects over the Unix socket (XENSTORED_PATH, or the default path).
   * With `reconnect`, a xenstored that goes away (crashed, restarted) is
   * waited for and connected to again, as after a ring reconnection.
   */
  static async connect(path?: string, options: SocketConnectOptions = {}): Promise<XenStoreClient> {
    return new XenStoreClient(await SocketClientTransport.connect(path, options));
  }

  /**
   * Connects the way a process on Xen does (libxenstore's xs_open): to the
   * path given, a socket or the xenbus device; else to xenstored's socket
   * if this domain runs it (XENSTORED_PATH, or the default path), else
   * through the kernel's /dev/xen/xenbus.
   */
  static async open(where?: string): Promise<XenStoreClient> {
    return new XenStoreClient(await openTransport(where));
  }

  close(): void {
    this.transport.close();
    this.onClosed();
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  /**
   * Starts the connection over (ring reconnection, after a resume or a ring
   * error, a xenstored that restarted): requests in flight fail with
   * ConnectionResetError, transactions are gone (a request in one fails
   * EAGAIN, so that `transaction()` runs it again, as xenstored's live
   * update fails the transactions it cannot carry over), and every watch is
   * set again (each fires once more, as a new watch does).
   */
  async reconnect(): Promise<void> {
    if (!this.transport.reconnect) throw new Error('this transport cannot reconnect');
    const inFlight = [...this.pending.values()];
    this.pending.clear();
    for (const pending of inFlight) {
      pending.reject(pending.transactional ? new XsError('EAGAIN', 'the connection to xenstored was reset: the transaction is gone') : new ConnectionResetError());
    }
    // Only watches xenstored had confirmed are set again: one whose WATCH
    // was in flight failed with the reset, and one set while the ring
    // restarts goes to the new connection by itself.
    const confirmed = [...this.watchers.values()].flatMap((set) => [...set]).filter((w) => w.registered);
    await this.transport.reconnect();
    for (const watcher of confirmed) {
      if (!this.watchers.get(watcher.token)?.has(watcher)) continue;
      try {
        await this.request(XsType.WATCH, nulStrings(watcher.path, watcher.token, ...(watcher.depth === undefined ? [] : [String(watcher.depth)])));
      } catch (err) {
        // Lost again while setting them: the reconnection that follows sets them all.
        if (isConnectionLoss(err)) return;
        if (!(err instanceof XsError)) throw err;
        if (err.errno === 'EEXIST') continue;
        // Refused now (a quota lowered meanwhile): its reader sees it end.
        this.forgetWatcher(watcher);
        watcher.end();
      }
    }
  }

  /** Sends one request and resolves with the reply payload, or rejects with its XsError. */
  request(type: number, payload: Buffer, txId = 0): Promise<Buffer> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (payload.length > XENSTORE_PAYLOAD_MAX) {
      return Promise.reject(new XsError('E2BIG', `request payload of ${payload.length} bytes`));
    }
    const reqId = this.allocateReqId();
    const transactional = txId !== 0 || type === XsType.TRANSACTION_START || type === XsType.TRANSACTION_END;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(reqId, { resolve, reject, transactional });
      this.transport.send(encodeMessage(type, reqId, txId, payload));
    });
  }

  // ---- nodes --------------------------------------------------------------------

  read(path: string, options: RequestOptions = {}): Promise<Buffer> {
    return this.request(XsType.READ, nulStrings(path), options.tx);
  }

  async readString(path: string, options: RequestOptions = {}): Promise<string> {
    return (await this.read(path, options)).toString('latin1');
  }

  /** The value, or undefined when the node does not exist. */
  async tryRead(path: string, options: RequestOptions = {}): Promise<string | undefined> {
    try {
      return await this.readString(path, options);
    } catch (err) {
      if (err instanceof XsError && err.errno === 'ENOENT') return undefined;
      throw err;
    }
  }

  async write(path: string, value: string | Buffer, options: RequestOptions = {}): Promise<void> {
    const data = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
    await this.request(XsType.WRITE, Buffer.concat([nulStrings(path), data]), options.tx);
  }

  async mkdir(path: string, options: RequestOptions = {}): Promise<void> {
    await this.request(XsType.MKDIR, nulStrings(path), options.tx);
  }

  async rm(path: string, options: RequestOptions = {}): Promise<void> {
    await this.request(XsType.RM, nulStrings(path), options.tx);
  }

  /**
   * The names of a node's children. Lists too long for one reply are fetched
   * in parts with DIRECTORY_PART, starting over if the node changes meanwhile.
   */
  async directory(path: string, options: RequestOptions = {}): Promise<string[]> {
    try {
      return splitNulStrings(await this.request(XsType.DIRECTORY, nulStrings(path), options.tx)).strings;
    } catch (err) {
      if (!(err instanceof XsError && err.errno === 'E2BIG')) throw err;
    }
    return this.directoryInParts(path, options);
  }

  private async directoryInParts(path: string, options: RequestOptions): Promise<string[]> {
    for (;;) {
      let generation: string | undefined;
      const names: string[] = [];
      let offset = 0;
      let restarted = false;
      for (;;) {
        const reply = await this.request(XsType.DIRECTORY_PART, nulStrings(path, String(offset)), options.tx);
        const [gen, ...entries] = splitNulStrings(reply).strings;
        if (generation === undefined) generation = gen;
        else if (gen !== generation) {
          restarted = true;
          break;
        }
        // The last part ends with an empty name.
        const done = entries.length > 0 && entries[entries.length - 1] === '';
        const chunk = done ? entries.slice(0, -1) : entries;
        names.push(...chunk);
        offset += chunk.reduce((n, name) => n + Buffer.byteLength(name, 'latin1') + 1, 0);
        if (done || chunk.length === 0) break;
      }
      if (!restarted) return names;
    }
  }

  async getPermissions(path: string, options: RequestOptions = {}): Promise<PermissionEntry[]> {
    const reply = await this.request(XsType.GET_PERMS, nulStrings(path), options.tx);
    return splitNulStrings(reply).strings.map((text) => {
      const access = LETTER_ACCESS[text[0] as keyof typeof LETTER_ACCESS];
      if (!access) throw new XsError('EINVAL', `unexpected permission '${text}' from xenstored`);
      return { domid: Number(text.slice(1)), access };
    });
  }

  /** Sets a node's permissions; the first entry names the owner and what everyone else gets. */
  async setPermissions(path: string, perms: readonly PermissionEntry[], options: RequestOptions = {}): Promise<void> {
    const entries = perms.map((p) => `${ACCESS_LETTER[p.access]}${p.domid}`);
    await this.request(XsType.SET_PERMS, nulStrings(path, ...entries), options.tx);
  }

  // ---- watches ------------------------------------------------------------------

  /**
   * Watches a path (or `@introduceDomain` / `@releaseDomain`). The returned
   * watcher is an async iterator of events; it yields the first event that
   * xenstored fires at once, then one per change. `close()` removes the watch.
   */
  async watch(path: string, options: { token?: string; depth?: number } = {}): Promise<Watcher> {
    const token = options.token ?? `xenmesh-${process.pid}-${this.nextToken++}`;
    const watcher: Watcher = new Watcher(path, token, options.depth, (): Promise<void> => this.unwatch(watcher));
    let set = this.watchers.get(token);
    if (!set) this.watchers.set(token, (set = new Set()));
    set.add(watcher);
    const args = options.depth === undefined ? [path, token] : [path, token, String(options.depth)];
    try {
      await this.request(XsType.WATCH, nulStrings(...args));
    } catch (err) {
      this.forgetWatcher(watcher);
      throw err;
    }
    watcher.registered = true;
    return watcher;
  }

  private async unwatch(watcher: Watcher): Promise<void> {
    this.forgetWatcher(watcher);
    if (this.closedError) return;
    await this.request(XsType.UNWATCH, nulStrings(watcher.path, watcher.token));
  }

  private forgetWatcher(watcher: Watcher): void {
    const set = this.watchers.get(watcher.token);
    set?.delete(watcher);
    if (set?.size === 0) this.watchers.delete(watcher.token);
  }

  async resetWatches(): Promise<void> {
    await this.request(XsType.RESET_WATCHES, nulStrings(''));
  }

  // ---- transactions -------------------------------------------------------------

  async startTransaction(): Promise<number> {
    const reply = await this.request(XsType.TRANSACTION_START, nulStrings(''));
    return Number(splitNulStrings(reply).strings[0]);
  }

  /** Ends a transaction: commit (true) or abort. A commit that conflicts rejects with EAGAIN. */
  async endTransaction(tx: number, commit: boolean): Promise<void> {
    await this.request(XsType.TRANSACTION_END, nulStrings(commit ? 'T' : 'F'), tx);
  }

  /**
   * Runs `body` in a transaction and commits it, running it again from the
   * start when the commit conflicts, at most `attempts` times. If `body`
   * throws, the transaction is aborted and the error passed on.
   */
  async transaction<T>(body: (tx: number) => Promise<T>, attempts = DEFAULT_TRANSACTION_ATTEMPTS): Promise<T> {
    await this.transactionSlot();
    try {
      for (let attempt = 1; ; attempt++) {
        let tx: number;
        try {
          tx = await this.startTransaction();
        } catch (err) {
          if (err instanceof XsError && err.errno === 'EAGAIN' && attempt < attempts) continue;
          throw err;
        }
        let result: T;
        try {
          result = await body(tx);
        } catch (err) {
          await this.endTransaction(tx, false).catch(() => {});
          // The connection was reset under the transaction: it is gone, run it again.
          if (err instanceof XsError && err.errno === 'EAGAIN' && attempt < attempts) continue;
          throw err;
        }
        try {
          await this.endTransaction(tx, true);
          return result;
        } catch (err) {
          if (!(err instanceof XsError && err.errno === 'EAGAIN') || attempt >= attempts) throw err;
        }
      }
    } finally {
      this.releaseTransactionSlot();
    }
  }

  private transactionSlot(): Promise<void> {
    if (this.openTransactions < CONCURRENT_TRANSACTIONS) {
      this.openTransactions++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.transactionWaiters.push(resolve));
  }

  /** Hands the slot to the next waiting transaction, or frees it. */
  private releaseTransactionSlot(): void {
    const next = this.transactionWaiters.shift();
    if (next) next();
    else this.openTransactions--;
  }


  // ---- domains and daemon -------------------------------------------------------

  async getDomainPath(domid: number): Promise<string> {
    return splitNulStrings(await this.request(XsType.GET_DOMAIN_PATH, nulStrings(String(domid)))).strings[0]!;
  }

  async isDomainIntroduced(domid: number): Promise<boolean> {
    const reply = await this.request(XsType.IS_DOMAIN_INTRODUCED, nulStrings(String(domid)));
    return splitNulStrings(reply).strings[0] === 'T';
  }

  async introduce(domid: number, gfn: bigint | number, port: number): Promise<void> {
    await this.request(XsType.INTRODUCE, nulStrings(String(domid), String(gfn), String(port)));
  }

  async release(domid: number): Promise<void> {
    await this.request(XsType.RELEASE, nulStrings(String(domid)));
  }

  async resume(domid: number): Promise<void> {
    await this.request(XsType.RESUME, nulStrings(String(domid)));
  }

  async setTarget(domid: number, target: number): Promise<void> {
    await this.request(XsType.SET_TARGET, nulStrings(String(domid), String(target)));
  }

  /** The server features offered to a domain, or to this connection when no domid is given. */
  async getFeature(domid?: number): Promise<number> {
    const payload = domid === undefined ? Buffer.alloc(0) : nulStrings(String(domid));
    return Number(splitNulStrings(await this.request(XsType.GET_FEATURE, payload)).strings[0]);
  }

  async setFeature(domid: number, features: number): Promise<void> {
    await this.request(XsType.SET_FEATURE, nulStrings(String(domid), String(features)));
  }

  /** GET_QUOTA: the quota names (no arguments), a global quota, or a domain's. */
  async getQuota(name?: string, domid?: number): Promise<string> {
    const args = name === undefined ? [] : domid === undefined ? [name] : [String(domid), name];
    return splitNulStrings(await this.request(XsType.GET_QUOTA, nulStrings(...args))).strings[0] ?? '';
  }

  async setQuota(name: string, value: number, domid?: number): Promise<void> {
    const args = domid === undefined ? [name, String(value)] : [String(domid), name, String(value)];
    await this.request(XsType.SET_QUOTA, nulStrings(...args));
  }

  /** A CONTROL command, as xenstore-control sends it; resolves with its text output. */
  async control(command: string, ...args: string[]): Promise<string> {
    return splitNulStrings(await this.request(XsType.CONTROL, nulStrings(command, ...args))).strings[0] ?? '';
  }

  // ---- plumbing -----------------------------------------------------------------

  private allocateReqId(): number {
    do {
      this.nextReqId = (this.nextReqId + 1) >>> 0;
    } while (this.pending.has(this.nextReqId));
    return this.nextReqId;
  }

  private onMessage(msg: XsMessage): void {
    if (msg.type === XsType.WATCH_EVENT) {
      const [path, token] = splitNulStrings(msg.payload).strings;
      if (path === undefined || token === undefined) return;
      for (const watcher of this.watchers.get(token) ?? []) watcher.push({ path, token });
      return;
    }
    const pending = this.pending.get(msg.reqId);
    if (!pending) return;
    this.pending.delete(msg.reqId);
    if (msg.type === XsType.ERROR) {
      const name = splitNulStrings(msg.payload).strings[0] ?? '';
      pending.reject(new XsError(isXsErrorName(name) ? name : 'EIO', isXsErrorName(name) ? undefined : `unknown error '${name}'`));
    } else {
      pending.resolve(msg.payload);
    }
  }

  /**
   * The link broke in a way reconnection repairs: requests in flight fail
   * with ConnectionResetError and the connection is started over, unless it
   * keeps breaking (then it is closed).
   */
  private onBroken(error: Error): void {
    if (this.transport.boundsRepairs) {
      this.repair();
      return;
    }
    const now = Date.now();
    this.recentRepairs = this.recentRepairs.filter((at) => now - at < REPAIR_WINDOW_MS);
    if (this.recentRepairs.length >= MAX_REPAIRS_IN_WINDOW) {
      this.onClosed(error);
      return;
    }
    this.recentRepairs.push(now);
    this.repair();
  }

  private repair(): void {
    this.reconnect().then(
      () => {
        for (const listener of this.reconnectListeners) listener();
      },
      (err: Error) => this.onClosed(err),
    );
  }

  private onClosed(error?: Error): void {
    if (this.closedError) return;
    this.closedError = new ConnectionClosedError(error);
    for (const pending of this.pending.values()) pending.reject(this.closedError);
    this.pending.clear();
    for (const set of this.watchers.values()) for (const watcher of set) watcher.end();
    this.watchers.clear();
  }
}
