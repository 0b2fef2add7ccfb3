import { isPathWithin } from '../store/path.js';
import type { WatchMatch } from '../store/store.js';

/** One registered watch. `path` is canonical; events are reported relative to `prefixLength`. */
export interface Watch<C> {
  readonly owner: C;
  readonly path: string;
  readonly token: string;
  /** The WATCH depth parameter; undefined watches the whole subtree. */
  readonly depth: number | undefined;
  /** Characters to strip from event paths when the watch was set with a relative path. */
  readonly prefixLength: number;
}

/**
 * One connection's watches, by path and token: a connection may set one
 * watch for each pair (a second is EEXIST), so finding, adding and removing
 * one never looks at the others. A daemon with tens of thousands of watches
 * on a connection kept them in a list and scanned it for each WATCH,
 * UNWATCH and removal.
 */
export class ConnectionWatches<C> {
  private readonly byKey = new Map<string, Watch<C>>();

  get size(): number {
    return this.byKey.size;
  }

  find(path: string, token: string): Watch<C> | undefined {
    return this.byKey.get(watchKey(path, token));
  }

  add(watch: Watch<C>): void {
    this.byKey.set(watchKey(watch.path, watch.token), watch);
  }

  /** Removes the watch; false if it is not one of these. */
  delete(watch: Watch<C>): boolean {
    const key = watchKey(watch.path, watch.token);
    if (this.byKey.get(key) !== watch) return false;
    return this.byKey.delete(key);
  }

  /** Removes them all, returning them. */
  takeAll(): Watch<C>[] {
    const all = [...this.byKey.values()];
    this.byKey.clear();
    return all;
  }

  [Symbol.iterator](): IterableIterator<Watch<C>> {
    return this.byKey.values();
  }
}

/** Neither a path nor a token can hold a NUL: the protocol ends both with one. */
function watchKey(path: string, token: string): string {
  return `${path}\0${token}`;
}

/** How a special event is matched (xenstored's MATCH_NODEPTH / MATCH_DEPTH). */
export type SpecialMatch = 'nodepth' | 'depth';

/**
 * Every watch of every connection, indexed by watched path so that a change
 * only looks at the watches on its own path and its ancestors.
 */
export class WatchRegistry<C> {
  private readonly byPath = new Map<string, Set<Watch<C>>>();

  add(watch: Watch<C>): void {
    let set = this.byPath.get(watch.path);
    if (!set) this.byPath.set(watch.path, (set = new Set()));
    set.add(watch);
  }

  has(watch: Watch<C>): boolean {
    return this.byPath.get(watch.path)?.has(watch) ?? false;
  }

  remove(watch: Watch<C>): void {
    const set = this.byPath.get(watch.path);
    if (!set) return;
    set.delete(watch);
    if (set.size === 0) this.byPath.delete(watch.path);
  }

  /**
   * The watches a change at `path` fires: for a subtree match every watch on
   * the path or an ancestor (within its depth); for an exact match only the
   * watches on the path itself.
   */
  *matching(path: string, match: WatchMatch): Generator<Watch<C>> {
    if (match === 'exact') {
      yield* this.byPath.get(path) ?? [];
      return;
    }
    for (let at: string | undefined = path; at !== undefined; at = ancestorOf(at)) {
      for (const watch of this.byPath.get(at) ?? []) {
        if (isPathWithin(path, watch.path, watch.depth)) yield watch;
      }
    }
  }

  /**
   * The watches a special event fires (`@introduceDomain`, `@releaseDomain`):
   * 'nodepth' reaches watches set on the bare name without a depth; 'depth'
   * carries the domid (`@releaseDomain/<domid>`) and reaches watches on that
   * path and watches on the bare name set with a depth.
   */
  *matchingSpecial(path: string, match: SpecialMatch): Generator<Watch<C>> {
    if (match === 'nodepth') {
      for (const watch of this.byPath.get(path) ?? []) if (watch.depth === undefined) yield watch;
      return;
    }
    yield* this.byPath.get(path) ?? [];
    const base = path.slice(0, path.indexOf('/'));
    for (const watch of this.byPath.get(base) ?? []) {
      if (watch.depth !== undefined && watch.depth > 0) yield watch;
    }
  }
}

/** The parent of an ordinary path, `/` for top-level ones, undefined above `/` or for special paths. */
function ancestorOf(path: string): string | undefined {
  if (path === '/' || !path.startsWith('/')) return undefined;
  const slash = path.lastIndexOf('/');
  return slash === 0 ? '/' : path.slice(0, slash);
}
