import { EmbeddedPlatform } from './embedded/platform.js';
import type { EmbeddedDescriptor } from './embedded/layout.js';
import type { Platform, PlatformLink } from './platform.js';

/** Attaches this worker to the platform another worker's link names. */
export function attachPlatform(link: PlatformLink): Platform {
  switch (link.kind) {
    case 'embedded':
      return EmbeddedPlatform.attach(link.descriptor as EmbeddedDescriptor);
  }
}

/** What the supervisor hands every worker of the mesh besides its configuration: the way to the platform. */
export interface PlatformShared {
  readonly link: PlatformLink;
}
