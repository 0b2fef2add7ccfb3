/**
 * The hostile frontend's pages for one batch, in the classes the block
 * fuzzer's requests draw their grant references from: data pages granted
 * read-write to the backend, pages granted read-only (plain ones, and the
 * indirect pages requests describe their segments in), pages granted to
 * another domain, and grants already ended. Every page starts with a
 * pattern of its own and the fuzzer keeps a copy, so that at the end it can
 * tell what the backend wrote: nothing in a page it had no writable grant
 * for, and in a data page only the sectors some READ asked it to fill.
 */
import type { DomainInterface } from '../../shared/platform.js';
import { PAGE_SIZE } from '../../shared/platform.js';
import { SECTOR_SIZE } from '../../shared/blkif.js';
import { GRANT_ENTRIES } from '../../shared/embedded/layout.js';
import type { PageKnowledge } from './blk-model.js';
import type { Prng } from './prng.js';
import { FuzzViolation } from './violation.js';

/**
 * What the backend may do with a grant reference of this frontend. The
 * ring's own pages are granted writable to the backend like data pages: a
 * request may name them, and the backend cannot tell (a WRITE from them is
 * served as any other).
 */
export type GrantClass = 'rw' | 'ro' | 'ring' | 'bad';

/** How many pages of each class a batch has. */
const DATA_PAGES = 48;
const READ_ONLY_PAGES = 4;
const INDIRECT_PAGES = 12;
const FOREIGN_PAGES = 3;
const ENDED_PAGES = 3;

/** References no batch ever grants: the top of the grant table, out of the allocator's way for a long time. */
export const NEVER_GRANTED = [GRANT_ENTRIES - 1, GRANT_ENTRIES - 2, GRANT_ENTRIES, 0xffff_ffff];

export interface Page {
  readonly pfn: number;
  readonly gref: number;
  readonly bytes: Uint8Array;
  /** What the page must hold outside what the backend may write. */
  readonly shadow: Uint8Array;
  readonly what: string;
}

export class HostilePages implements PageKnowledge {
  readonly data: Page[];
  readonly readOnly: Page[];
  readonly indirect: Page[];
  readonly foreign: Page[];
  readonly ended: Page[];
  /** Per data page, the sectors some READ may have filled (a bit per 512-byte sector). */
  private readonly fillable = new Map<number, number>();
  private readonly classes = new Map<number, GrantClass>();

  constructor(
    private readonly domain: DomainInterface,
    backendDomid: number,
    otherDomid: number,
    /** The ring's own grants: a READ naming them would have the backend write over its ring. */
    ringGrefs: readonly number[],
    rng: Prng,
  ) {
    const make = (count: number, to: number, readonly: boolean, what: string): Page[] => {
      const pfns = domain.memory.allocPages(count);
      return pfns.map((pfn, i) => {
        const bytes = domain.memory.page(pfn);
        const pattern = rng.bytes(PAGE_SIZE);
        bytes.set(pattern);
        return { pfn, gref: domain.grants.grantAccess(to, pfn, readonly), bytes, shadow: Uint8Array.from(pattern), what: `${what} page ${i}` };
      });
    };
    this.data = make(DATA_PAGES, backendDomid, false, 'data');
    this.readOnly = make(READ_ONLY_PAGES, backendDomid, true, 'read-only');
    this.indirect = make(INDIRECT_PAGES, backendDomid, true, 'indirect');
    this.foreign = make(FOREIGN_PAGES, otherDomid, false, 'foreign');
    // Granted last and ended at once: no grant of this batch can take their references again.
    this.ended = make(ENDED_PAGES, backendDomid, false, 'ended');
    for (const page of this.ended) domain.grants.endAccess(page.gref);
    for (const page of this.data) this.classes.set(page.gref, 'rw');
    for (const page of [...this.readOnly, ...this.indirect]) this.classes.set(page.gref, 'ro');
    for (const gref of ringGrefs) this.classes.set(gref, 'ring');
  }

  classOf(gref: number): GrantClass {
    return this.classes.get(gref) ?? 'bad';
  }

  /** The contents of a page the backend may only read (they change only when the fuzzer writes them). */
  stableBytes(gref: number): Uint8Array | undefined {
    return this.classOf(gref) === 'ro' ? [...this.readOnly, ...this.indirect].find((p) => p.gref === gref)?.shadow : undefined;
  }

  /** A READ whose segments cannot be known may have filled any sector of any data page. */
  mayFillAnything(): void {
    for (const page of this.data) this.fillable.set(page.gref, 0xff);
  }

  /** References that name nothing the backend may use: granted elsewhere, ended, never granted. */
  badGrefs(): number[] {
    // After many batches the allocator comes round to the top of the table:
    // a ring page or a page the backend may use may hold one of those.
    const never = NEVER_GRANTED.filter((gref) => !this.classes.has(gref));
    return [...this.foreign.map((p) => p.gref), ...this.ended.map((p) => p.gref), ...never];
  }

  /** Writes an indirect page's new contents, keeping the copy the final check compares with. */
  writeIndirect(page: Page, bytes: Uint8Array): void {
    page.bytes.set(bytes);
    page.shadow.set(bytes);
  }

  /** Notes that a READ may fill sectors `first..last` of the page `gref` names. */
  mayFill(gref: number, first: number, last: number): void {
    if (this.classOf(gref) !== 'rw') return;
    let mask = this.fillable.get(gref) ?? 0;
    for (let s = first; s <= last; s++) mask |= 1 << s;
    this.fillable.set(gref, mask);
  }

  /**
   * Checks what the backend wrote since the last checkpoint (nothing may be
   * awaiting a response), then starts the next: data pages as they are
   * now, no sector fillable. Checking often keeps the fillable sectors few,
   * so that a stray write has somewhere to show.
   */
  checkpoint(): void {
    const problems = this.problems();
    if (problems.length > 0) throw new FuzzViolation(problems.slice(0, 5).join('; '));
    for (const page of this.data) page.shadow.set(page.bytes);
    this.fillable.clear();
  }

  /**
   * Ends every grant (each must end at once: the backend has let go of
   * every page it mapped), checks what the backend wrote, and frees the
   * pages.
   */
  release(): void {
    const problems: string[] = [];
    const free = this.ended.map((p) => p.pfn);
    for (const page of [...this.data, ...this.readOnly, ...this.indirect, ...this.foreign]) {
      if (this.domain.grants.endAccess(page.gref)) free.push(page.pfn);
      else problems.push(`${page.what} (gref ${page.gref}) is still mapped after the device closed`);
    }
    problems.push(...this.problems());
    // A page still mapped stays allocated: freeing it would hand the backend's mapping to whoever gets it next.
    this.domain.memory.freePages(free);
    if (problems.length > 0) throw new FuzzViolation(problems.slice(0, 5).join('; '));
  }

  /** What the backend wrote that it should not have. */
  private problems(): string[] {
    const problems: string[] = [];
    for (const page of [...this.readOnly, ...this.indirect, ...this.foreign, ...this.ended]) {
      const at = firstDifference(page.bytes, page.shadow, 0, PAGE_SIZE);
      if (at >= 0) problems.push(`${page.what} (gref ${page.gref}), which the backend could not write, changed at byte ${at}`);
    }
    for (const page of this.data) {
      const mask = this.fillable.get(page.gref) ?? 0;
      for (let sector = 0; sector < PAGE_SIZE / SECTOR_SIZE; sector++) {
        if (mask & (1 << sector)) continue;
        const at = firstDifference(page.bytes, page.shadow, sector * SECTOR_SIZE, (sector + 1) * SECTOR_SIZE);
        if (at >= 0) problems.push(`${page.what} (gref ${page.gref}) changed at byte ${at}, in sector ${sector} that no READ asked to fill`);
      }
    }
    return problems;
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (a[i] !== b[i]) return i;
  return -1;
}
