import type { PermList } from './permissions.js';

/**
 * Marks which tree may change a node in place. A tree only mutates nodes it
 * owns; any other node is shared with a snapshot and is copied first, so a
 * transaction's snapshot costs nothing until someone writes (copy-on-write
 * with path copying).
 */
export type OwnerToken = object;

export function newOwnerToken(): OwnerToken {
  return {};
}

/** Bytes of xenstored's node header (generation, num_perms, datalen, childlen). */
export const NODE_HEADER_BYTES = 16;
/** Bytes of one `struct xs_permissions` (domid and access, two 32-bit words). */
export const PERM_ENTRY_BYTES = 8;

export const EMPTY_VALUE: Buffer = Buffer.alloc(0);

export class Node {
  constructor(
    public owner: OwnerToken,
    public value: Buffer,
    public perms: PermList,
    /** Children by name, in the order they were created (DIRECTORY keeps that order). */
    public children: Map<string, Node>,
    /**
     * Changes whenever this node's value, permissions or set of children
     * change; never when only a descendant changes. Transactions compare it to
     * detect conflicts, DIRECTORY_PART reports it.
     */
    public generation: number,
    /** Sum of (name length + 1) over the children: the size of the DIRECTORY reply. */
    public childBytes = 0,
  ) {}

  copyFor(owner: OwnerToken): Node {
    return new Node(owner, this.value, this.perms, new Map(this.children), this.generation, this.childBytes);
  }

  get ownerDomid(): number {
    return this.perms[0]!.domid;
  }

  /** The size xenstored's node-size quota measures: header, permissions, value and child names. */
  get size(): number {
    return NODE_HEADER_BYTES + PERM_ENTRY_BYTES * this.perms.length + this.value.length + this.childBytes;
  }

  addChild(name: string, child: Node): void {
    if (!this.children.has(name)) this.childBytes += Buffer.byteLength(name, 'latin1') + 1;
    this.children.set(name, child);
  }

  removeChild(name: string): void {
    if (this.children.delete(name)) this.childBytes -= Buffer.byteLength(name, 'latin1') + 1;
  }

  /** The DIRECTORY payload: each child name followed by a NUL. */
  childList(): Buffer {
    const out = Buffer.allocUnsafe(this.childBytes);
    let offset = 0;
    for (const name of this.children.keys()) {
      offset += out.write(name, offset, 'latin1');
      out[offset++] = 0;
    }
    return out;
  }
}

/** Memory a node costs its owner: its size plus its path, as xenstored accounts it. */
export function nodeMemory(node: Node, fullPath: string): number {
  return node.size + fullPath.length;
}

/** The size a node would have, for checks made before it exists. */
export function plannedNodeSize(permCount: number, valueBytes: number, childBytes: number): number {
  return NODE_HEADER_BYTES + PERM_ENTRY_BYTES * permCount + valueBytes + childBytes;
}
