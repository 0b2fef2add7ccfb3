/**
 * How every xenmesh subcommand parses its command line, on commander: a
 * usage error is one line naming the command, then the usage, on stderr,
 * exit status 1; --help prints the usage on stdout, exit status 0. Each
 * subcommand defines its options with commander's own .option() calls, so
 * that an option is added where the others are.
 */
import { Command, CommanderError } from 'commander';

/** A usage error found after commander parsed the line (a value out of range, options that do not go together). */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/**
 * A subcommand of `xenmesh`, its errors and help in xenmesh's words:
 * `usage` is the text --help prints and a usage error ends with.
 */
export function subcommand(name: string, usage: string): Command {
  const command = new Command(name);
  configure(command, `xenmesh ${name}`, usage);
  return command;
}

/** Errors and help for `command`, whose messages start with `prefix`. */
export function configure(command: Command, prefix: string, usage: string): Command {
  command.helpInformation = () => `${usage}\n`;
  command
    .helpOption('-h, --help', 'print this help')
    .exitOverride()
    .configureOutput({
      writeOut: (text) => process.stdout.write(text),
      writeErr: (text) => process.stderr.write(text),
      // commander's "error: ..." becomes "xenmesh <command>: ...", above the usage.
      outputError: (text, write) => write(`${prefix}: ${oneLine(text)}\n${usage}\n`),
    });
  return command;
}

/** commander's message on one line: without its `error: `, its suggestion (`(Did you mean --ro?)`) joined on. */
function oneLine(text: string): string {
  return text
    .replace(/^error: /, '')
    .trim()
    .replace(/\s*\n\s*\(Did you mean (.*)\?\)$/, ' (did you mean $1?)')
    .replace(/\s*\n\s*/g, ' ');
}

/**
 * Runs what a subcommand does with its parsed arguments: its exit status
 * becomes the process's, and a UsageError is reported as commander reports
 * its own (one line, the usage, exit status 1).
 */
export function runs<Args extends unknown[]>(command: Command, body: (...args: Args) => Promise<number>): Command {
  return command.action(async (...args: unknown[]) => {
    try {
      process.exitCode = await body(...(args as Args));
    } catch (err) {
      if (err instanceof UsageError) command.error(err.message);
      throw err;
    }
  });
}

/** The exit status for what commander threw: 0 after --help or --version, else commander's own (1). */
export function commanderExitCode(err: unknown): number | undefined {
  if (!(err instanceof CommanderError)) return undefined;
  if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
  return err.exitCode === 0 ? 0 : 1;
}

/** A --timeout value in seconds, as milliseconds; a UsageError unless a positive number. */
export function parseSeconds(option: string, text: string): number {
  const seconds = Number(text);
  if (text.trim() === '' || !Number.isFinite(seconds) || seconds <= 0) throw new UsageError(`${option} must be a positive number of seconds`);
  return seconds * 1000;
}
