import type { PlatformLink } from '../platform.js';
import { XenPlatform } from './platform.js';

/** The Xen platform's entry for attachPlatform: the domain the link names. */
export function attach(link: PlatformLink): XenPlatform {
  return XenPlatform.attach(link.descriptor as { domid: number });
}
