import { XsError } from '../../shared/errors.js';
import { XENSTORE_PAYLOAD_MAX } from '../../shared/xs-wire.js';
import { ownedCopy } from '../../shared/owned-copy.js';
import { DOMID_ANY } from '../../shared/domid.js';
import { EMPTY_VALUE, Node, nodeMemory, plannedNodeSize } from './node.js';
import { INTRODUCE_DOMAIN, RELEASE_DOMAIN, parentOf, parseAbsolute, type StorePath } from './path.js';
import { Access, accessFor, type Perm, type PermList, type Principal } from './permissions.js';
import { exceeds, type QuotaItem } from './quota.js';
import { Tree, walkPostOrder } from './tree.js';

/** How a change is matched against watches (xenstored's MATCH_EXACT / MATCH_SUBTREE). */
export type WatchMatch = 'exact' | 'subtree';

/**
 * A change that watches may report. The permissions decide who may see it: a
 * watcher is told if it can read the node now, could read it before the change
 * (`oldPerms`), or can read its parent (XSA-115).
 */
export interface ChangeEvent {
  readonly path: string;
  readonly match: WatchMatch;
  readonly perms: PermList | undefined;
  readonly parentPerms: PermList | undefined;
  readonly oldPerms: PermList | undefined;
}

/** A node as a saved state holds it. */
export interface SavedNode {
  readonly value: Uint8Array;
  readonly perms: PermList;
  readonly generation: number;
  readonly children: readonly (readonly [string, SavedNode])[];
}

/** The tree and generation counter of a store, for a daemon that restarts. */
export interface SavedTree {
  readonly generation: number;
  readonly roots: readonly (readonly [string, SavedNode])[];
}

/** What the store needs to know about domains; the daemon supplies it. */
export interface DomainPolicy {
  /** The hard quota of `item` for a domain; 0 means unlimited. */
  quota(domid: number, item: QuotaItem): number;
  /**
   * The store generation at which a domain became known, or undefined if it
   * does not exist. A permission entry only takes effect on nodes written
   * after its domain appeared, so that a new domain reusing a dead one's id
   * inherits nothing (XSA-322).
   */
  domainGeneration(domid: number): number | undefined;
}

/** A caller of a store operation. */
export interface Caller extends Principal {
  /** Whether permission entries for DOMID_ANY take effect when this caller sets them. */
  readonly domidAnyAllowed: boolean;
}

/** Nodes and node memory owned by one domain. */
export interface NodeUsage {
  nodes: number;
  memory: number;
}

/** The initial nodes of xenstored's setup_structure(), owned by dom0 with no access for others. */
const INITIAL_PATHS = ['/', '/tool', '/tool/xenstored'];
const PRIVILEGED_ONLY: PermList = [{ domid: 0, access: Access.NONE, ignored: false }];

/**
 * Where an operation runs: on the live tree or inside a transaction. The
 * operations are written once against this interface.
 */
export interface StoreView {
  readonly tree: Tree;
  /** The operation looked at a node (a transaction checks these at commit). */
  noteAccess(path: StorePath, node: Node | undefined, caller: Caller): void;
  /** The operation is about to change a node, currently `node` (undefined: being created). */
  noteModify(path: StorePath, node: Node | undefined, caller: Caller): void;
  /** Nodes this view has added (negative: removed) for a domain beyond the live usage. */
  pendingNodes(domid: number): number;
  adjustUsage(domid: number, nodes: number, memory: number): void;
  emit(event: ChangeEvent): void;
}

/**
 * The xenstore database: the live tree, its generation counter and the
 * per-domain accounting of nodes (those under `/`; the special nodes are not
 * counted, as in xenstored). It knows nothing of connections; the daemon
 * turns requests into calls here and delivers the change events.
 */
export class Store {
  readonly tree: Tree;
  private generationCounter = 0;
  private readonly usage = new Map<number, NodeUsage>();

  constructor(readonly policy: DomainPolicy) {
    this.tree = new Tree(new Map());
    for (const full of INITIAL_PATHS) {
      const path = parseAbsolute(full);
      const node = this.tree.newNode(EMPTY_VALUE, PRIVILEGED_ONLY, this.nextGeneration());
      const parent = parentOf(path);
      if (parent) this.tree.get(parent)!.addChild(path.parts.at(-1)!, node);
      else this.tree.roots.set('/', node);
    }
    for (const special of [INTRODUCE_DOMAIN, RELEASE_DOMAIN]) {
      this.tree.roots.set(special, this.tree.newNode(EMPTY_VALUE, PRIVILEGED_ONLY, this.nextGeneration()));
    }
    walkPostOrder(this.tree.roots.get('/')!, '/', (n, full) => this.account(n.ownerDomid, 1, nodeMemory(n, full)));
  }

  /** The whole tree and the generation counter, to be loaded into another store. */
  exportTree(): SavedTree {
    const save = (node: Node): SavedNode => ({
      value: node.value,
      perms: node.perms,
      generation: node.generation,
      children: [...node.children].map(([name, child]) => [name, save(child)]),
    });
    return { generation: this.generationCounter, roots: [...this.tree.roots].map(([root, node]) => [root, save(node)]) };
  }

  /** Replaces the tree with a saved one and recounts every domain's usage from it. */
  importTree(saved: SavedTree): void {
    const load = (savedNode: SavedNode): Node => {
      const node = this.tree.newNode(ownedCopy(savedNode.value), savedNode.perms, savedNode.generation);
      for (const [name, child] of savedNode.children) node.addChild(name, load(child));
      return node;
    };
    this.tree.roots.clear();
    for (const [root, node] of saved.roots) this.tree.roots.set(root, load(node));
    this.generationCounter = saved.generation;
    this.check();
  }

  nextGeneration(): number {
    return ++this.generationCounter;
  }

  /** Sets the generation counter forward to `generation` (a journal replayed), never back. */
  resumeGeneration(generation: number): void {
    this.generationCounter = Math.max(this.generationCounter, generation);
  }

  get currentGeneration(): number {
    return this.generationCounter;
  }

  usageOf(domid: number): NodeUsage {
    return this.usage.get(domid) ?? { nodes: 0, memory: 0 };
  }

  /** Usage of every domain that owns nodes. */
  allUsage(): ReadonlyMap<number, NodeUsage> {
    return this.usage;
  }

  account(domid: number, nodes: number, memory: number): void {
    if (nodes === 0 && memory === 0) return;
    const entry = this.usage.get(domid) ?? { nodes: 0, memory: 0 };
    entry.nodes += nodes;
    entry.memory += memory;
    if (entry.nodes === 0) this.usage.delete(domid);
    else this.usage.set(domid, entry);
  }

  /**
   * Recounts every domain's nodes and memory from the tree and corrects the
   * running totals (`xenstore-control check`). Returns what did not match.
   */
  check(): string[] {
    const actual = new Map<number, NodeUsage>();
    walkPostOrder(this.tree.roots.get('/')!, '/', (n, full) => {
      const entry = actual.get(n.ownerDomid) ?? { nodes: 0, memory: 0 };
      entry.nodes += 1;
      entry.memory += nodeMemory(n, full);
      actual.set(n.ownerDomid, entry);
    });
    const problems: string[] = [];
    for (const domid of new Set([...actual.keys(), ...this.usage.keys()])) {
      const want = actual.get(domid) ?? { nodes: 0, memory: 0 };
      const have = this.usageOf(domid);
      if (want.nodes !== have.nodes || want.memory !== have.memory) {
        problems.push(`domain ${domid}: accounted ${have.nodes} nodes/${have.memory} bytes, tree has ${want.nodes}/${want.memory}`);
      }
    }
    this.usage.clear();
    for (const [domid, entry] of actual) this.usage.set(domid, entry);
    return problems;
  }

  /**
   * The view for operations outside any transaction: they apply at once.
   * The full path of every node changed (or created, or removed) is added to
   * `modified`, for the daemon to commit.
   */
  liveView(events: ChangeEvent[], modified?: Set<string>): StoreView {
    return {
      tree: this.tree,
      noteAccess: () => {},
      noteModify: modified ? (path) => void modified.add(path.full) : () => {},
      pendingNodes: () => 0,
      adjustUsage: (domid, nodes, memory) => this.account(domid, nodes, memory),
      emit: (event) => events.push(event),
    };
  }

  // ---- operations ---------------------------------------------------------

  read(view: StoreView, caller: Caller, path: StorePath): Buffer {
    return this.lookupChecked(view, caller, path, Access.READ).value;
  }

  /** The node whose children DIRECTORY and DIRECTORY_PART list. */
  directory(view: StoreView, caller: Caller, path: StorePath): Node {
    return this.lookupChecked(view, caller, path, Access.READ);
  }

  getPerms(view: StoreView, caller: Caller, path: StorePath): PermList {
    return this.lookupChecked(view, caller, path, Access.READ).perms;
  }

  /**
   * WRITE. The node keeps a copy of `value` in an allocation of its own, not
   * the caller's buffer, which is a slice of a request's and would keep all
   * of that alive (see ownedCopy).
   */
  write(view: StoreView, caller: Caller, path: StorePath, bytes: Buffer): void {
    const value = ownedCopy(bytes);
    const existing = this.lookupForWrite(view, caller, path);
    if (!existing) {
      this.create(view, caller, path, value);
    } else {
      const delta = value.length - existing.value.length;
      this.checkNodeSize(caller, existing.size + delta);
      this.checkMemory(caller, existing.ownerDomid, delta);
      view.noteModify(path, existing, caller);
      const node = view.tree.mutable(path);
      node.value = value;
      this.touch(node);
      view.adjustUsage(node.ownerDomid, 0, delta);
    }
    view.emit(this.changeEvent(view, path, 'subtree', undefined));
  }

  mkdir(view: StoreView, caller: Caller, path: StorePath): void {
    if (this.lookupForWrite(view, caller, path)) return;
    this.create(view, caller, path, EMPTY_VALUE);
    view.emit(this.changeEvent(view, path, 'subtree', undefined));
  }

  rm(view: StoreView, caller: Caller, path: StorePath): void {
    const parent = parentOf(path);
    let node: Node;
    try {
      node = this.lookupChecked(view, caller, path, Access.WRITE);
    } catch (err) {
      if (err instanceof XsError && err.errno === 'ENOENT' && parent) {
        // Removing what is not there is fine, as long as its parent exists.
        const parentNode = view.tree.get(parent);
        view.noteAccess(parent, parentNode, caller);
        if (parentNode) return;
      }
      throw err;
    }
    if (!parent || path.root !== '/') throw new XsError('EINVAL', `${path.full} cannot be removed`);
    view.noteAccess(parent, view.tree.get(parent), caller);
    this.removeSubtree(view, caller, path, node);
  }

  setPerms(view: StoreView, caller: Caller, path: StorePath, requested: readonly Perm[]): void {
    const permLimit = this.policy.quota(caller.domid, 'permissions');
    if (!caller.privileged && exceeds(requested.length, permLimit)) {
      throw new XsError('ENOSPC', `more than ${permLimit} permission entries`);
    }
    const perms = this.markUnknownDomains(caller, requested);
    if (perms[0]!.ignored) throw new XsError('ENOENT', `owner domain ${perms[0]!.domid} does not exist`);
    const existing = this.lookupChecked(view, caller, path, Access.WRITE | Access.OWNER);
    const oldOwner = existing.ownerDomid;
    const newOwner = perms[0]!.domid;
    if (!caller.privileged && newOwner !== oldOwner) {
      throw new XsError('EPERM', 'only the privileged domain may change the owner');
    }
    const sizeDelta = plannedNodeSize(perms.length, 0, 0) - plannedNodeSize(existing.perms.length, 0, 0);
    this.checkNodeSize(caller, existing.size + sizeDelta);
    this.checkMemory(caller, newOwner, newOwner === oldOwner ? sizeDelta : nodeMemory(existing, path.full) + sizeDelta);
    const oldPerms = existing.perms;
    view.noteModify(path, existing, caller);
    const node = view.tree.mutable(path);
    const before = nodeMemory(node, path.full);
    node.perms = perms;
    this.touch(node);
    const after = nodeMemory(node, path.full);
    if (path.root !== '/') {
      // The special nodes only carry permissions; like xenstored we do not count them as anyone's nodes.
    } else if (oldOwner !== newOwner) {
      view.adjustUsage(oldOwner, -1, -before);
      view.adjustUsage(newOwner, 1, after);
    } else {
      view.adjustUsage(newOwner, 0, after - before);
    }
    view.emit(this.changeEvent(view, path, 'subtree', oldPerms));
  }

  // ---- helpers ------------------------------------------------------------

  /**
   * Finds a node the caller may access as `want`, or fails the way
   * xenstored does: EACCES if the node exists but is not accessible; for a
   * missing node ENOENT only if the caller has that access to the nearest
   * existing ancestor, so that nothing is learnt about hidden subtrees.
   */
  lookupChecked(view: StoreView, caller: Caller, path: StorePath, want: number): Node {
    const node = view.tree.get(path);
    view.noteAccess(path, node, caller);
    if (node) {
      if ((accessFor(caller, this.effectivePerms(node)) & want) !== want) {
        throw new XsError('EACCES', `no access to ${path.full}`);
      }
      return node;
    }
    for (let p = parentOf(path); p; p = parentOf(p)) {
      const ancestor = view.tree.get(p);
      view.noteAccess(p, ancestor, caller);
      if (!ancestor) continue;
      if ((accessFor(caller, this.effectivePerms(ancestor)) & want) !== 0) {
        throw new XsError('ENOENT', `${path.full} does not exist`);
      }
      break;
    }
    throw new XsError('EACCES', `no access to ${path.full}`);
  }

  /** The node if it exists and may be written; undefined if it may be created. */
  private lookupForWrite(view: StoreView, caller: Caller, path: StorePath): Node | undefined {
    try {
      return this.lookupChecked(view, caller, path, Access.WRITE);
    } catch (err) {
      if (err instanceof XsError && err.errno === 'ENOENT') return undefined;
      throw err;
    }
  }

  /**
   * Creates `path` and its missing ancestors. New nodes take the permissions
   * of the nearest existing ancestor; a node created by an unprivileged domain
   * is owned by that domain. Every check runs before any change, so that a
   * refused request changes nothing.
   */
  private create(view: StoreView, caller: Caller, path: StorePath, value: Buffer): void {
    const missing: StorePath[] = [path];
    let parent = parentOf(path)!;
    let parentNode = view.tree.get(parent);
    view.noteAccess(parent, parentNode, caller);
    while (!parentNode) {
      missing.unshift(parent);
      parent = parentOf(parent)!;
      parentNode = view.tree.get(parent);
      view.noteAccess(parent, parentNode, caller);
    }
    const inherited = this.effectivePerms(parentNode);
    const perms: PermList = caller.privileged ? inherited : [{ ...inherited[0]!, domid: caller.domid }, ...inherited.slice(1)];
    const owner = perms[0]!.domid;
    const names = missing.map((p) => p.parts.at(-1)!);

    this.checkNodeSize(caller, parentNode.size + names[0]!.length + 1);
    this.checkNodeSize(caller, plannedNodeSize(perms.length, value.length, 0));
    this.checkNodeQuota(view, caller, owner, missing.length);
    let memory = 0;
    missing.forEach((p, i) => {
      const childBytes = i + 1 < names.length ? names[i + 1]!.length + 1 : 0;
      memory += plannedNodeSize(perms.length, p === path ? value.length : 0, childBytes) + p.full.length;
    });
    this.checkMemory(caller, owner, memory);

    view.noteModify(parent, parentNode, caller);
    const parentMutable = view.tree.mutable(parent);
    const parentBefore = nodeMemory(parentMutable, parent.full);
    let attachTo = parentMutable;
    const created: Node[] = [];
    missing.forEach((p, i) => {
      view.noteModify(p, undefined, caller);
      const node = view.tree.newNode(p === path ? value : EMPTY_VALUE, perms, this.nextGeneration());
      attachTo.addChild(names[i]!, node);
      created.push(node);
      attachTo = node;
    });
    this.touch(parentMutable);
    view.adjustUsage(parentMutable.ownerDomid, 0, nodeMemory(parentMutable, parent.full) - parentBefore);
    missing.forEach((p, i) => view.adjustUsage(owner, 1, nodeMemory(created[i]!, p.full)));
  }

  /** Removes a subtree, reporting every removed node (children first) as xenstored does. */
  removeSubtree(view: StoreView, caller: Caller, path: StorePath, node: Node): void {
    const parent = parentOf(path)!;
    const parentOfRoot = view.tree.get(parent)!;
    walkPostOrder(node, path.full, (removed, full, above) => {
      view.adjustUsage(removed.ownerDomid, -1, -nodeMemory(removed, full));
      view.emit({
        path: full,
        match: full === path.full ? 'subtree' : 'exact',
        perms: this.effectivePerms(removed),
        parentPerms: this.effectivePerms(above ?? parentOfRoot),
        oldPerms: undefined,
      });
    });
    view.noteModify(path, node, caller);
    view.noteModify(parent, view.tree.get(parent), caller);
    const parentNode = view.tree.mutable(parent);
    const before = nodeMemory(parentNode, parent.full);
    parentNode.removeChild(path.parts.at(-1)!);
    this.touch(parentNode);
    view.adjustUsage(parentNode.ownerDomid, 0, nodeMemory(parentNode, parent.full) - before);
  }

  /**
   * Marks a node as changed: a new generation, and permission entries for
   * domains that do not exist now settled as ignored for good.
   */
  private touch(node: Node): void {
    node.generation = this.nextGeneration();
    node.perms = this.effectivePerms(node);
  }

  private changeEvent(view: StoreView, path: StorePath, match: WatchMatch, oldPerms: PermList | undefined): ChangeEvent {
    return this.describeChange(view.tree, path, match, oldPerms);
  }

  /** A change event for `path` as it stands in `tree`, with the permissions that govern it. */
  describeChange(tree: Tree, path: StorePath, match: WatchMatch, oldPerms: PermList | undefined): ChangeEvent {
    const node = tree.get(path);
    const parent = parentOf(path);
    const parentNode = parent ? tree.get(parent) : undefined;
    return {
      path: path.full,
      match,
      perms: node ? this.effectivePerms(node) : undefined,
      parentPerms: parentNode ? this.effectivePerms(parentNode) : undefined,
      oldPerms,
    };
  }

  /**
   * Permissions as they take effect now: an entry grants nothing unless its
   * domain exists and is older than the node's last write (XSA-322).
   */
  effectivePerms(node: Node): PermList {
    const perms = node.perms;
    let result: Perm[] | undefined;
    for (let i = 1; i < perms.length; i++) {
      const perm = perms[i]!;
      if (perm.ignored || perm.domid === DOMID_ANY) continue;
      const born = this.policy.domainGeneration(perm.domid);
      if (born !== undefined && born <= node.generation) continue;
      result ??= [...perms];
      result[i] = { ...perm, ignored: true };
    }
    return result ?? perms;
  }

  /** SET_PERMS entries for unknown domains (or DOMID_ANY without the feature) are kept but ignored. */
  private markUnknownDomains(caller: Caller, perms: readonly Perm[]): Perm[] {
    return perms.map((perm) => {
      const known = perm.domid === DOMID_ANY ? caller.domidAnyAllowed : this.policy.domainGeneration(perm.domid) !== undefined;
      return known ? perm : { ...perm, ignored: true };
    });
  }

  private checkNodeSize(caller: Caller, size: number): void {
    const limit = this.policy.quota(caller.domid, 'node-size');
    if (!caller.privileged && exceeds(size, limit)) throw new XsError('ENOSPC', `node size ${size} over quota ${limit}`);
  }

  private checkNodeQuota(view: StoreView, caller: Caller, owner: number, added: number): void {
    if (caller.privileged || owner !== caller.domid) return;
    const limit = this.policy.quota(owner, 'nodes');
    const total = this.usageOf(owner).nodes + view.pendingNodes(owner) + added;
    if (exceeds(total, limit)) throw new XsError('ENOSPC', `domain ${owner} would own ${total} nodes, quota ${limit}`);
  }

  private checkMemory(caller: Caller, owner: number, delta: number): void {
    if (caller.privileged || delta <= 0 || owner !== caller.domid) return;
    const limit = this.policy.quota(owner, 'memory');
    if (exceeds(this.usageOf(owner).memory + delta, limit)) {
      throw new XsError('ENOMEM', `domain ${owner} is over its memory quota`);
    }
  }
}

/**
 * The DIRECTORY_PART reply (xenstored's send_directory_part()): the node's
 * generation, then as many child names from `offset` as fit in a payload;
 * the last part ends with an empty name so that the client knows it is done.
 */
export function directoryPart(node: Node, offset: number): Buffer {
  const gen = Buffer.from(`${node.generation}\0`, 'latin1');
  const list = node.childList();
  if (offset >= list.length) return Buffer.concat([gen, Buffer.from([0])]);
  const room = XENSTORE_PAYLOAD_MAX - gen.length - 1;
  let end = offset;
  while (end < list.length) {
    const nul = list.indexOf(0, end);
    if (nul + 1 - offset > room) break;
    end = nul + 1;
  }
  const parts = [gen, list.subarray(offset, end)];
  if (end === list.length) parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}
