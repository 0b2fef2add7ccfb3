#!/usr/bin/env node
import { runBackend } from '../host/cli/backend-cli.js';
import { runDomain } from '../host/cli/domain-cli.js';
import { runUp } from '../host/cli/up.js';
import { runXenstored } from '../xenstore/daemon/main.js';

const USAGE = `Usage: xenmesh <command> [options]

Commands:
  up          boot an embedded Xen host: dom0 with xenstored, a driver domain
              and a guest, each in its own worker (xenmesh up --help)
  domain      shut down, reboot, suspend, resume or destroy a domain of the
              running host, or send it a sysrq (xenmesh domain --help)
  xenstored   run the xenstore daemon alone in the foreground on a Unix socket
              (xenmesh xenstored --help for its options)
  backend     serve the block devices xl configures for this domain, on a
              real Xen host (dom0 or a driver domain; xenmesh backend --help)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'up':
      return runUp(rest);
    case 'domain':
      return runDomain(rest);
    case 'xenstored':
      return runXenstored(rest);
    case 'backend':
      return runBackend(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 1 : 0;
    default:
      process.stderr.write(`xenmesh: unknown command '${command}'\n${USAGE}`);
      return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`xenmesh: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  },
);
