import { createWriteStream, type WriteStream } from 'node:fs';
import { resolve } from 'node:path';
import { xsTypeName, type XsMessage } from '../../shared/xs-wire.js';

/**
 * What a trace line is about, as xenstored labels them: `io` for a request or
 * reply, `obj` for connections and transactions coming and going, `acc` for
 * quota decisions.
 */
export type TraceCategory = 'io' | 'obj' | 'acc';

/** Renders a payload on one line: NULs as spaces, other unprintable bytes as \xNN. */
export function printablePayload(payload: Buffer): string {
  let out = '';
  for (const byte of payload) {
    if (byte === 0) out += ' ';
    else if (byte >= 0x20 && byte < 0x7f && byte !== 0x5c) out += String.fromCharCode(byte);
    else out += `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/**
 * The trace file of `--trace`: one line per request and per reply, and one
 * per connection or transaction that comes or goes. `xenstore-control log
 * on|off` and `logfile` drive it while the daemon runs.
 */
export class Tracer {
  private stream: WriteStream | undefined;

  constructor(private file: string | undefined) {
    this.reopen();
  }

  get fileName(): string | undefined {
    return this.file;
  }

  get active(): boolean {
    return this.stream !== undefined;
  }

  /** `log on`: (re)opens the trace file, if one is set. */
  reopen(): void {
    this.close();
    if (!this.file) return;
    this.stream = createWriteStream(this.file, { flags: 'a', mode: 0o600 });
    this.stream.on('error', () => {
      this.stream = undefined;
    });
    this.stream.write('\n***\n');
  }

  /** `log off`. */
  close(): void {
    this.stream?.end();
    this.stream = undefined;
  }

  /** `logfile <file>`: relative names are taken from the daemon's working directory. */
  setFile(file: string): void {
    this.file = resolve(file);
    this.reopen();
  }

  io(direction: 'IN' | 'OUT', connection: string, domid: number, msg: XsMessage): void {
    if (!this.stream) return;
    this.write(
      `io: ${direction} ${connection} (d${domid}) ${new Date().toISOString()} ${xsTypeName(msg.type)} req ${msg.reqId} tx ${msg.txId} (${printablePayload(msg.payload)})`,
    );
  }

  event(category: TraceCategory, text: string): void {
    if (this.stream) this.write(`${category}: ${text}`);
  }

  write(line: string): void {
    this.stream?.write(`${line}\n`);
  }
}
