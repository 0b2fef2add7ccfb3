import type { PlatformLink } from '../platform.js';
import type { EmbeddedDescriptor } from './layout.js';
import { EmbeddedPlatform } from './platform.js';

/** The embedded platform's entry for attachPlatform: the machine the link's descriptor names. */
export function attach(link: PlatformLink): EmbeddedPlatform {
  return EmbeddedPlatform.attach(link.descriptor as EmbeddedDescriptor, link.holder);
}
