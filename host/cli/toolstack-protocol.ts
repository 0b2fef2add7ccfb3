/**
 * What travels over the toolstack socket between `xenmesh domain` and the
 * host that `xenmesh up` runs: one JSON request per line, one JSON answer
 * per line. Both ends read and check it here, so that a client can trust
 * what it is told and the host refuses what it cannot act on before it
 * reaches the toolstack.
 */
import { DOMAIN_ACTIONS, type DomainAction, type DomainActionOptions } from '../../control/actions.js';
import { SYSRQ_KEY_RULE, sysrqKeyError } from '../../control/protocol.js';
import { quoteText } from '../../shared/quote.js';

/** The toolstack's socket lives next to xenstored's, so that one `--socket` names a host for every tool. */
export const TOOLSTACK_SOCKET_SUFFIX = '.toolstack';

export function toolstackSocketPath(xenstoredSocket: string): string {
  return `${xenstoredSocket}${TOOLSTACK_SOCKET_SUFFIX}`;
}

/** A line longer than this (in characters) is refused: nothing legitimate comes close, and neither end may buffer without end. */
export const MAX_LINE_LENGTH = 64 * 1024;

export interface DomainRequest {
  readonly action: DomainAction;
  /** The domain's name or domid. */
  readonly domain: string;
  readonly options: DomainActionOptions;
}

export type DomainReply = { readonly ok: true; readonly message: string } | { readonly ok: false; readonly error: string };

/** A line that is not a request the host can act on; the message is what the client is told. */
export class RequestError extends Error {
  override readonly name = 'RequestError';
}

const REQUEST_SHAPE = '{"action": ..., "domain": ..., "options": {...}}';
const REQUEST_FIELDS = new Set(['action', 'domain', 'options']);

interface OptionRule {
  readonly type: 'number' | 'boolean' | 'string';
  /** The actions it goes with, as `xenmesh domain` allows them; none: every action. */
  readonly actions?: readonly DomainAction[];
}

/**
 * The options a request may carry. Names are looked up as own properties
 * only: a client can send `__proto__` or `toString`, and neither is an
 * option.
 */
const OPTIONS: Readonly<Record<keyof DomainActionOptions, OptionRule>> = {
  timeoutMs: { type: 'number' },
  halt: { type: 'boolean', actions: ['shutdown'] },
  backend: { type: 'string', actions: ['resume'] },
  key: { type: 'string', actions: ['sysrq'] },
};

function optionRule(name: string): OptionRule | undefined {
  return Object.hasOwn(OPTIONS, name) ? OPTIONS[name as keyof DomainActionOptions] : undefined;
}

export function isDomainAction(word: string): word is DomainAction {
  return (DOMAIN_ACTIONS as readonly string[]).includes(word);
}

/** Reads one request line, or throws a RequestError that says what is wrong with it. */
export function parseRequest(line: string): DomainRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    throw new RequestError(`the request is not valid JSON (${(err as Error).message}); send one ${REQUEST_SHAPE} per line`);
  }
  if (!isRecord(value)) throw new RequestError(`a request is a JSON object ${REQUEST_SHAPE}`);
  for (const field of Object.keys(value)) {
    if (!REQUEST_FIELDS.has(field)) throw new RequestError(`unknown field '${field}' in the request; it has ${REQUEST_SHAPE}`);
  }
  const { action, domain, options = {} } = value;
  if (typeof action !== 'string' || !isDomainAction(action)) {
    throw new RequestError(`unknown action ${JSON.stringify(action ?? null)}; the actions are ${DOMAIN_ACTIONS.join(', ')}`);
  }
  if (!((typeof domain === 'string' && domain !== '') || (typeof domain === 'number' && Number.isInteger(domain) && domain >= 0))) {
    throw new RequestError('"domain" must name a domain: its name or its domid');
  }
  return { action, domain: String(domain), options: parseOptions(options, action) };
}

/** The options, checked against the allow-list and copied: nothing the client sent is passed on but what was checked. */
function parseOptions(options: unknown, action: DomainAction): DomainActionOptions {
  if (!isRecord(options)) throw new RequestError('"options" must be a JSON object');
  const parsed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(options)) {
    const rule = optionRule(name);
    if (!rule) throw new RequestError(`unknown option ${quoted(name)}; the options are ${Object.keys(OPTIONS).join(', ')}`);
    if (typeof value !== rule.type) throw new RequestError(`option ${quoted(name)} must be a ${rule.type}, not ${jsonType(value)}`);
    if (rule.actions && !rule.actions.includes(action)) throw new RequestError(`option ${quoted(name)} goes with ${rule.actions.join(', ')} only`);
    parsed[name] = value;
  }
  const timeoutMs = parsed['timeoutMs'];
  if (typeof timeoutMs === 'number' && !(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
    throw new RequestError("option 'timeoutMs' must be a positive number of milliseconds");
  }
  const key = parsed['key'];
  if (action === 'sysrq' && key === undefined) throw new RequestError(`sysrq needs option 'key': ${SYSRQ_KEY_RULE}`);
  const keyError = typeof key === 'string' ? sysrqKeyError(key) : undefined;
  if (keyError) throw new RequestError(`option 'key': ${keyError}`);
  return parsed as DomainActionOptions;
}

/** A name as the client sent it, quoted, with anything unprintable escaped so that the message shows it plainly. */
function quoted(name: string): string {
  return quoteText(name, "'");
}

/** A JSON value's type, as a user of JSON names it. */
function jsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

/** Reads the host's answer; a line that is not one is reported as such, never taken for success. */
export function parseReply(line: string): DomainReply {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`the host answered something that is not JSON: ${line.slice(0, 200)}`);
  }
  if (isRecord(value) && value['ok'] === true && typeof value['message'] === 'string') return { ok: true, message: value['message'] };
  if (isRecord(value) && value['ok'] === false && typeof value['error'] === 'string') return { ok: false, error: value['error'] };
  throw new Error(`the host answered something that is not a reply: ${line.slice(0, 200)}`);
}

/** Cuts a stream of text into lines as it arrives. */
export class LineBuffer {
  private pending = '';

  /** The complete lines in what has arrived so far; throws a RequestError once a line grows past MAX_LINE_LENGTH. */
  push(text: string): string[] {
    const parts = (this.pending + text).split('\n');
    this.pending = parts.pop() ?? '';
    if (this.pending.length > MAX_LINE_LENGTH || parts.some((line) => line.length > MAX_LINE_LENGTH)) {
      this.pending = '';
      throw new RequestError(`a line is longer than ${MAX_LINE_LENGTH} characters`);
    }
    return parts;
  }

  /** What is left once the stream ends: a last line without its newline, if any. */
  finish(): string[] {
    const rest = this.pending;
    this.pending = '';
    return rest.trim() === '' ? [] : [rest];
  }
}

export function formatLine(message: DomainRequest | DomainReply): string {
  return `${JSON.stringify(message)}\n`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
