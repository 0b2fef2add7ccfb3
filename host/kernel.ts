import { EmbeddedPlatform } from '../shared/embedded/platform.js';
import type { EmbeddedDescriptor } from '../shared/embedded/layout.js';
import { EventDispatcher } from '../shared/event-dispatcher.js';
import type { RoleContext, RoleInstance } from '../shared/mesh/worker-runtime.js';
import type { DomainInterface, Platform } from '../shared/platform.js';
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

/** A domain kernel's link to the hypervisor and to xenstore. */
export interface KernelConnection {
  readonly domain: DomainInterface;
  readonly events: EventDispatcher;
  readonly xs: XenStoreClient;
}

/**
 * What a domain's kernel does of xenstore at boot: it opens the ring it was
 * told of in its start info and starts the connection over (a restarted
 * kernel finds the ring as its predecessor left it).
 */
export async function connectXenstore(platform: Platform, start: StartInfo): Promise<KernelConnection> {
  const domain = platform.domain(start.domid);
  const events = new EventDispatcher(domain.openEventChannels());
  const transport = RingClientTransport.open(domain, events, start.storePfn, start.storePort);
  const xs = new XenStoreClient(transport);
  if (transport.ring.serverFeatures & XsServerFeature.RECONNECTION) await xs.reconnect();
  return { domain, events, xs };
}

/** A kernel learns who it is and runs its buses on top of its xenstore connection. */
export async function startKernel(ctx: RoleContext<KernelRoleConfig>): Promise<Kernel> {
  const { start } = ctx.config;
  const platform = EmbeddedPlatform.attach((ctx.shared as { descriptor: EmbeddedDescriptor }).descriptor);
  await platform.whenRunning(start.domid);
  const { xs, events } = await connectXenstore(platform, start);
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
