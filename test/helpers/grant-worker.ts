/**
 * A worker that maps a page another domain granted, writes to it, and then
 * dies without unmapping it, as a backend worker that crashes would.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EmbeddedPlatform } from '../../shared/embedded/platform.js';
import type { EmbeddedDescriptor } from '../../shared/embedded/layout.js';

interface Setup {
  descriptor: EmbeddedDescriptor;
  domid: number;
  granterDomid: number;
  gref: number;
}

const setup = workerData as Setup;
const platform = EmbeddedPlatform.attach(setup.descriptor);
const mapping = platform.domain(setup.domid).grants.map(setup.granterDomid, [setup.gref], true);
mapping.pages[0]![0] = 0x5a;
parentPort!.postMessage('mapped');
parentPort!.on('message', (msg: string) => {
  if (msg === 'die') process.exit(1);
});
