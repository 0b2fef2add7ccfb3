/**
 * What travels over the toolstack socket between the xenmesh commands
 * (`xenmesh domain`, `xenmesh list`, `xenmesh block-attach`, ...) and the
 * host that `xenmesh up` runs: one JSON request per line, one JSON answer
 * per line, each carrying the version of xenmesh that wrote it and of this
 * protocol. Both ends read and check it here, so that a client can trust
 * what it is told and the host refuses what it cannot act on before it
 * reaches the toolstack; a host and a client of different versions refuse
 * each other's words rather than half-understand them.
 */
import { TOOLSTACK_ACTIONS, type ToolstackAction, type DomainActionOptions } from '../../control/actions.js';
import { SYSRQ_KEY_RULE, sysrqKeyError } from '../../control/protocol.js';
import { quoteText } from '../../shared/quote.js';
import { XENMESH_VERSION } from './version.js';

/** The toolstack socket's protocol: 1 had no version field; 2 carries it, and the host-wide actions. */
export const TOOLSTACK_PROTOCOL_VERSION = 2;

/** Who wrote a message: which xenmesh, speaking which protocol. */
export interface ProtocolVersion {
  readonly xenmesh: string;
  readonly protocol: number;
}

/** This xenmesh's version, as its messages carry it. */
export const OWN_VERSION: ProtocolVersion = { xenmesh: XENMESH_VERSION, protocol: TOOLSTACK_PROTOCOL_VERSION };

/** A version as a user reads it. */
export function describeVersion(version: ProtocolVersion): string {
  return `xenmesh ${version.xenmesh} (toolstack protocol ${version.protocol})`;
}

function sameVersion(a: ProtocolVersion, b: ProtocolVersion): boolean {
  return a.xenmesh === b.xenmesh && a.protocol === b.protocol;
}

/** The toolstack's socket lives next to xenstored's, so that one `--socket` names a host for every tool. */
export const TOOLSTACK_SOCKET_SUFFIX = '.toolstack';

export function toolstackSocketPath(xenstoredSocket: string): string {
  return `${xenstoredSocket}${TOOLSTACK_SOCKET_SUFFIX}`;
}

/** A line longer than this (in characters) is refused: nothing legitimate comes close, and neither end may buffer without end. */
export const MAX_LINE_LENGTH = 64 * 1024;

export interface ToolstackRequest {
  readonly action: ToolstackAction;
  /** The domain's name or domid; none for `list`, and for `block-list` of every domain. */
  readonly domain?: string;
  readonly options: DomainActionOptions;
}

export type DomainReply = { readonly ok: true; readonly message: string } | { readonly ok: false; readonly error: string };

/** A line that is not a request the host can act on; the message is what the client is told. */
export class RequestError extends Error {
  override readonly name = 'RequestError';
}

/** A reply written by a xenmesh of another version than this one: its meaning is not to be guessed. */
export class VersionMismatchError extends Error {
  override readonly name = 'VersionMismatchError';
}

const REQUEST_SHAPE = '{"version": {"xenmesh": ..., "protocol": ...}, "action": ..., "domain": ..., "options": {...}}';
const REQUEST_FIELDS = new Set(['version', 'action', 'domain', 'options']);

interface OptionRule {
  readonly type: 'number' | 'boolean' | 'string' | 'string[]';
  /** The actions it goes with, as the commands allow them; none: every action. */
  readonly actions?: readonly ToolstackAction[];
}

/**
 * The options a request may carry. Names are looked up as own properties
 * only: a client can send `__proto__` or `toString`, and neither is an
 * option.
 */
const OPTIONS: Readonly<Record<keyof DomainActionOptions, OptionRule>> = {
  timeoutMs: { type: 'number' },
  halt: { type: 'boolean', actions: ['shutdown'] },
  backend: { type: 'string', actions: ['resume', 'block-attach', 'create'] },
  key: { type: 'string', actions: ['sysrq'] },
  image: { type: 'string', actions: ['block-attach'] },
  vdev: { type: 'string', actions: ['block-attach', 'block-detach'] },
  readOnly: { type: 'boolean', actions: ['block-attach'] },
  disks: { type: 'string[]', actions: ['create'] },
};

/** Actions that name no domain, or may name none. */
/** Actions that only read the host's state: the log need not keep their answers. */
export const QUERY_ACTIONS: ReadonlySet<ToolstackAction> = new Set(['list', 'block-list']);
const DOMAIN_OPTIONAL: ReadonlySet<ToolstackAction> = new Set(['list', 'block-list']);
const NO_DOMAIN: ReadonlySet<ToolstackAction> = new Set(['list']);

function optionRule(name: string): OptionRule | undefined {
  return Object.hasOwn(OPTIONS, name) ? OPTIONS[name as keyof DomainActionOptions] : undefined;
}

export function isToolstackAction(word: string): word is ToolstackAction {
  return (TOOLSTACK_ACTIONS as readonly string[]).includes(word);
}

/** Reads a message's version, or says what is wrong with it. */
function readVersion(value: unknown): ProtocolVersion | string {
  if (value === undefined) return 'no version';
  if (!isRecord(value) || typeof value['xenmesh'] !== 'string' || !Number.isInteger(value['protocol'])) {
    return `a version that is not {"xenmesh": "<version>", "protocol": <number>}`;
  }
  return { xenmesh: value['xenmesh'], protocol: value['protocol'] as number };
}

/** Reads one request line, or throws a RequestError that says what is wrong with it. */
export function parseRequest(line: string): ToolstackRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    throw new RequestError(`the request is not valid JSON (${(err as Error).message}); send one ${REQUEST_SHAPE} per line`);
  }
  if (!isRecord(value)) throw new RequestError(`a request is a JSON object ${REQUEST_SHAPE}`);
  // The version first: the rest of a request from another version may mean something else.
  const version = readVersion(value['version']);
  if (typeof version === 'string') {
    throw new RequestError(`the request carries ${version}; this host runs ${describeVersion(OWN_VERSION)} and takes requests from that version only`);
  }
  if (!sameVersion(version, OWN_VERSION)) {
    throw new RequestError(
      `the request comes from ${describeVersion(version)}, but this host runs ${describeVersion(OWN_VERSION)}; use the xenmesh that started the host`,
    );
  }
  for (const field of Object.keys(value)) {
    if (!REQUEST_FIELDS.has(field)) throw new RequestError(`unknown field ${quoted(field)} in the request; it has ${REQUEST_SHAPE}`);
  }
  const { action, domain, options = {} } = value;
  if (typeof action !== 'string' || !isToolstackAction(action)) {
    throw new RequestError(`unknown action ${JSON.stringify(action ?? null)}; the actions are ${TOOLSTACK_ACTIONS.join(', ')}`);
  }
  const parsedOptions = parseOptions(options, action);
  if (domain === undefined && DOMAIN_OPTIONAL.has(action)) return { action, options: parsedOptions };
  if (NO_DOMAIN.has(action)) throw new RequestError(`${action} takes no "domain"`);
  if (!((typeof domain === 'string' && domain !== '') || (typeof domain === 'number' && Number.isInteger(domain) && domain >= 0))) {
    throw new RequestError('"domain" must name a domain: its name or its domid');
  }
  return { action, domain: String(domain), options: parsedOptions };
}

/** The options, checked against the allow-list and copied: nothing the client sent is passed on but what was checked. */
function parseOptions(options: unknown, action: ToolstackAction): DomainActionOptions {
  if (!isRecord(options)) throw new RequestError('"options" must be a JSON object');
  const parsed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(options)) {
    const rule = optionRule(name);
    if (!rule) throw new RequestError(`unknown option ${quoted(name)}; the options are ${Object.keys(OPTIONS).join(', ')}`);
    if (!hasType(value, rule.type)) throw new RequestError(`option ${quoted(name)} must be ${typeName(rule.type)}, not ${jsonType(value)}`);
    if (rule.actions && !rule.actions.includes(action)) throw new RequestError(`option ${quoted(name)} goes with ${rule.actions.join(', ')} only`);
    parsed[name] = Array.isArray(value) ? [...(value as string[])] : value;
  }
  const timeoutMs = parsed['timeoutMs'];
  if (typeof timeoutMs === 'number' && !(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
    throw new RequestError("option 'timeoutMs' must be a positive number of milliseconds");
  }
  const key = parsed['key'];
  if (action === 'sysrq' && key === undefined) throw new RequestError(`sysrq needs option 'key': ${SYSRQ_KEY_RULE}`);
  const keyError = typeof key === 'string' ? sysrqKeyError(key) : undefined;
  if (keyError) throw new RequestError(`option 'key': ${keyError}`);
  if (action === 'block-attach' && typeof parsed['image'] !== 'string') throw new RequestError("block-attach needs option 'image': the disk's image");
  if (action === 'block-detach' && typeof parsed['vdev'] !== 'string') throw new RequestError("block-detach needs option 'vdev': the disk's name in the guest");
  return parsed as DomainActionOptions;
}

function hasType(value: unknown, type: OptionRule['type']): boolean {
  if (type === 'string[]') return Array.isArray(value) && value.every((item) => typeof item === 'string');
  return typeof value === type;
}

function typeName(type: OptionRule['type']): string {
  return type === 'string[]' ? 'an array of strings' : `a ${type}`;
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

/**
 * Reads the host's answer; a line that is not one is reported as such,
 * never taken for success, and one from a host of another version is a
 * VersionMismatchError, whatever it says.
 */
export function parseReply(line: string): DomainReply {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`the host answered something that is not JSON: ${line.slice(0, 200)}`);
  }
  if (!isRecord(value)) throw new Error(`the host answered something that is not a reply: ${line.slice(0, 200)}`);
  const version = readVersion(value['version']);
  if (typeof version === 'string') {
    throw new VersionMismatchError(
      `the host answered with ${version}: it runs a xenmesh older than this one, ${describeVersion(OWN_VERSION)}; use the xenmesh that started the host`,
    );
  }
  if (!sameVersion(version, OWN_VERSION)) {
    throw new VersionMismatchError(`the host runs ${describeVersion(version)}, and this is ${describeVersion(OWN_VERSION)}; use the xenmesh that started the host`);
  }
  if (value['ok'] === true && typeof value['message'] === 'string') return { ok: true, message: value['message'] };
  if (value['ok'] === false && typeof value['error'] === 'string') return { ok: false, error: value['error'] };
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

/** A request or reply as a line, stamped with this xenmesh's version. */
export function formatLine(message: ToolstackRequest | DomainReply, version: ProtocolVersion = OWN_VERSION): string {
  return `${JSON.stringify({ version, ...message })}\n`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
