#!/usr/bin/env node
import { runXenstored } from '../xenstore/daemon/main.js';

const USAGE = `Usage: xenmesh <command> [options]

Commands:
  xenstored   run the xenstore daemon in the foreground on a Unix socket
              (xenmesh xenstored --help for its options)
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'xenstored':
      return runXenstored(rest);
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
