import { XsError } from '../../shared/errors.js';
import { XsServerFeature, XsType, nulStrings, type XsMessage } from '../../shared/xs-wire.js';
import { DOMID_FIRST_RESERVED, DOMID_SELF } from '../../shared/domid.js';
import { canonicalize, domainHome, isSpecialNode, type StorePath } from '../store/path.js';
import { formatPerm, parsePermStrings } from '../store/permissions.js';
import { quotaNames, resolveQuotaName } from '../store/quota.js';
import { directoryPart, type StoreView } from '../store/store.js';
import { atLeastStrings, cAtoi, domidArg, exactStrings, gfnArg, lookupArg, oneArg, strings } from './args.js';
import type { Connection, RequestTicket } from './connection.js';
import { runControl } from './control.js';
import { setQuota } from './quota-setting.js';
import { PRIVILEGED_DOMID, SUPPORTED_FEATURES } from './domains.js';
import type { RequestServices } from './services.js';

export interface RequestContext {
  /** The parts of the daemon a handler may use. */
  readonly services: RequestServices;
  readonly conn: Connection;
  readonly msg: XsMessage;
  readonly ticket: RequestTicket;
  /** Runs `fn` once the reply is queued (WATCH sends its first event after its reply). */
  afterReply(fn: () => void): void;
}

export interface Handler {
  /** Only the privileged domain may send it (xenstored's XS_FLAG_PRIV): EACCES otherwise. */
  readonly privileged?: boolean;
  /** The tx_id is not looked at (xenstored's XS_FLAG_NOTID). */
  readonly ignoresTransaction?: boolean;
  run(ctx: RequestContext): Buffer;
}

const OK = nulStrings('OK');

/** A path argument, validated and made absolute for this connection. */
function pathArg(ctx: RequestContext, text: string, allowSpecial = false): StorePath {
  return canonicalize(text, {
    home: domainHome(ctx.conn.domid),
    allowSpecial,
    pathMax: ctx.conn.domain.pathMax,
  });
}

/**
 * The path of GET_PERMS and SET_PERMS: a node under `/` or one of the special
 * nodes. Any other `@` name is not a node that could exist, so it is EINVAL,
 * as Xen 4.17's xenstored answers it, rather than ENOENT.
 */
function permsPathArg(ctx: RequestContext, text: string): StorePath {
  const path = pathArg(ctx, text, true);
  if (path.root !== '/' && !isSpecialNode(path)) throw new XsError('EINVAL', `${path.full} is not a special node`);
  return path;
}

/**
 * Runs a store operation in the request's transaction, or on the live store
 * with its watch events fired before the reply is queued (the order
 * xenstored uses).
 */
function inView<T>(ctx: RequestContext, op: (view: StoreView) => T): T {
  const tx = ctx.msg.txId !== 0 ? ctx.conn.transactions.get(ctx.msg.txId) : undefined;
  if (tx) return op(tx);
  return ctx.services.commit.live(ctx.conn, ctx.ticket, op);
}

function caller(ctx: RequestContext) {
  return ctx.services.callerOf(ctx.conn);
}

/** A domain that INTRODUCE made known and that is still there, for RELEASE, RESUME and SET_TARGET. */
function introducedDomain(ctx: RequestContext, domid: number) {
  const domain = ctx.services.domains.registry.find(domid);
  if (!domain?.introduced) throw new XsError('ENOENT', `domain ${domid} is not introduced`);
  return domain;
}

/** The `<domid>` of RELEASE and RESUME: a real domain other than the privileged one. */
function guestDomidArg(ctx: RequestContext): number {
  const domid = domidArg(oneArg(ctx.msg.payload));
  if (domid === PRIVILEGED_DOMID) throw new XsError('EINVAL', 'not for the privileged domain');
  return domid;
}

/**
 * The depth WATCH may carry where XENSTORE_SERVER_FEATURE_WATCHDEPTH is on: a
 * decimal number of levels. Xen 4.17's xenstored refuses any third argument
 * with EINVAL; newer ones read it with atoi(), so that a word would quietly
 * mean depth 0, a watch the client did not ask for. A depth that is not a
 * number is EINVAL, as 4.17 answers it.
 */
function watchDepthArg(text: string): number {
  if (!/^[0-9]+$/.test(text)) throw new XsError('EINVAL', `watch depth '${text}' is not a number`);
  return Number(text);
}

function unsignedArg(text: string): number {
  const value = cAtoi(text);
  if (value < 0 || value >= 0xffffffff) throw new XsError('EINVAL', `bad value '${text}'`);
  return value;
}

export const HANDLERS = new Map<number, Handler>([
  [XsType.CONTROL, { privileged: true, run: (ctx) => runControl(ctx.services, ctx.conn, ctx.msg.payload) }],

  [
    XsType.READ,
    {
      run: (ctx) => {
        const path = pathArg(ctx, lookupArg(ctx.msg.payload));
        return inView(ctx, (view) => ctx.services.store.read(view, caller(ctx), path));
      },
    },
  ],

  [
    XsType.WRITE,
    {
      run: (ctx) => {
        const payload = ctx.msg.payload;
        const nul = payload.indexOf(0);
        if (nul < 0) throw new XsError('EINVAL', 'WRITE needs a NUL-terminated path');
        const path = pathArg(ctx, payload.toString('latin1', 0, nul));
        // The store keeps a copy of its own: this is a view of the request's buffer.
        const value = payload.subarray(nul + 1);
        inView(ctx, (view) => ctx.services.store.write(view, caller(ctx), path, value));
        return OK;
      },
    },
  ],

  [
    XsType.MKDIR,
    {
      run: (ctx) => {
        const path = pathArg(ctx, oneArg(ctx.msg.payload));
        inView(ctx, (view) => ctx.services.store.mkdir(view, caller(ctx), path));
        return OK;
      },
    },
  ],

  [
    XsType.RM,
    {
      run: (ctx) => {
        const path = pathArg(ctx, oneArg(ctx.msg.payload));
        inView(ctx, (view) => ctx.services.store.rm(view, caller(ctx), path));
        return OK;
      },
    },
  ],

  [
    XsType.DIRECTORY,
    {
      run: (ctx) => {
        const path = pathArg(ctx, lookupArg(ctx.msg.payload));
        return inView(ctx, (view) => ctx.services.store.directory(view, caller(ctx), path).childList());
      },
    },
  ],

  [
    XsType.DIRECTORY_PART,
    {
      run: (ctx) => {
        const [pathText, offsetText] = exactStrings(ctx.msg.payload, 2) as [string, string];
        const path = pathArg(ctx, pathText);
        const offset = cAtoi(offsetText);
        // A negative offset is huge once xenstored reads it as unsigned: past the end.
        const from = offset < 0 ? Number.MAX_SAFE_INTEGER : offset;
        return inView(ctx, (view) => directoryPart(ctx.services.store.directory(view, caller(ctx), path), from));
      },
    },
  ],

  [
    XsType.GET_PERMS,
    {
      run: (ctx) => {
        const path = permsPathArg(ctx, lookupArg(ctx.msg.payload));
        const perms = inView(ctx, (view) => ctx.services.store.getPerms(view, caller(ctx), path));
        return nulStrings(...perms.map(formatPerm));
      },
    },
  ],

  [
    XsType.SET_PERMS,
    {
      run: (ctx) => {
        const [pathText, ...entries] = atLeastStrings(ctx.msg.payload, 2) as [string, ...string[]];
        const perms = parsePermStrings(entries);
        const path = permsPathArg(ctx, pathText);
        inView(ctx, (view) => ctx.services.store.setPerms(view, caller(ctx), path, perms));
        return OK;
      },
    },
  ],

  [
    XsType.WATCH,
    {
      ignoresTransaction: true,
      run: (ctx) => {
        const { services, conn } = ctx;
        const args = strings(ctx.msg.payload);
        let depth: number | undefined;
        if (args.length === 3 && (conn.domain.features & XsServerFeature.WATCHDEPTH) !== 0) {
          depth = watchDepthArg(args[2]!);
        } else if (args.length !== 2) {
          throw new XsError('EINVAL', `WATCH takes a path and a token`);
        }
        const [pathText, token] = args as [string, string];
        const relative = !pathText.startsWith('/') && !pathText.startsWith('@');
        const path = pathArg(ctx, pathText, true);
        if (conn.watches.find(path.full, token)) {
          throw new XsError('EEXIST', `watch on ${path.full} with that token exists`);
        }
        const domain = conn.domain;
        if (domain.wouldExceed('watches', domain.counts.watches, 1)) {
          throw new XsError('ENOSPC', `domain ${domain.domid} has ${domain.counts.watches} watches`);
        }
        if (domain.wouldExceed('memory', services.domains.registry.memoryOf(domain), path.full.length + token.length)) {
          throw new XsError('ENOMEM', `domain ${domain.domid} is over its memory quota`);
        }
        const watch = { owner: conn, path: path.full, token, depth, prefixLength: relative ? domainHome(conn.domid).length + 1 : 0 };
        services.watches.add(conn, watch);
        // Fires once at once, with the path as the client gave it.
        ctx.afterReply(() => services.watches.sendEvent(watch, path.full.slice(watch.prefixLength), undefined, false));
        return OK;
      },
    },
  ],

  [
    XsType.UNWATCH,
    {
      ignoresTransaction: true,
      run: (ctx) => {
        const [pathText, token] = exactStrings(ctx.msg.payload, 2) as [string, string];
        const path = pathArg(ctx, pathText, true);
        const watch = ctx.conn.watches.find(path.full, token);
        if (!watch) throw new XsError('ENOENT', `no watch on ${path.full} with that token`);
        ctx.services.watches.remove(ctx.conn, watch);
        return OK;
      },
    },
  ],

  [
    XsType.RESET_WATCHES,
    {
      run: (ctx) => {
        ctx.services.watches.removeAll(ctx.conn);
        ctx.services.transactions.endAll(ctx.conn);
        return OK;
      },
    },
  ],

  [
    XsType.TRANSACTION_START,
    {
      run: (ctx) => {
        if (ctx.msg.txId !== 0) throw new XsError('EBUSY', 'transactions do not nest');
        const tx = ctx.services.transactions.start(ctx.conn);
        return nulStrings(String(tx.id));
      },
    },
  ],

  [
    XsType.TRANSACTION_END,
    {
      run: (ctx) => {
        const arg = oneArg(ctx.msg.payload);
        if (arg !== 'T' && arg !== 'F') throw new XsError('EINVAL', `TRANSACTION_END takes T or F, not '${arg}'`);
        const tx = ctx.msg.txId !== 0 ? ctx.conn.transactions.get(ctx.msg.txId) : undefined;
        if (!tx) throw new XsError('ENOENT', 'no transaction to end');
        // Whatever the outcome, the transaction id is no longer valid afterwards.
        try {
          if (arg === 'T') ctx.services.commit.transaction(ctx.conn, ctx.ticket, tx);
        } finally {
          ctx.services.transactions.end(ctx.conn, tx);
        }
        return OK;
      },
    },
  ],

  [
    XsType.INTRODUCE,
    {
      privileged: true,
      run: (ctx) => {
        const [domidText, gfnText, portText] = atLeastStrings(ctx.msg.payload, 3) as [string, string, string];
        const domid = domidArg(domidText);
        if (domid === PRIVILEGED_DOMID || domid >= DOMID_FIRST_RESERVED) {
          throw new XsError('EINVAL', `${domid} is not a domain that can be introduced`);
        }
        const port = cAtoi(portText);
        if (port <= 0) throw new XsError('EINVAL', `bad event channel '${portText}'`);
        ctx.services.domains.introduce(domid, gfnArg(gfnText), port);
        return OK;
      },
    },
  ],

  [
    XsType.RELEASE,
    {
      privileged: true,
      run: (ctx) => {
        const domid = guestDomidArg(ctx);
        introducedDomain(ctx, domid);
        ctx.services.domains.release(domid);
        return OK;
      },
    },
  ],

  [
    XsType.RESUME,
    {
      privileged: true,
      run: (ctx) => {
        const domain = introducedDomain(ctx, guestDomidArg(ctx));
        domain.shutdown = false;
        ctx.services.domains.changed(domain.domid);
        return OK;
      },
    },
  ],

  [
    XsType.SET_TARGET,
    {
      privileged: true,
      run: (ctx) => {
        const [domidText, targetText] = atLeastStrings(ctx.msg.payload, 2) as [string, string];
        const domain = introducedDomain(ctx, domidArg(domidText));
        const target = introducedDomain(ctx, domidArg(targetText));
        domain.target = target.domid;
        ctx.services.domains.changed(domain.domid);
        return OK;
      },
    },
  ],

  [
    XsType.GET_DOMAIN_PATH,
    {
      run: (ctx) => nulStrings(domainHome(domidArg(oneArg(ctx.msg.payload)))),
    },
  ],

  [
    XsType.IS_DOMAIN_INTRODUCED,
    {
      privileged: true,
      run: (ctx) => {
        const domid = domidArg(oneArg(ctx.msg.payload));
        const introduced = domid === DOMID_SELF || ctx.services.domains.registry.find(domid)?.introduced === true;
        return nulStrings(introduced ? 'T' : 'F');
      },
    },
  ],

  [
    XsType.GET_FEATURE,
    {
      run: (ctx) => {
        const args = strings(ctx.msg.payload);
        if (args.length === 0) return nulStrings(String(ctx.conn.domain.features));
        if (!ctx.conn.domain.privileged) throw new XsError('EACCES', 'only the privileged domain may ask for another domain');
        if (args.length > 1) throw new XsError('EINVAL', 'GET_FEATURE takes at most a domid');
        const domid = domidArg(args[0]!);
        const domain = ctx.services.domains.registry.findOrCreate(domid);
        if (!domain) throw new XsError('ENOENT', `domain ${domid} does not exist`);
        return nulStrings(String(domain.features));
      },
    },
  ],

  [
    XsType.SET_FEATURE,
    {
      privileged: true,
      run: (ctx) => {
        const [domidText, valueText] = exactStrings(ctx.msg.payload, 2) as [string, string];
        const domid = domidArg(domidText);
        const features = cAtoi(valueText);
        const domain = ctx.services.domains.registry.findOrCreate(domid);
        if (!domain) throw new XsError('ENOENT', `domain ${domid} does not exist`);
        if (domain.introduced) throw new XsError('EBUSY', `domain ${domid} is already introduced`);
        if (features < 0 || (features & ~SUPPORTED_FEATURES) !== 0) {
          throw new XsError('EINVAL', `features ${valueText} not supported (supported: ${SUPPORTED_FEATURES})`);
        }
        domain.features = features;
        ctx.services.domains.changed(domid);
        return OK;
      },
    },
  ],

  [
    XsType.GET_QUOTA,
    {
      privileged: true,
      run: (ctx) => {
        const args = strings(ctx.msg.payload);
        if (args.length > 2) throw new XsError('EINVAL', 'GET_QUOTA takes at most a domid and a name');
        if (args.length === 0) return nulStrings(quotaNames());
        const quotas = args.length === 1 ? ctx.services.domains.registry.globalQuotas : domainQuotas(ctx, args[0]!);
        const name = resolveQuotaName(args.at(-1)!);
        if (!name) throw new XsError('EINVAL', `unknown quota '${args.at(-1)}'`);
        const value = name.kind === 'hard' ? quotas.hard[name.item] : quotas.soft[name.item];
        return nulStrings(String(value));
      },
    },
  ],

  [
    XsType.SET_QUOTA,
    {
      privileged: true,
      run: (ctx) => {
        const args = strings(ctx.msg.payload);
        if (args.length < 2 || args.length > 3) throw new XsError('EINVAL', 'SET_QUOTA takes [domid] name value');
        const quotas = args.length === 2 ? ctx.services.domains.registry.globalQuotas : domainQuotas(ctx, args[0]!);
        const name = resolveQuotaName(args.at(-2)!);
        if (!name) throw new XsError('EINVAL', `unknown quota '${args.at(-2)}'`);
        const value = unsignedArg(args.at(-1)!);
        const scope = args.length === 2 ? 'global' : `domain ${args[0]}`;
        setQuota(quotas, name, value, `SET_QUOTA ${args.at(-2)} ${value} (${scope})`);
        ctx.services.domains.changed(args.length === 2 ? undefined : domidArg(args[0]!));
        return OK;
      },
    },
  ],
]);

function domainQuotas(ctx: RequestContext, domidText: string) {
  const domid = domidArg(domidText);
  const domain = ctx.services.domains.registry.findOrCreate(domid);
  if (!domain) throw new XsError('ENOENT', `domain ${domid} does not exist`);
  return domain.quotas;
}
