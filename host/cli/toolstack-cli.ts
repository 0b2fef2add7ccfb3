/**
 * xl's commands for the disks and domains of the host that `xenmesh up`
 * runs: list, create, pause, unpause, halt, block-list, block-attach and
 * block-detach, each sent over the host's toolstack socket.
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_ACTION_TIMEOUT_MS, type DomainActionOptions } from '../../control/actions.js';
import { defaultSocketPath } from '../../shared/default-paths.js';
import { UsageError, parseSeconds, runs, subcommand } from './command-line.js';
import { callToolstack } from './toolstack-call.js';
import { TOOLSTACK_SOCKET_SUFFIX, type ToolstackRequest } from './toolstack-protocol.js';

const SOCKET_HELP = `  --socket PATH       the host's xenstored socket; the toolstack listens on
                      PATH${TOOLSTACK_SOCKET_SUFFIX} (default: xenmesh up's, ${defaultSocketPath()})`;
const TIMEOUT_HELP = (what: string) => `  --timeout SECONDS   how long to wait for ${what} (default ${DEFAULT_ACTION_TIMEOUT_MS / 1000})`;

const USAGES = {
  list: `Usage: xenmesh list [--socket PATH]

Lists the host's domains as xl list does: name, domid, memory, state (xl's
letters r, b, p, s, c, d and a word) and the devices each uses; a
suspended domain's devices are shown as held.

${SOCKET_HELP}`,
  create: `Usage: xenmesh create <name> [--disk IMAGE ...] [--backend DOMAIN] [--socket PATH]

Creates a guest as \`xenmesh up\` creates its own: a domain whose kernel
loads the front drivers, with one disk per --disk (xvda, xvdb, ... in the
order given) served by the driver domain. Every image is looked at before
the domain is created. Prints the new domid once the disks connect.

  --disk IMAGE        a raw image or block device for the next disk
  --backend DOMAIN    the driver domain that serves the disks (default:
                      the first domain with a vbd back driver)
${TIMEOUT_HELP('the disks to connect')}
${SOCKET_HELP}`,
  pause: `Usage: xenmesh pause <domain> [--socket PATH]

Pauses a domain, as xl pause does: it is not scheduled until unpaused; its
devices stay connected, and what it has in flight waits.

${SOCKET_HELP}`,
  unpause: `Usage: xenmesh unpause <domain> [--socket PATH]

Lets a paused domain run again, as xl unpause does.

${SOCKET_HELP}`,
  halt: `Usage: xenmesh halt <domain> [--timeout SECONDS] [--socket PATH]

Asks a domain to halt (its control/shutdown node set to halt), and waits
until it has.

${TIMEOUT_HELP('the domain to halt')}
${SOCKET_HELP}`,
  'block-list': `Usage: xenmesh block-list [domain] [--socket PATH]

Lists the disks of a domain (or of every domain), as xl block-list does
and more: the frontend's domain and vdev, the backend's domain, the image
and its mode (ro, rw), both ends' xenbus states, the rings (queues x pages),
what the two ends negotiated (persistent grants, indirect segments, flush,
barrier, discard) and blkback's counters: requests, bytes, errors, in
flight, latency p50 and p99 (\`-\` where the host keeps none).

${SOCKET_HELP}`,
  'block-attach': `Usage: xenmesh block-attach <domain> <image> [vdev] [--ro] [--backend DOMAIN]
                           [--timeout SECONDS] [--socket PATH]

Attaches a raw image or block device to a running domain as a disk, as xl
block-attach does, and waits for it to connect.

  vdev                the guest's name for it (default: the next free xvdX)
  --ro                serve it read-only (mode r): the guest's writes fail
  --backend DOMAIN    the driver domain that serves it (default: the one
                      serving the domain's other disks, else the first)
${TIMEOUT_HELP('the disk to connect')}
${SOCKET_HELP}`,
  'block-detach': `Usage: xenmesh block-detach <domain> <vdev> [--timeout SECONDS] [--socket PATH]

Detaches a disk, as xl block-detach does: the guest is asked to close it,
and it is removed by force if the guest has not within the timeout; the
answer says which.

  --timeout SECONDS   how long the guest gets to close it (default 10)
${SOCKET_HELP}`,
} as const;

/** What every one of these commands takes. */
interface CommonFlags {
  socket?: string;
  timeout?: string;
}

const call = (name: string, flags: CommonFlags, request: Omit<ToolstackRequest, 'options'> & { options?: DomainActionOptions }) => {
  const options = { ...request.options, ...(flags.timeout === undefined ? {} : { timeoutMs: parseSeconds('--timeout', flags.timeout) }) };
  return callToolstack(`xenmesh ${name}`, flags.socket ?? defaultSocketPath(), { ...request, options });
};

/** A subcommand with the options every one of them has. */
function toolstackSubcommand(name: keyof typeof USAGES, timeout: boolean): Command {
  const command = subcommand(name, USAGES[name]).option('--socket <path>');
  return timeout ? command.option('--timeout <seconds>') : command;
}

function nonEmpty(what: string, value: string): string {
  if (value === '') throw new UsageError(`${what} is empty`);
  return value;
}

export function toolstackCommands(): Command[] {
  const list = runs(toolstackSubcommand('list', false), (flags: CommonFlags) => call('list', flags, { action: 'list' }));

  const create = runs(
    toolstackSubcommand('create', true)
      .argument('<name>')
      .option('--disk <image>', 'a disk image', (image: string, images: string[] = []) => [...images, image])
      .option('--backend <domain>'),
    (name: string, flags: CommonFlags & { disk?: string[]; backend?: string }) =>
      call('create', flags, {
        action: 'create',
        domain: nonEmpty('the name', name),
        options: { disks: (flags.disk ?? []).map((image) => resolve(nonEmpty('--disk', image))), ...(flags.backend === undefined ? {} : { backend: nonEmpty('--backend', flags.backend) }) },
      }),
  );

  const simple = (name: 'pause' | 'unpause' | 'halt') =>
    runs(toolstackSubcommand(name, name === 'halt').argument('<domain>'), (domain: string, flags: CommonFlags) =>
      call(name, flags, { action: name, domain: nonEmpty('the domain', domain) }),
    );

  const blockList = runs(toolstackSubcommand('block-list', false).argument('[domain]'), (domain: string | undefined, flags: CommonFlags) =>
    call('block-list', flags, { action: 'block-list', ...(domain === undefined ? {} : { domain: nonEmpty('the domain', domain) }) }),
  );

  const blockAttach = runs(
    toolstackSubcommand('block-attach', true).argument('<domain>').argument('<image>').argument('[vdev]').option('--ro').option('--backend <domain>'),
    (domain: string, image: string, vdev: string | undefined, flags: CommonFlags & { ro?: boolean; backend?: string }) =>
      call('block-attach', flags, {
        action: 'block-attach',
        domain: nonEmpty('the domain', domain),
        options: {
          // The host resolves nothing against its own directory: the path is the caller's.
          image: resolve(nonEmpty('the image', image)),
          ...(vdev === undefined ? {} : { vdev }),
          ...(flags.ro ? { readOnly: true } : {}),
          ...(flags.backend === undefined ? {} : { backend: nonEmpty('--backend', flags.backend) }),
        },
      }),
  );

  const blockDetach = runs(toolstackSubcommand('block-detach', true).argument('<domain>').argument('<vdev>'), (domain: string, vdev: string, flags: CommonFlags) =>
    call('block-detach', flags, { action: 'block-detach', domain: nonEmpty('the domain', domain), options: { vdev } }),
  );

  return [list, create, simple('pause'), simple('unpause'), simple('halt'), blockList, blockAttach, blockDetach];
}
