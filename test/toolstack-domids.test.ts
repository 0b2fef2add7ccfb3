/**
 * The domids the toolstack gives new domains, as Xen's
 * XEN_DOMCTL_createdomain picks them: the next free one after the last
 * handed out, wrapping below DOMID_FIRST_RESERVED back to 1, so that a
 * domain created again (a reboot) never gets the domid just freed.
 */
import t from 'tap';
import type { Platform } from '../shared/platform.js';
import { DOMID_FIRST_RESERVED, Toolstack } from '../host/toolstack/toolstack.js';
import type { XenStoreClient } from '../xenstore/client/client.js';

/** A toolstack over a machine whose only known domains are `used`; nextDomid is what is tried. */
function toolstackWith(used: Set<number>, last: number): { next: () => number } {
  const platform = { domainInfo: (domid: number) => (used.has(domid) ? { domid } : undefined) } as unknown as Platform;
  const toolstack = new Toolstack(platform, () => ({}) as XenStoreClient);
  const inside = toolstack as unknown as { lastDomid: number; nextDomid(): number };
  inside.lastDomid = last;
  return {
    next: () => {
      const domid = inside.nextDomid();
      used.add(domid);
      return domid;
    },
  };
}

t.test('domids are handed out in turn, never the one just freed', async (t) => {
  const used = new Set([0, 1, 2]);
  const machine = toolstackWith(used, 2);
  t.equal(machine.next(), 3, 'after 2 comes 3');
  used.delete(3); // the domain with domid 3 is destroyed, to reboot
  t.equal(machine.next(), 4, 'the domain created again gets 4, not 3');
  t.equal(machine.next(), 5);
});

t.test('the domids wrap below DOMID_FIRST_RESERVED, skipping dom0 and the ones in use', async (t) => {
  const used = new Set([0, 1, 2, DOMID_FIRST_RESERVED - 1]);
  const machine = toolstackWith(used, DOMID_FIRST_RESERVED - 2);
  t.equal(machine.next(), 3, `past ${DOMID_FIRST_RESERVED - 1} (in use), back to 1, and past 1 and 2 (in use)`);
  const last = toolstackWith(new Set([0]), DOMID_FIRST_RESERVED - 1);
  t.equal(last.next(), 1, `after ${DOMID_FIRST_RESERVED - 1}, 1; never 0 nor a reserved domid`);
});

t.test('a machine with every domid in use says so', async (t) => {
  const used = new Set(Array.from({ length: DOMID_FIRST_RESERVED }, (_, domid) => domid));
  t.throws(() => toolstackWith(used, 5).next(), { message: `no free domid: every one below ${DOMID_FIRST_RESERVED} is in use` });
});
