/**
 * The command prompt of `xenmesh up`: xl's domain commands (and a status
 * report) typed at the running host. Commands run one at a time, in the
 * order they were typed, so that piped commands behave as typed ones; a
 * command that fails or makes no sense is reported and the host runs on.
 * At a terminal, log lines that arrive while the prompt waits are printed
 * above it, and the prompt is drawn again below with what was typed.
 */
import { clearLine, createInterface, cursorTo, type Interface } from 'node:readline';
import { resolve } from 'node:path';
import type { DomainActionOptions, ToolstackAction } from '../../control/actions.js';
import { SYSRQ_KEY_RULE, sysrqKeyError } from '../../control/protocol.js';
import { setLogWriter } from '../../shared/log.js';
import type { Host } from '../machine/host.js';
import { formatDevices, formatStatus, formatTreeAt } from './report.js';
import { runToolstackAction } from './toolstack-actions.js';
import { renderTable, TABLE_WIDTH } from './tables.js';

const HELP_INDENT = '  ';

export interface PromptOptions {
  readonly input: NodeJS.ReadableStream;
  readonly output: NodeJS.WritableStream;
  readonly errors: NodeJS.WritableStream;
  /**
   * A terminal gets a prompt string, line editing, and log lines printed
   * above the prompt; anything else (a pipe, output to a file) is read
   * line by line and gets no escape sequences. Only true where both the
   * input and the output are terminals.
   */
  readonly terminal: boolean;
  /** `quit`: the host should shut down. */
  readonly onQuit: () => void;
  /** Ctrl-C at the terminal, which readline catches before it becomes SIGINT. */
  readonly onInterrupt: () => void;
}

const PROMPT = 'xenmesh> ';

interface Command {
  /** The arguments, as the usage line shows them. */
  readonly args: string;
  readonly help: string;
  readonly minArgs: number;
  readonly maxArgs: number;
  readonly run: (host: Host, args: string[]) => Promise<string>;
}

const action = (name: ToolstackAction, options: (args: string[]) => DomainActionOptions = () => ({})) =>
  (host: Host, args: string[]) => runToolstackAction(host, name, args[0], options(args));

/** One `--name value` (or, with no value wanted, `--name`) out of a command's words; the words left are the arguments. */
function takeFlag(args: string[], name: string, wantsValue: boolean): string | true | undefined {
  const at = args.indexOf(name);
  if (at < 0) return undefined;
  const [, value] = args.splice(at, wantsValue ? 2 : 1);
  if (!wantsValue) return true;
  if (value === undefined) throw new Error(`${name} needs a value`);
  return value;
}

/** The words of a command line with its `--` flags taken out, for the commands that take flags. */
const flagged = (flags: Record<string, boolean>, run: (host: Host, args: string[], values: Record<string, string | true | undefined>) => Promise<string>) =>
  (host: Host, words: string[]) => {
    const args = [...words];
    const values = Object.fromEntries(Object.entries(flags).map(([name, wantsValue]) => [name, takeFlag(args, name, wantsValue)]));
    const unknown = args.find((word) => word.startsWith('--'));
    if (unknown) throw new Error(`unknown option '${unknown}'`);
    return run(host, args, values);
  };

/** What the prompt understands; `help` and `quit` are the prompt's own. */
const COMMANDS: Record<string, Command> = {
  list: { args: '', help: 'the domains, as xl list', minArgs: 0, maxArgs: 0, run: action('list') },
  create: {
    args: '<name> [image ...] [--backend D]',
    help: 'create a guest, its disks (xvda, ...) served by a driver domain',
    minArgs: 1,
    maxArgs: 20,
    run: flagged({ '--backend': true }, (host, [name, ...images], { '--backend': backend }) =>
      runToolstackAction(host, 'create', name, { disks: images.map((image) => resolve(image)), ...(typeof backend === 'string' ? { backend } : {}) }),
    ),
  },
  shutdown: { args: '<domain>', help: 'ask the domain to power off', minArgs: 1, maxArgs: 1, run: action('shutdown') },
  halt: { args: '<domain>', help: 'ask the domain to halt', minArgs: 1, maxArgs: 1, run: action('halt') },
  reboot: { args: '<domain>', help: 'ask the domain to reboot, and start it again (under a new domid)', minArgs: 1, maxArgs: 1, run: action('reboot') },
  suspend: { args: '<domain>', help: 'ask the domain to suspend itself', minArgs: 1, maxArgs: 1, run: action('suspend') },
  resume: {
    args: '<domain> [backend-domain]',
    help: 'resume a suspended domain (its disks served by backend-domain from now on)',
    minArgs: 1,
    maxArgs: 2,
    run: action('resume', ([, backend]) => (backend === undefined ? {} : { backend })),
  },
  pause: { args: '<domain>', help: 'stop scheduling the domain', minArgs: 1, maxArgs: 1, run: action('pause') },
  unpause: { args: '<domain>', help: 'let a paused domain run again', minArgs: 1, maxArgs: 1, run: action('unpause') },
  destroy: { args: '<domain>', help: 'destroy the domain at once, without asking it', minArgs: 1, maxArgs: 1, run: action('destroy') },
  sysrq: { args: '<domain> <key>', help: `send the domain a sysrq key (${SYSRQ_KEY_RULE})`, minArgs: 2, maxArgs: 2, run: action('sysrq', ([, key]) => ({ key: key! })) },
  'block-list': { args: '[domain]', help: "the disks, their rings, features and counters", minArgs: 0, maxArgs: 1, run: action('block-list') },
  'block-attach': {
    args: '<domain> <image> [vdev] [--ro] [--backend D]',
    help: 'attach a disk to a running domain',
    minArgs: 2,
    maxArgs: 6,
    run: flagged({ '--ro': false, '--backend': true }, (host, [domain, image, vdev, ...extra], { '--ro': ro, '--backend': backend }) => {
      if (image === undefined) throw new Error('usage: block-attach <domain> <image> [vdev] [--ro] [--backend D]');
      if (extra.length > 0) throw new Error(`unexpected argument '${extra[0]}'`);
      return runToolstackAction(host, 'block-attach', domain, {
        image: resolve(image),
        ...(vdev === undefined ? {} : { vdev }),
        ...(ro ? { readOnly: true } : {}),
        ...(typeof backend === 'string' ? { backend } : {}),
      });
    }),
  },
  'block-detach': { args: '<domain> <vdev>', help: 'detach a disk (by force if the guest does not close it)', minArgs: 2, maxArgs: 2, run: action('block-detach', ([, vdev]) => ({ vdev: vdev! })) },
  status: {
    args: '',
    help: 'the domains, their workers and devices',
    minArgs: 0,
    maxArgs: 0,
    run: async (host) => `${await formatStatus(host)}\n\n${await formatDevices(host.xenstore)}`,
  },
  tree: { args: '[path]', help: "xenstore's tree under path (/ by default), as xenstore-ls -p shows it", minArgs: 0, maxArgs: 1, run: (host, [path]) => formatTreeAt(host.xenstore, path ?? '/') },
};

const OWN_COMMANDS: Record<string, string> = { help: 'this list', quit: 'shut the host down, as SIGTERM does' };

/** The one-line hint printed once the prompt listens. */
export const PROMPT_HINT = `Type help for the commands (${[...Object.keys(COMMANDS), 'quit'].join(', ')}).`;

export function helpText(): string {
  const rows: [string, string][] = [
    ...Object.entries(COMMANDS).map(([name, command]): [string, string] => [`${name} ${command.args}`.trim(), command.help]),
    ...Object.entries(OWN_COMMANDS),
  ];
  return [
    'Commands (a domain is named by its name or its domid):',
    // Indented under the line above, in the width left.
    ...renderTable(['command', 'what it does'], rows, TABLE_WIDTH - HELP_INDENT.length)
      .split('\n')
      .map((line) => (line === '' ? line : `${HELP_INDENT}${line}`)),
    'From another terminal, the xenmesh commands do the same (xenmesh --help).',
  ].join('\n');
}

export class HostPrompt {
  private readonly rl: Interface;
  private pending = Promise.resolve();
  private closed = false;
  /** True while the prompt is on the screen waiting for a line (a terminal only). */
  private prompting = false;

  constructor(
    private readonly host: Host,
    private readonly options: PromptOptions,
  ) {
    this.rl = createInterface({ input: options.input, output: options.terminal ? options.output : undefined, terminal: options.terminal });
    this.rl.setPrompt(PROMPT);
    if (options.terminal) setLogWriter((line) => this.writeAbovePrompt(line));
    this.rl.on('line', (line) => {
      this.prompting = false;
      if (this.closed) return;
      this.pending = this.pending.then(() => this.execute(line));
    });
    this.rl.on('SIGINT', () => options.onInterrupt());
    // The end of input ends the prompt, not the host: a host started with
    // its input closed or piped from a finite script stays up.
    this.rl.on('close', () => {
      this.prompting = false;
      if (options.terminal) setLogWriter(undefined);
      if (this.closed) return;
      this.closed = true;
      if (options.terminal) this.say('\nNo more commands; the host runs until Ctrl-C or SIGTERM.');
    });
    this.showPrompt();
  }

  /** Stops reading commands (the host is shutting down). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.rl.close();
  }

  private async execute(line: string): Promise<void> {
    if (this.closed) return;
    const [name, ...args] = line.trim().split(/\s+/).filter((word) => word !== '');
    try {
      if (name === undefined) return;
      if (name === 'help') this.say(helpText());
      else if (name === 'quit') {
        this.close();
        this.options.onQuit();
      } else this.say(await this.run(name, args));
    } catch (err) {
      this.complain(err instanceof Error ? err.message : String(err));
    } finally {
      this.showPrompt();
    }
  }

  private async run(name: string, args: string[]): Promise<string> {
    const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
    if (!command) throw new Error(`unknown command '${name}'; type help for the commands`);
    if (args.length < command.minArgs || args.length > command.maxArgs) throw new Error(`usage: ${name} ${command.args}`);
    const keyError = name === 'sysrq' ? sysrqKeyError(args[1]!) : undefined;
    if (keyError) throw new Error(keyError);
    return command.run(this.host, args);
  }

  private say(text: string): void {
    this.options.output.write(`${text}\n`);
  }

  private complain(text: string): void {
    this.options.errors.write(`error: ${text}\n`);
  }

  private showPrompt(): void {
    if (!this.options.terminal || this.closed) return;
    this.rl.prompt();
    this.prompting = true;
  }

  /**
   * A log line at a terminal: while the prompt waits, its line is cleared,
   * the log line written in its place, and the prompt drawn again below
   * with what was typed so far and the cursor where it was.
   */
  private writeAbovePrompt(line: string): void {
    if (!this.prompting) {
      this.options.errors.write(line);
      return;
    }
    cursorTo(this.options.output, 0);
    clearLine(this.options.output, 0);
    this.options.errors.write(line);
    this.rl.prompt(true);
  }
}
