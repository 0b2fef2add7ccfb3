/**
 * A worker acting for one domain of an embedded machine it attaches to:
 * it binds to a port another domain allocated for it and answers every
 * event with a notify back, or counts events, as the test asks.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EmbeddedPlatform } from '../../shared/embedded/platform.js';
import type { EmbeddedDescriptor } from '../../shared/embedded/layout.js';

interface Setup {
  descriptor: EmbeddedDescriptor;
  domid: number;
  remoteDomid: number;
  remotePort: number;
  mode: 'echo' | 'count';
}

const setup = workerData as Setup;
const platform = EmbeddedPlatform.attach(setup.descriptor);
const channels = platform.domain(setup.domid).openEventChannels();
const port = channels.bindInterdomain(setup.remoteDomid, setup.remotePort);
let events = 0;
channels.onEvent((p) => {
  if (p !== port) return;
  events++;
  if (setup.mode === 'echo') channels.notify(port);
});
parentPort!.on('message', (msg: string) => {
  if (msg === 'count') parentPort!.postMessage({ events });
  if (msg === 'stop') {
    channels.close();
    parentPort!.close();
  }
});
parentPort!.postMessage({ ready: port });
