import type { Platform, PlatformLink } from './platform.js';

/** What a module implementing the platform exports (see PlatformLink.module). */
export interface PlatformModule {
  attach(link: PlatformLink): Platform;
}

/**
 * Attaches this worker to the platform another worker's link names, by
 * loading the module the link names: a worker of the embedded host never
 * loads the Xen libraries, and one on Xen never loads the simulator.
 */
export async function attachPlatform(link: PlatformLink): Promise<Platform> {
  const implementation = (await import(link.module)) as PlatformModule;
  return implementation.attach(link);
}

/** What the supervisor hands every worker of the mesh besides its configuration: the way to the platform. */
export interface PlatformShared {
  readonly link: PlatformLink;
}
