import { ownedCopy } from '../../shared/owned-copy.js';
import type { Node } from './node.js';
import { parentOf, parseAbsolute, type StorePath } from './path.js';
import type { PermList } from './permissions.js';
import type { Store } from './store.js';

/**
 * A node's own state after a commit: what a journal records for each node a
 * commit touched. Its children are listed by name only; each child that a
 * commit created or changed is recorded in its own right.
 */
export interface NodeState {
  readonly value: Uint8Array;
  readonly perms: PermList;
  readonly generation: number;
  readonly children: readonly string[];
}

/** A node a commit touched, by full path: its new state, or null once it is removed (with its subtree). */
export type NodeChange = readonly [full: string, state: NodeState | null];

/** The state of the nodes at `paths` as the live store holds them now. */
export function captureNodes(store: Store, paths: Iterable<string>): NodeChange[] {
  const out: NodeChange[] = [];
  for (const full of paths) {
    const node = store.tree.get(parseAbsolute(full));
    out.push([full, node ? { value: node.value, perms: node.perms, generation: node.generation, children: [...node.children.keys()] } : null]);
  }
  return out;
}

/**
 * Applies recorded node states to the live tree, as a restarted daemon
 * replays its journal. Parents go before their children (a node's record
 * may come after its child's in a transaction that changed both); a node
 * keeps only the children its state lists, so a subtree removed and created
 * again within one commit comes back as it was left, and in their order
 * (DIRECTORY lists children in the order they were created). Usage is not counted
 * here: the caller recounts once everything is applied (Store.check()).
 * Throws if a node's parent is missing, which means the journal does not
 * belong to the store it is applied to.
 */
export function applyNodes(store: Store, changes: readonly NodeChange[]): void {
  const ordered = changes.map(([full, state]) => ({ path: parseAbsolute(full), state }));
  ordered.sort((a, b) => a.path.parts.length - b.path.parts.length);
  const tree = store.tree;
  const listed: { path: StorePath; children: readonly string[] }[] = [];
  for (const { path, state } of ordered) {
    const parent = parentOf(path);
    const name = path.parts.at(-1);
    if (!state) {
      if (parent && name !== undefined && tree.get(parent)) tree.mutable(parent).removeChild(name);
      continue;
    }
    listed.push({ path, children: state.children });
    const existing = tree.get(path);
    if (!existing) {
      const node = tree.newNode(ownedCopy(state.value), state.perms, state.generation);
      if (!parent || name === undefined) {
        tree.roots.set(path.root, node);
        continue;
      }
      if (!tree.get(parent)) throw new Error(`journal: ${path.full} has no parent ${parent.full}`);
      tree.mutable(parent).addChild(name, node);
      continue;
    }
    const node = tree.mutable(path);
    node.value = ownedCopy(state.value);
    node.perms = state.perms;
    node.generation = state.generation;
    const keep = new Set(state.children);
    for (const child of [...node.children.keys()]) if (!keep.has(child)) node.removeChild(child);
  }
  // Children created by this commit were appended as they came; put every list back in its order.
  for (const { path, children } of listed) {
    const node = tree.get(path);
    if (!node || sameOrder(node.children.keys(), children)) continue;
    const mutable = tree.mutable(path);
    const reordered = new Map<string, Node>();
    for (const name of children) {
      const child = mutable.children.get(name);
      if (child) reordered.set(name, child);
    }
    for (const [name, child] of mutable.children) if (!reordered.has(name)) reordered.set(name, child);
    mutable.children = reordered;
  }
}

function sameOrder(actual: Iterable<string>, wanted: readonly string[]): boolean {
  let i = 0;
  for (const name of actual) if (name !== wanted[i++]) return false;
  return i === wanted.length;
}
