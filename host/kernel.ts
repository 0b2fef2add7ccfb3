import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import type { EmbeddedDescriptor } from '../shared/embedded/layout.js';
import { EventDispatcher } from '../shared/event-dispatcher.js';
import type { RoleContext, RoleInstance } from '../shared/mesh/worker-runtime.js';
import { XsServerFeature } from '../shared/xs-wire.js';
import { XenStoreClient } from '../xenstore/client/client.js';
import { RingClientTransport } from '../xenstore/client/ring-transport.js';
import type { StartInfo } from './domain-builder.js';

export interface KernelRoleConfig {
  start: StartInfo;
}

export interface Kernel extends RoleInstance {
  readonly xenstore: XenStoreClient;
}

/**
 * What a domain's kernel does of xenstore at boot: it opens the ring it was
 * told of in its start info, starts the connection over (a restarted kernel
 * finds the ring as its predecessor left it), and learns who it is. The
 * buses and drivers run on top of it.
 */
export async function startKernel(ctx: RoleContext<KernelRoleConfig>): Promise<Kernel> {
  const { start } = ctx.config;
  const platform = EmbeddedPlatform.attach((ctx.shared as { descriptor: EmbeddedDescriptor }).descriptor);
  await platform.whenRunning(start.domid);
  const domain = platform.domain(start.domid);
  const events = new EventDispatcher(domain.openEventChannels());
  const transport = RingClientTransport.open(domain, events, start.storePfn, start.storePort);
  const xs = new XenStoreClient(transport);
  if (transport.ring.serverFeatures & XsServerFeature.RECONNECTION) await xs.reconnect();
  const name = await xs.readString('name');
  const home = await xs.getDomainPath(start.domid);
  ctx.log.info(`${name} (domain ${start.domid}) connected to xenstore; home ${home}`);
  return {
    xenstore: xs,
    info: { name, home },
    health: () => ({ xenstore: xs.isClosed ? 'closed' : 'connected' }),
    async stop() {
      xs.close();
      events.channels.close();
    },
  };
}
