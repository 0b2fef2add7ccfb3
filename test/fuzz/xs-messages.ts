/**
 * Xenstore requests for the fuzzer: well-shaped ones of every message type
 * (including numbers xs_wire.h does not define), built from the vocabulary
 * and from what the client has set up (its transactions and watches), then
 * perhaps mutated: NULs dropped, added or moved, payloads cut, padded or
 * replaced, header fields bogus, the length field lying. A lying length
 * shifts how the daemon frames everything after it; the oracle frames the
 * bytes the same way (xs-frames.ts), so that is fair game too.
 */
import { XENSTORE_PAYLOAD_MAX, XS_HEADER_SIZE, XsType, nulStrings } from '../../shared/xs-wire.js';
import type { Prng } from './prng.js';
import type { XsVocabulary } from './xs-vocabulary.js';

/** One request as it goes on the wire. */
export interface XsRequest {
  type: number;
  reqId: number;
  txId: number;
  payload: Buffer;
  /** The header's length field when it lies about the payload. */
  declaredLength?: number;
  /** A short description for failure reports. */
  what: string;
}

/** What a client has set up so far, for requests that use it. */
export interface XsClientView {
  readonly transactions: readonly number[];
  readonly watches: readonly { readonly path: string; readonly token: string }[];
}

/** Type numbers beyond xs_wire.h's, and the removed XS_RESTRICT: each must get ENOSYS. */
const UNKNOWN_TYPES = [20, 27, 28, 63, 128, 0xffff, 0x7fff_ffff, 0xffff_ffff];
/** CONTROL commands of xenstored_control.c, and a few it does not have. */
const CONTROL_COMMANDS = ['check', 'log', 'logfile', 'memreport', 'print', 'quota', 'quota-soft', 'help', 'live-update', 'unknown', ''];

/** Encodes a request: the header (with its length field, true or not) and the payload. */
export function encodeRequest(request: XsRequest): Buffer {
  const header = Buffer.alloc(XS_HEADER_SIZE);
  header.writeUInt32LE(request.type >>> 0, 0);
  header.writeUInt32LE(request.reqId >>> 0, 4);
  header.writeUInt32LE(request.txId >>> 0, 8);
  header.writeUInt32LE((request.declaredLength ?? request.payload.length) >>> 0, 12);
  return Buffer.concat([header, request.payload]);
}

export class XsMessageGenerator {
  private nextReqId = 1;

  constructor(
    private readonly rng: Prng,
    private readonly words: XsVocabulary,
    /** How likely a request is mutated after it is built. */
    private readonly mutationRate: number,
  ) {}

  /** The next request: usually well-shaped, sometimes mutated, now and then pure noise. */
  next(view: XsClientView): XsRequest {
    const rng = this.rng;
    if (rng.chance(0.04)) return this.noise();
    const request = this.wellShaped(view);
    if (request.payload.length > XENSTORE_PAYLOAD_MAX) {
      request.payload = request.payload.subarray(0, XENSTORE_PAYLOAD_MAX);
      request.what += ' (cut to the payload limit)';
    }
    if (rng.chance(this.mutationRate)) this.mutate(request, view);
    return request;
  }

  /** A request whose payload announces more than XENSTORE_PAYLOAD_MAX: the peer must be cut off. */
  oversized(): XsRequest {
    const length = this.rng.pick([XENSTORE_PAYLOAD_MAX + 1, XENSTORE_PAYLOAD_MAX + 100, 0x10000, 0xffff_ffff]);
    const withPayload = length <= XENSTORE_PAYLOAD_MAX + 100 && this.rng.chance(0.5);
    return {
      type: this.rng.pick([XsType.WRITE, XsType.READ, XsType.CONTROL, 99]),
      reqId: this.reqId(),
      txId: 0,
      payload: withPayload ? Buffer.alloc(length, 0x61) : Buffer.alloc(0),
      declaredLength: length,
      what: `a header announcing ${length} bytes`,
    };
  }

  private reqId(): number {
    const rng = this.rng;
    if (rng.chance(0.9)) return this.nextReqId++;
    return rng.pick([0, 0xffff_ffff, this.nextReqId - 1, rng.u32()]);
  }

  /**
   * One of `items` with probability `p` (if there are any). The same draws
   * are made whatever the list holds, so that what the daemon answered
   * (which transactions and watches a client has) never shifts the random
   * sequence of the requests that follow: a seed replays the same stream.
   */
  private maybeFrom<T>(items: readonly T[], p: number): T | undefined {
    const use = this.rng.chance(p);
    const at = this.rng.float();
    return use && items.length > 0 ? items[Math.floor(at * items.length)] : undefined;
  }

  /** The tx_id of a request that may run in a transaction: none, one the client has, or a bogus one. */
  private txId(view: XsClientView): number {
    const rng = this.rng;
    const known = this.maybeFrom(view.transactions, 0.35);
    const bogus = rng.chance(0.06) ? rng.pick([1, 2, 0xffff_ffff, rng.u32()]) : 0;
    return known ?? bogus;
  }

  private noise(): XsRequest {
    const rng = this.rng;
    const type = rng.chance(0.7) ? rng.below(30) : rng.u32();
    return { type, reqId: this.reqId(), txId: rng.chance(0.8) ? 0 : rng.u32(), payload: rng.bytes(rng.length(600)), what: `noise of type ${type}` };
  }

  private wellShaped(view: XsClientView): XsRequest {
    const rng = this.rng;
    const w = this.words;
    const req = (type: number, what: string, ...parts: (string | Buffer)[]): XsRequest => ({
      type,
      reqId: this.reqId(),
      txId: 0,
      payload: nulStrings(...parts),
      what,
    });
    const inTx = (request: XsRequest): XsRequest => ({ ...request, txId: this.txId(view) });
    const known = this.maybeFrom(view.watches, 0.6);
    const make = rng.weighted<() => XsRequest>([
      [14, () => inTx(req(XsType.READ, 'READ', w.path()))],
      [14, () => this.write(inTx(req(XsType.WRITE, 'WRITE')))],
      [6, () => inTx(req(XsType.MKDIR, 'MKDIR', w.path()))],
      [6, () => inTx(req(XsType.RM, 'RM', w.path()))],
      [8, () => inTx(req(XsType.DIRECTORY, 'DIRECTORY', w.path()))],
      [3, () => inTx(req(XsType.DIRECTORY_PART, 'DIRECTORY_PART', w.path(), rng.pick(['0', '1', '3', '-1', '99999', 'x', ''])))],
      [5, () => inTx(req(XsType.GET_PERMS, 'GET_PERMS', w.path()))],
      [6, () => inTx(req(XsType.SET_PERMS, 'SET_PERMS', w.path(), ...Array.from({ length: rng.weighted([[1, 0], [8, rng.int(1, 3)], [2, rng.int(4, 8)]]) }, () => w.permission())))],
      [8, () => this.watch(req, known)],
      [5, () => this.unwatch(req, known)],
      [1, () => req(XsType.RESET_WATCHES, 'RESET_WATCHES', '')],
      [6, () => ({ ...req(XsType.TRANSACTION_START, 'TRANSACTION_START', ''), txId: rng.chance(0.1) ? this.txId(view) : 0 })],
      [6, () => ({ ...req(XsType.TRANSACTION_END, 'TRANSACTION_END', rng.weighted([[6, 'T'], [4, 'F'], [1, 't'], [1, ''], [1, 'TF']])), txId: this.maybeFrom(view.transactions, 0.8) ?? this.txId(view) })],
      [3, () => req(XsType.GET_DOMAIN_PATH, 'GET_DOMAIN_PATH', w.domid())],
      [2, () => req(XsType.IS_DOMAIN_INTRODUCED, 'IS_DOMAIN_INTRODUCED', w.domid())],
      [2, () => this.introduce(req)],
      [1, () => req(XsType.RELEASE, 'RELEASE', w.domid())],
      [1, () => req(XsType.RESUME, 'RESUME', w.domid())],
      [1, () => req(XsType.SET_TARGET, 'SET_TARGET', w.domid(), w.domid())],
      [2, () => req(XsType.GET_FEATURE, 'GET_FEATURE', ...(rng.chance(0.5) ? [] : [w.domid()]))],
      [1, () => req(XsType.SET_FEATURE, 'SET_FEATURE', w.domid(), rng.pick(['0', '1', '3', '15', '16', '-1', 'x']))],
      [2, () => req(XsType.GET_QUOTA, 'GET_QUOTA', ...this.quotaArgs(false))],
      [2, () => req(XsType.SET_QUOTA, 'SET_QUOTA', ...this.quotaArgs(true))],
      [3, () => this.control(req)],
      [1, () => req(XsType.WATCH_EVENT, 'WATCH_EVENT sent as a request', w.path(), w.token())],
      [1, () => req(XsType.ERROR, 'ERROR sent as a request', 'EINVAL')],
      [2, () => req(rng.pick(UNKNOWN_TYPES), 'an unknown type', w.path())],
    ]);
    return make();
  }

  private write(base: XsRequest): XsRequest {
    const path = Buffer.from(this.words.path(), 'latin1');
    const value = this.words.value(XENSTORE_PAYLOAD_MAX - path.length - 1);
    return { ...base, payload: Buffer.concat([path, Buffer.from([0]), value]) };
  }

  private watch(req: (type: number, what: string, ...parts: string[]) => XsRequest, known: { path: string; token: string } | undefined): XsRequest {
    const rng = this.rng;
    // Drawn whether or not they are used: see maybeFrom.
    const [samePath, sameToken, path, token] = [rng.chance(0.3), rng.chance(0.3), this.words.path(), this.words.token()];
    return this.watchOf(req, known && samePath ? known.path : path, known && sameToken ? known.token : token);
  }

  private watchOf(req: (type: number, what: string, ...parts: string[]) => XsRequest, path: string, token: string): XsRequest {
    const rng = this.rng;
    const depth = rng.chance(0.2) ? [rng.pick(['0', '1', '2', '10', '-1', 'x', ''])] : [];
    return req(XsType.WATCH, depth.length ? 'WATCH with a depth' : 'WATCH', path, token, ...depth);
  }

  /** UNWATCH of a watch the client set (perhaps), or of anything. */
  private unwatch(req: (type: number, what: string, ...parts: string[]) => XsRequest, known: { path: string; token: string } | undefined): XsRequest {
    const [path, token] = [this.words.path(), this.words.token()];
    return known ? req(XsType.UNWATCH, 'UNWATCH of a watch it set', known.path, known.token) : req(XsType.UNWATCH, 'UNWATCH', path, token);
  }

  /** INTRODUCE: the spare domain with its real ring page and port, or arguments that are wrong. */
  private introduce(req: (type: number, what: string, ...parts: string[]) => XsRequest): XsRequest {
    const rng = this.rng;
    const { spare } = this.words.world;
    if (rng.chance(0.5)) return req(XsType.INTRODUCE, 'INTRODUCE of the spare domain', String(spare.domid), String(spare.gfn), String(spare.port));
    const gfn = rng.pick([String(spare.gfn), '0', '-1', '18446744073709551616', 'x']);
    const port = rng.pick([String(spare.port), '0', '-1', '1', '4095', '65536', 'x']);
    return req(XsType.INTRODUCE, 'INTRODUCE', this.words.domid(), gfn, port, ...(rng.chance(0.1) ? ['extra'] : []));
  }

  private quotaArgs(set: boolean): string[] {
    const rng = this.rng;
    const w = this.words;
    const value = set ? [w.quotaValue()] : [];
    const shape = rng.below(4);
    if (shape === 0) return set ? [w.quotaName()] : [];
    if (shape === 1) return [w.quotaName(), ...value];
    if (shape === 2) return [w.domid(), w.quotaName(), ...value];
    return [w.domid(), w.quotaName(), ...value, 'extra'];
  }

  /** CONTROL with a command and its arguments; files only ever name the sandbox. */
  private control(req: (type: number, what: string, ...parts: string[]) => XsRequest): XsRequest {
    const rng = this.rng;
    const w = this.words;
    const command = rng.pick(CONTROL_COMMANDS);
    let args: string[];
    switch (command) {
      case 'log':
        args = [rng.pick(['on', 'off', 'maybe'])];
        break;
      case 'logfile':
        args = [w.sandboxFile()];
        break;
      case 'memreport':
        args = rng.chance(0.5) ? [] : [w.sandboxFile()];
        break;
      case 'print':
        args = [rng.string(rng.int(0, 40), 'abcdef ')];
        break;
      case 'quota':
        args = rng.pick([[], ['set', w.quotaName(), w.quotaValue()], [w.domid()], ['set', w.quotaName()]]);
        break;
      case 'quota-soft':
        args = rng.pick([[], ['set', 'memory', w.quotaValue()], ['set', w.quotaName(), w.quotaValue()]]);
        break;
      default:
        args = rng.chance(0.3) ? ['extra'] : [];
    }
    return req(XsType.CONTROL, `CONTROL ${command}`, command, ...args);
  }

  /** Damages a request the ways a broken or hostile client would. */
  private mutate(request: XsRequest, view: XsClientView): void {
    const rng = this.rng;
    const p = request.payload;
    const mutation = rng.weighted<string>([
      [10, 'drop-last-nul'],
      [8, 'extra-nul'],
      [6, 'nul-inside'],
      [6, 'truncate'],
      [6, 'append-garbage'],
      [6, 'flip-bytes'],
      [4, 'empty'],
      [3, 'random-payload'],
      [3, 'max-payload'],
      [5, 'type'],
      [3, 'req-id'],
      [4, 'tx-id'],
      [0.5, 'length-short'],
      [0.5, 'length-long'],
    ]);
    switch (mutation) {
      case 'drop-last-nul':
        request.payload = p.length > 0 && p[p.length - 1] === 0 ? p.subarray(0, p.length - 1) : p;
        break;
      case 'extra-nul':
        request.payload = Buffer.concat([p, Buffer.alloc(rng.int(1, 3))]);
        break;
      case 'nul-inside': {
        const copy = Buffer.from(p.length > 0 ? p : Buffer.from('x'));
        copy[rng.below(copy.length)] = 0;
        request.payload = copy;
        break;
      }
      case 'truncate':
        request.payload = p.subarray(0, rng.below(p.length + 1));
        break;
      case 'append-garbage':
        request.payload = Buffer.concat([p, rng.bytes(rng.int(1, 64))]);
        break;
      case 'flip-bytes': {
        const copy = Buffer.from(p);
        for (let i = 0, n = rng.int(1, 4); i < n && copy.length > 0; i++) copy[rng.below(copy.length)] = rng.u32() & 0xff;
        request.payload = copy;
        break;
      }
      case 'empty':
        request.payload = Buffer.alloc(0);
        break;
      case 'random-payload':
        request.payload = rng.bytes(rng.length(XENSTORE_PAYLOAD_MAX));
        break;
      case 'max-payload':
        request.payload = Buffer.concat([p, Buffer.alloc(Math.max(0, XENSTORE_PAYLOAD_MAX - p.length), 0x7a)]).subarray(0, XENSTORE_PAYLOAD_MAX);
        break;
      case 'type':
        request.type = rng.chance(0.8) ? rng.below(30) : rng.u32();
        break;
      case 'req-id':
        request.reqId = rng.u32();
        break;
      case 'tx-id':
        const bogus = rng.u32();
        request.txId = this.maybeFrom(view.transactions, 0.5) ?? bogus;
        break;
      case 'length-short':
        request.declaredLength = rng.below(Math.max(1, p.length));
        break;
      case 'length-long':
        request.declaredLength = Math.min(XENSTORE_PAYLOAD_MAX, p.length + rng.int(1, 40));
        break;
    }
    if (request.payload.length > XENSTORE_PAYLOAD_MAX) request.payload = request.payload.subarray(0, XENSTORE_PAYLOAD_MAX);
    request.what += ` [${mutation}]`;
  }
}
