import { PlatformError } from './platform.js';
import type { XsErrorName } from './xs-wire.js';

/**
 * An error that maps onto one of the protocol's errno names. The daemon sends
 * `name` back in an XS_ERROR reply; the client library rejects with it.
 */
export class XsError extends Error {
  constructor(
    readonly errno: XsErrorName,
    message?: string,
  ) {
    super(message ? `${errno}: ${message}` : errno);
    this.name = 'XsError';
  }
}

export function isXsError(err: unknown, errno?: XsErrorName): err is XsError {
  return err instanceof XsError && (errno === undefined || err.errno === errno);
}

/**
 * The errno for the platform's refusal of something the other end
 * published (its ring, its event channel): ENOENT if its domain is gone,
 * EINVAL if what it published is wrong.
 */
export function otherendErrno(err: unknown): 'ENOENT' | 'EINVAL' {
  return err instanceof PlatformError && err.errno === 'ESRCH' ? 'ENOENT' : 'EINVAL';
}
