#!/usr/bin/env node
import { Command } from 'commander';
import { commanderExitCode, configure } from '../host/cli/command-line.js';
import { toolstackCommands } from '../host/cli/toolstack-cli.js';
import { XENMESH_VERSION } from '../host/cli/version.js';

/**
 * The commands whose modules are heavy, loaded only when named: each start
 * of xenmesh (a driver domain's backend under emulation, every command an
 * operator types) pays for every module it loads. The toolstack's commands
 * are a thin client of the host's socket and are always there.
 */
const HEAVY_COMMANDS: Record<string, () => Promise<Command>> = {
  up: async () => (await import('../host/cli/up.js')).upCommand(),
  domain: async () => (await import('../host/cli/domain-cli.js')).domainCommand(),
  backend: async () => (await import('../host/cli/backend-cli.js')).backendCommand(),
};

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

/** The command line, with the heavy command asked for (if one is) among the toolstack's. */
async function program(command: string): Promise<Command> {
  const xenmesh = configure(new Command('xenmesh'), 'xenmesh', USAGE).version(XENMESH_VERSION, '-V, --version');
  const heavy = Object.hasOwn(HEAVY_COMMANDS, command) ? [await HEAVY_COMMANDS[command]!()] : [];
  for (const each of [...toolstackCommands(), ...heavy]) xenmesh.addCommand(each);
  // Listed for --help; its arguments are xenstored's own (C xenstored's), parsed by it.
  xenmesh.command('xenstored');
  return xenmesh;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'xenstored') return (await import('../xenstore/daemon/main.js')).runXenstored(rest);
  if (command === undefined) {
    process.stdout.write(`${USAGE}\n`);
    return 1;
  }
  try {
    await (await program(command)).parseAsync(argv, { from: 'user' });
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
