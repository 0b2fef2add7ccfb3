/**
 * What the toolstack does for each action, wherever it is asked: on the
 * toolstack socket and at the host's prompt alike. Domain actions go to
 * Host.control; the host-wide ones (list, create, block-*) are here.
 */
import { DEFAULT_ACTION_TIMEOUT_MS, DomainActionError, type DomainActionOptions, type ToolstackAction } from '../../control/actions.js';
import type { Host } from '../machine/host.js';
import { formatBlockList, formatList } from './report.js';

export async function runToolstackAction(host: Host, action: ToolstackAction, domain: string | undefined, options: DomainActionOptions): Promise<string> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS;
  switch (action) {
    case 'list':
      return formatList(host);
    case 'block-list': {
      const domid = domain === undefined ? undefined : host.findDomain(domain).domid;
      // Counters that cannot be read (a driver domain's kernel not answering) show as `-`; the disks are listed all the same.
      const stats = await host.blockStats().catch(() => undefined);
      return formatBlockList(host, domid, stats);
    }
    case 'create':
      return host.createGuest(required(domain, action), options.disks ?? [], options.backend, timeoutMs);
    case 'block-attach':
      if (options.image === undefined) throw new DomainActionError('block-attach needs an image');
      return host.blockAttach(required(domain, action), options.image, { ...options, timeoutMs });
    case 'block-detach':
      if (options.vdev === undefined) throw new DomainActionError('block-detach needs a vdev');
      return host.blockDetach(required(domain, action), options.vdev, options.timeoutMs);
    default:
      return host.control(action, required(domain, action), options);
  }
}

function required(domain: string | undefined, action: string): string {
  if (domain === undefined) throw new DomainActionError(`${action} needs a domain: its name or its domid`);
  return domain;
}
