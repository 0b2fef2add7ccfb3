import { XsError } from '../../shared/errors.js';
import { Node, nodeMemory } from './node.js';
import { parseAbsolute, type StorePath } from './path.js';
import type { PermList } from './permissions.js';
import { exceeds } from './quota.js';
import type { Caller, ChangeEvent, Store, StoreView, WatchMatch } from './store.js';
import { Tree, walkPostOrder } from './tree.js';

/** Generation recorded for a path that did not exist in the snapshot. */
const ABSENT = -1;

/** Stands in for a node being created, to price its copy. */
const EMPTY_NODE = new Node({}, Buffer.alloc(0), [{ domid: 0, access: 0, ignored: false }], new Map(), 0);

export interface TransactionLimits {
  /** Quota `transaction-nodes`: distinct nodes the transaction may touch; 0 for no limit. */
  accessedNodes: number;
  /**
   * Charges the memory of the node copies the transaction makes to its
   * domain; throws ENOMEM when that would exceed the domain's memory quota.
   */
  chargeMemory(bytes: number): void;
}

/** What a commit changed, for the daemon to report. */
export interface CommitResult {
  readonly events: ChangeEvent[];
}

/**
 * A transaction: a snapshot of the whole store taken at TRANSACTION_START,
 * read and written through a private copy-on-write tree.
 *
 * Every node the transaction looks at is recorded with the generation it had
 * in the snapshot. The commit fails with EAGAIN if any of them changed in the
 * live store since (the conflict rule of Xen's C xenstored), and otherwise
 * merges the transaction's changes into the live tree at once: all of them or
 * none (docs/misc/xenstore.txt, TRANSACTION_END).
 */
export class Transaction implements StoreView {
  readonly tree: Tree;
  private readonly snapshot: Tree;
  private readonly accessed = new Map<string, { path: StorePath; generation: number; perms: PermList | undefined }>();
  /**
   * Changes to report at commit, with the permissions of each node as it
   * was when the transaction removed it (it is gone from the live tree by
   * the time the events fire, and its watchers may only see it by those).
   */
  private readonly queuedEvents = new Map<string, { match: WatchMatch; perms: PermList | undefined }>();
  private readonly nodeDelta = new Map<number, number>();
  private readonly modified = new Set<string>();
  private copied = 0;

  constructor(
    readonly id: number,
    private readonly store: Store,
    private readonly limits: TransactionLimits,
  ) {
    const roots = store.tree.freeze();
    this.snapshot = new Tree(roots);
    this.tree = Tree.fromSnapshot(roots);
  }

  /** Distinct nodes touched so far. */
  get accessedCount(): number {
    return this.accessed.size;
  }

  noteAccess(path: StorePath): void {
    if (this.accessed.has(path.full)) return;
    if (exceeds(this.accessed.size + 1, this.limits.accessedNodes)) {
      throw new XsError('ENOSPC', `transaction touches more than ${this.limits.accessedNodes} nodes`);
    }
    const seen = this.snapshot.get(path);
    this.accessed.set(path.full, { path, generation: seen ? seen.generation : ABSENT, perms: seen?.perms });
  }

  noteModify(path: StorePath, node: Node | undefined): void {
    this.noteAccess(path);
    if (this.modified.has(path.full)) return;
    const bytes = node ? nodeMemory(node, path.full) : nodeMemory(EMPTY_NODE, path.full);
    this.limits.chargeMemory(bytes);
    this.copied += bytes;
    this.modified.add(path.full);
  }

  /** Full paths of the nodes the transaction changed, created or removed, in the order it first did. */
  get modifiedPaths(): ReadonlySet<string> {
    return this.modified;
  }

  /** Memory held by the transaction's private copies, charged to its domain until it ends. */
  get copiedBytes(): number {
    return this.copied;
  }

  pendingNodes(domid: number): number {
    return this.nodeDelta.get(domid) ?? 0;
  }

  adjustUsage(domid: number, nodes: number): void {
    if (nodes !== 0) this.nodeDelta.set(domid, (this.nodeDelta.get(domid) ?? 0) + nodes);
  }

  emit(event: ChangeEvent): void {
    // Changes inside a transaction are reported once, at commit; a subtree
    // match supersedes an exact one for the same path.
    const queued = this.queuedEvents.get(event.path);
    if (!queued) this.queuedEvents.set(event.path, { match: event.match, perms: event.perms });
    else if (event.match === 'subtree') queued.match = 'subtree';
  }

  /**
   * Applies the transaction to the live store. `caller` is the committing
   * connection's principal: an unprivileged domain is held to its node quota
   * for the nodes the transaction creates.
   */
  commit(caller: Caller): CommitResult {
    for (const { path, generation } of this.accessed.values()) {
      const live = this.store.tree.get(path);
      if ((live ? live.generation : ABSENT) !== generation) {
        throw new XsError('EAGAIN', `${path.full} changed since the transaction started`);
      }
    }
    const usage = new UsageDelta();
    const merged = new Map<string, Node>();
    for (const [root, mine] of this.tree.roots) {
      const base = this.snapshot.roots.get(root);
      if (mine === base) continue;
      // Only nodes under `/` count towards a domain's usage; the special nodes do not.
      const counted = root === '/' ? usage : new UsageDelta();
      merged.set(root, this.merge(this.store.tree.roots.get(root), base, mine, root, counted));
    }
    if (!caller.privileged) {
      const created = usage.nodesOf(caller.domid);
      const limit = this.store.policy.quota(caller.domid, 'nodes');
      if (created > 0 && exceeds(this.store.usageOf(caller.domid).nodes + created, limit)) {
        throw new XsError('ENOSPC', `domain ${caller.domid} would exceed its node quota`);
      }
    }
    for (const [root, node] of merged) this.store.tree.roots.set(root, node);
    usage.applyTo(this.store);
    return { events: this.settledEvents() };
  }

  /**
   * Merges the transaction's version of a subtree (`mine`) into the live one
   * (`live`), given the snapshot version both started from (`base`). Nodes the
   * transaction changed take its value and permissions; everything it did not
   * change keeps the live state, including changes others made meanwhile in
   * parts the transaction never looked at.
   */
  private merge(live: Node | undefined, base: Node | undefined, mine: Node, full: string, usage: UsageDelta): Node {
    const childFull = (name: string) => (full === '/' ? `/${name}` : `${full}/${name}`);
    const changedHere = !base || mine.generation !== base.generation;
    if (!changedHere) {
      // Only a descendant changed: keep the live node, with the changed children merged in.
      if (!live) throw new XsError('EAGAIN', `${full} vanished during the transaction`);
      const out = new Node(this.store.tree.owner, live.value, live.perms, new Map(live.children), live.generation, live.childBytes);
      for (const [name, child] of mine.children) {
        const baseChild = base.children.get(name);
        if (child !== baseChild) out.children.set(name, this.merge(live.children.get(name), baseChild, child, childFull(name), usage));
      }
      return out;
    }
    // The transaction changed this node: its value, permissions and set of
    // children win; children it did not touch keep their live state.
    const out = new Node(this.store.tree.owner, mine.value, mine.perms, new Map(mine.children), this.store.nextGeneration(), mine.childBytes);
    for (const [name, child] of mine.children) {
      const baseChild = base?.children.get(name);
      const liveChild = live?.children.get(name);
      if (child !== baseChild) {
        out.children.set(name, this.merge(liveChild, baseChild, child, childFull(name), usage));
      } else if (!liveChild) {
        throw new XsError('EAGAIN', `${childFull(name)} vanished during the transaction`);
      } else if (liveChild !== child) {
        out.children.set(name, liveChild);
      }
    }
    for (const [name, liveChild] of live?.children ?? []) {
      if (!mine.children.has(name)) usage.removeSubtree(liveChild, childFull(name));
    }
    if (live) usage.replace(live, out, full);
    else usage.add(out, full);
    return out;
  }

  /** The queued changes, with the permissions that decide who may see them. */
  private settledEvents(): ChangeEvent[] {
    return [...this.queuedEvents].map(([full, { match, perms }]) =>
      this.store.describeChange(this.store.tree, parseAbsolute(full), match, this.accessed.get(full)?.perms ?? perms),
    );
  }
}

/** Node and memory changes per owning domain, applied to the store in one go. */
class UsageDelta {
  private readonly deltas = new Map<number, { nodes: number; memory: number }>();

  nodesOf(domid: number): number {
    return this.deltas.get(domid)?.nodes ?? 0;
  }

  add(node: Node, full: string): void {
    this.bump(node.ownerDomid, 1, nodeMemory(node, full));
  }

  replace(before: Node, after: Node, full: string): void {
    this.bump(before.ownerDomid, -1, -nodeMemory(before, full));
    this.bump(after.ownerDomid, 1, nodeMemory(after, full));
  }

  removeSubtree(node: Node, full: string): void {
    walkPostOrder(node, full, (removed, path) => this.bump(removed.ownerDomid, -1, -nodeMemory(removed, path)));
  }

  applyTo(store: Store): void {
    for (const [domid, { nodes, memory }] of this.deltas) store.account(domid, nodes, memory);
  }

  private bump(domid: number, nodes: number, memory: number): void {
    const entry = this.deltas.get(domid) ?? { nodes: 0, memory: 0 };
    entry.nodes += nodes;
    entry.memory += memory;
    this.deltas.set(domid, entry);
  }
}
