import { Node, newOwnerToken, type OwnerToken } from './node.js';
import type { StorePath } from './path.js';

/**
 * The node tree: the ordinary hierarchy under `/` plus the special nodes
 * `@introduceDomain` and `@releaseDomain`, which carry only permissions.
 *
 * Copy-on-write: `owner` marks the nodes this tree may mutate in place.
 * `freeze()` hands out the current roots as an immutable snapshot and takes a
 * new owner token, so that every later change copies the nodes on its path
 * first and the snapshot never sees it.
 */
export class Tree {
  constructor(
    public roots: Map<string, Node>,
    public owner: OwnerToken = newOwnerToken(),
  ) {}

  /** Returns roots that will never change again, and stops mutating the shared nodes. */
  freeze(): Map<string, Node> {
    this.owner = newOwnerToken();
    return new Map(this.roots);
  }

  /** A tree of its own starting from a snapshot. */
  static fromSnapshot(roots: Map<string, Node>): Tree {
    return new Tree(new Map(roots));
  }

  get(path: StorePath): Node | undefined {
    let node = this.roots.get(path.root);
    for (const part of path.parts) {
      if (!node) return undefined;
      node = node.children.get(part);
    }
    return node;
  }

  /**
   * The node at `path`, made mutable by copying it and every ancestor this
   * tree does not own yet. The path must exist.
   */
  mutable(path: StorePath): Node {
    const root = this.roots.get(path.root);
    if (!root) throw new Error(`no root ${path.root}`);
    let node: Node = root;
    if (node.owner !== this.owner) {
      node = node.copyFor(this.owner);
      this.roots.set(path.root, node);
    }
    for (const part of path.parts) {
      let child: Node | undefined = node.children.get(part);
      if (!child) throw new Error(`mutable(): ${path.full} does not exist`);
      if (child.owner !== this.owner) {
        child = child.copyFor(this.owner);
        node.children.set(part, child);
      }
      node = child;
    }
    return node;
  }

  /** A new node owned by this tree (to be linked under a mutable parent). */
  newNode(value: Buffer, perms: Node['perms'], generation: number): Node {
    return new Node(this.owner, value, perms, new Map(), generation);
  }
}

/** Visits a subtree children-first, as xenstored's removal walk does. */
export function walkPostOrder(
  node: Node,
  full: string,
  visit: (node: Node, full: string, parent: Node | undefined) => void,
  parent?: Node,
): void {
  for (const [name, child] of node.children) {
    walkPostOrder(child, full === '/' ? `/${name}` : `${full}/${name}`, visit, node);
  }
  visit(node, full, parent);
}
