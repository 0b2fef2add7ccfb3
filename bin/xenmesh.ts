#!/usr/bin/env node
import { Command } from 'commander';
import { backendCommand } from '../host/cli/backend-cli.js';
import { commanderExitCode, configure } from '../host/cli/command-line.js';
import { domainCommand } from '../host/cli/domain-cli.js';
import { toolstackCommands } from '../host/cli/toolstack-cli.js';
import { upCommand } from '../host/cli/up.js';
import { XENMESH_VERSION } from '../host/cli/version.js';
import { runXenstored } from '../xenstore/daemon/main.js';

const USAGE = `Usage: xenmesh <command> [options]

Commands:
  up            boot an embedded Xen host: dom0 with xenstored, a driver domain
                and a guest, each in its own worker (xenmesh up --help)
  list          the running host's domains, as xl list
  create        create a guest with disks served by the driver domain
  domain        shut down, reboot, halt, suspend, resume, pause, unpause or
                destroy a domain of the running host, or send it a sysrq
                (xenmesh domain --help)
  pause         pause a domain; unpause lets it run again
  unpause       unpause a paused domain
  halt          ask a domain to halt
  block-list    a domain's disks: states, rings, features and I/O counters
  block-attach  attach a disk image to a running domain
  block-detach  detach a disk from a domain
  xenstored     run the xenstore daemon alone in the foreground on a Unix socket
                (xenmesh xenstored --help for its options)
  backend       serve the block devices xl configures for this domain, on a
                real Xen host (dom0 or a driver domain; xenmesh backend --help)

Options:
  -V, --version  print xenmesh's version
  -h, --help     print this help

Each command takes --help.`;

function program(): Command {
  const xenmesh = configure(new Command('xenmesh'), 'xenmesh', USAGE).version(XENMESH_VERSION, '-V, --version');
  for (const command of [upCommand(), ...toolstackCommands(), domainCommand(), backendCommand()]) xenmesh.addCommand(command);
  // Listed for --help; its arguments are xenstored's own (C xenstored's), parsed by it.
  xenmesh.command('xenstored');
  return xenmesh;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'xenstored') return runXenstored(rest);
  if (command === undefined) {
    process.stdout.write(`${USAGE}\n`);
    return 1;
  }
  try {
    await program().parseAsync(argv, { from: 'user' });
    return Number(process.exitCode ?? 0);
  } catch (err) {
    const code = commanderExitCode(err);
    if (code !== undefined) return code;
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`xenmesh: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  },
);
