/**
 * The backend's persistent grants: a page the frontend granted for good is
 * mapped once and kept; beyond the limit idle pages are unmapped, least
 * recently used first, never one in use; a page granted read-only is not
 * kept; clearing lets the frontend end every grant.
 */
import t from 'tap';
import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import { PersistentGrants } from '../blkback/persistent-grants.js';

function setup(pages = 16) {
  const platform = EmbeddedPlatform.create(1024);
  const back = platform.createDomain({ name: 'driver', pages: 64 }).domid;
  const front = platform.createDomain({ name: 'guest', pages: 64 }).domid;
  const guest = platform.domain(front);
  const pfns = guest.memory.allocPages(pages);
  const grant = (readonly = false) => pfns.map((pfn) => guest.grants.grantAccess(back, pfn, readonly));
  return { platform, back, front, guest, pfns, grant, backGrants: platform.domain(back).grants };
}

t.test('a page is mapped once and kept: the same bytes, and the frontend cannot end its grant while kept', async (t) => {
  const { front, guest, pfns, grant, backGrants } = setup(4);
  const grefs = grant();
  const kept = new PersistentGrants(backGrants, front);
  const first = kept.acquire(grefs)!;
  first[0]![0] = 0xab;
  kept.release(grefs);
  const again = kept.acquire(grefs)!;
  kept.release(grefs);
  t.equal(again[0]![0], 0xab, 'the second request sees the page the first one wrote');
  t.equal(guest.memory.page(pfns[0]!)[0], 0xab, "and it is the frontend's own page");
  t.equal(kept.size, 4, 'four pages kept');
  t.notOk(guest.grants.endAccess(grefs[0]!), 'a kept page cannot be taken back');
  kept.clear();
  t.equal(kept.size, 0, 'cleared');
  t.ok(grefs.every((gref) => guest.grants.endAccess(gref)), 'after clear() every grant can be ended');
});

t.test('beyond the limit the least recently used idle pages go, never one in use', async (t) => {
  const { front, guest, grant, backGrants } = setup(8);
  const grefs = grant();
  const kept = new PersistentGrants(backGrants, front, 4);
  const busy = grefs.slice(0, 2);
  kept.acquire(busy);
  kept.acquire(grefs.slice(2, 4));
  kept.release(grefs.slice(2, 4));
  kept.acquire(grefs.slice(4, 8));
  kept.release(grefs.slice(4, 8));
  t.equal(kept.size, 6, 'in-use pages stay even beyond the limit (4 idle + 2 busy)');
  t.ok(guest.grants.endAccess(grefs[2]!) && guest.grants.endAccess(grefs[3]!), 'the least recently used idle pages were unmapped');
  t.notOk(guest.grants.endAccess(grefs[0]!), 'a page in use was not');
  kept.release(busy);
  kept.clear();
});

t.test('a page granted read-only is not kept: the request maps it itself', async (t) => {
  const { front, grant, backGrants } = setup(2);
  const writable = grant(false)[0]!;
  const readonly = grant(true)[1]!;
  const kept = new PersistentGrants(backGrants, front);
  t.equal(kept.acquire([writable, readonly]), undefined, 'refused as a whole');
  t.equal(kept.size, 1, 'what was mapped before the refusal stays kept, released');
  t.ok(kept.acquire([writable]), 'and is usable');
  kept.release([writable]);
  t.equal(kept.acquire([12345]), undefined, 'a reference never granted is refused too');
  kept.clear();
});
