/**
 * The words xenstore fuzz messages are made of: paths, values, tokens,
 * domain ids, permission strings, quota names, control commands. Each
 * pool mixes what a real client sends (so that requests reach deep into
 * the daemon and collide with each other's nodes and watches) with what
 * only a hostile one would (bad characters, doubled slashes, lengths just
 * either side of the protocol's limits).
 */
import { DOMID_ANY, DOMID_FIRST_RESERVED, DOMID_WIRE_MAX } from '../../shared/domid.js';
import { XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX } from '../../shared/xs-wire.js';
import { QUOTA_ITEMS } from '../../xenstore/store/quota.js';
import type { Prng } from './prng.js';

/** What the words refer to in one batch. */
export interface XsWorld {
  /** The unprivileged domain fuzzing over its ring. */
  readonly ringDomid: number;
  /** A domain that exists but that only the fuzzers introduce and release. */
  readonly spare: { readonly domid: number; readonly gfn: number; readonly port: number };
  /** The only directory CONTROL's logfile and memreport may write in. */
  readonly sandbox: string;
}

/** Characters docs/misc/xenstore.txt allows in a path. */
const PATH_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_@';
/** A few names, so that random paths often meet. */
const COMPONENTS = ['a', 'b', 'c', 'x', 'data', 'device', 'vbd', 'state', 'name', 'fuzz', 'tool', 'local', 'domain', '0', '1'];
/** Characters the protocol does not allow in a path, and a few that stress decoders. */
const BAD_PATH_CHARS = [' ', '.', '*', '?', '\\', '\x01', '\x7f', '\xff', '\u00e9', '\n', '%', '+', ':', ','];

export class XsVocabulary {
  constructor(
    private readonly rng: Prng,
    readonly world: XsWorld,
  ) {}

  /** The paths the fuzzers share, absolute and relative, so that their requests collide. */
  private hotPaths(): string[] {
    const { ringDomid, spare } = this.world;
    return [
      '/',
      '/fuzz',
      '/fuzz/a',
      '/fuzz/a/b',
      '/fuzz/b',
      '/local',
      '/local/domain',
      `/local/domain/${ringDomid}`,
      `/local/domain/${ringDomid}/data`,
      `/local/domain/${ringDomid}/data/x`,
      `/local/domain/${spare.domid}`,
      '/local/domain/0',
      '/tool',
      '/tool/xenstored',
      'data',
      'data/x',
      'data/x/y',
      'x',
      'name',
    ];
  }

  private specialPaths(): string[] {
    return ['@introduceDomain', '@releaseDomain', `@releaseDomain/${this.world.spare.domid}`, '@releaseDomain/5', '@other', '@', '@introduceDomain/x/y'];
  }

  /** A path: usually one that exists or could, sometimes a bad or huge one. */
  path(): string {
    const rng = this.rng;
    return rng.weighted<() => string>([
      [40, () => rng.pick(this.hotPaths())],
      [20, () => this.randomPath()],
      [8, () => rng.pick(this.specialPaths())],
      [8, () => this.badPath()],
      [4, () => this.longPath()],
      [3, () => this.deepPath()],
    ])();
  }

  private component(): string {
    return this.rng.chance(0.6) ? this.rng.pick(COMPONENTS) : this.rng.string(this.rng.int(1, 12), PATH_CHARS);
  }

  private randomPath(): string {
    const parts = Array.from({ length: this.rng.int(1, 5) }, () => this.component());
    const base = this.rng.pick(['/', '/fuzz/', `/local/domain/${this.world.ringDomid}/`, '']);
    return base + parts.join('/');
  }

  /** A path the protocol refuses: a bad character, a doubled or trailing slash, nothing at all. */
  private badPath(): string {
    const good = this.randomPath() || '/x';
    const at = this.rng.int(0, good.length);
    return this.rng.weighted<string>([
      [4, good.slice(0, at) + this.rng.pick(BAD_PATH_CHARS) + good.slice(at)],
      [2, `${good}/`],
      [2, good.replace('/', '//')],
      [2, ''],
      [1, '//'],
      [1, '/..'],
      [1, './x'],
    ]);
  }

  /** A path whose length is at or just beside one of the protocol's limits. */
  private longPath(): string {
    const limit = this.rng.pick([XENSTORE_REL_PATH_MAX, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX - 1]);
    const target = limit + this.rng.int(-2, 2);
    const prefix = this.rng.pick(['/fuzz', `/local/domain/${this.world.ringDomid}/data`, 'data', '/']);
    let path = prefix === '/' ? '' : prefix;
    while (path.length < target) {
      const room = target - path.length - 1;
      path += `/${this.rng.string(Math.max(1, Math.min(room, this.rng.int(1, 250))), PATH_CHARS)}`;
    }
    return path.slice(0, Math.max(1, target));
  }

  /** Hundreds of levels of one-letter components. */
  private deepPath(): string {
    const depth = this.rng.int(50, 1200);
    const relative = this.rng.chance(0.3);
    return (relative ? 'data' : '/fuzz') + '/d'.repeat(depth);
  }

  /** A node value: empty, text, binary (NULs included) or as long as the payload allows. */
  value(room: number): Buffer {
    const rng = this.rng;
    const max = Math.max(0, room);
    return rng.weighted<() => Buffer>([
      [5, () => Buffer.alloc(0)],
      [30, () => Buffer.from(rng.string(rng.int(1, 20), PATH_CHARS), 'latin1')],
      [20, () => rng.bytes(rng.length(Math.min(max, 512)))],
      [5, () => Buffer.alloc(max, 0x76)],
      [3, () => Buffer.alloc(Math.min(max, 2048 + rng.int(-1, 1)), 0x77)],
    ])();
  }

  /** A watch token: shared ones (so that watches clash), odd ones, long ones. */
  token(): string {
    const rng = this.rng;
    return rng.weighted<() => string>([
      [30, () => rng.pick(['t', 'tok', 'tok2', 'w'])],
      [10, () => rng.string(rng.int(1, 30), PATH_CHARS + ' /.:')],
      [3, () => ''],
      [3, () => 'x'.repeat(rng.int(1000, 4000))],
      [2, () => rng.bytes(rng.int(1, 40)).toString('latin1').replaceAll('\0', '')],
    ])();
  }

  /** A `<domid>` argument: mostly one a domain could have, sometimes text no domid parser accepts. */
  domid(): string {
    const { ringDomid, spare } = this.world;
    if (this.rng.chance(0.75)) {
      return this.rng.pick(['0', String(ringDomid), String(spare.domid), String(spare.domid), '1', '3', String(DOMID_FIRST_RESERVED), String(DOMID_ANY), String(DOMID_WIRE_MAX)]);
    }
    return this.rng.pick([String(DOMID_WIRE_MAX + 1), '4294967296', '', '-1', 'x', '007', ' 3', '3 ', '0x10']);
  }

  /** One `<perm-as-string>` of SET_PERMS. */
  permission(): string {
    const letter = this.rng.weighted<string>([
      [10, 'n'],
      [10, 'r'],
      [10, 'w'],
      [10, 'b'],
      [2, 'x'],
      [1, 'B'],
      [1, ''],
    ]);
    const { ringDomid, spare } = this.world;
    const domid = this.rng.weighted<() => string>([
      [16, () => this.rng.pick(['0', String(ringDomid), String(spare.domid), '3', String(DOMID_ANY)])],
      [2, () => this.domid()],
      [1, () => this.rng.pick(['0x7ff5', '010', '+5', '99999999999'])],
    ])();
    return letter + domid;
  }

  /** A quota name as GET_QUOTA and SET_QUOTA take it (`soft-` for a soft one). */
  quotaName(): string {
    return this.rng.weighted<() => string>([
      [10, () => this.rng.pick(QUOTA_ITEMS)],
      [2, () => 'soft-memory'],
      [2, () => this.rng.pick(['soft-nodes', 'memory-soft', 'quota', '', 'NODES'])],
    ])();
  }

  /** A quota value: ordinary, zero (no limit), the smallest, huge, negative, or not a number. */
  quotaValue(): string {
    return this.rng.pick(['0', '1', '5', '64', '2048', '1000', '4294967295', '4294967294', '-1', 'x', '', '12abc', ' 7']);
  }

  /** A file name for CONTROL's logfile and memreport: always inside the sandbox. */
  sandboxFile(): string {
    return `${this.world.sandbox}/${this.rng.pick(['trace', 'report', 'trace2'])}`;
  }
}
