/**
 * The few requests the fuzzers must not get through, though the daemon
 * would rightly carry them out: CONTROL logfile and memreport naming a
 * file outside the batch's sandbox (they write where they are told), and
 * INTRODUCE, RELEASE or SET_QUOTA of the domain fuzzing over its ring
 * (a fresh connection or a lower quota would drop or stall its requests,
 * which the oracle could not tell from a daemon that loses them). Such a
 * request is defused in place, so that the framing of the stream is
 * unchanged: its first payload byte becomes 'X', which makes its command
 * or domid argument invalid (EINVAL).
 */
import { resolve, sep } from 'node:path';
import { XsType, splitNulStrings } from '../../shared/xs-wire.js';
import { parseDomid } from '../../shared/domid.js';
import type { Frame } from './xs-frames.js';
import type { XsWorld } from './xs-vocabulary.js';

const DEFUSED = 0x58; // 'X'

/** Why a frame must not reach the daemon as it is, or undefined if it may. */
export function danger(frame: Frame, world: XsWorld): string | undefined {
  const args = splitNulStrings(frame.payload).strings;
  const namesRingDomain = args.length > 0 && parseDomid(args[0]!) === world.ringDomid;
  switch (frame.type) {
    case XsType.CONTROL: {
      const [command, ...rest] = args;
      if (command !== 'logfile' && command !== 'memreport') return undefined;
      const outside = rest.some((file) => !isInside(resolve(file), world.sandbox));
      return outside ? `CONTROL ${command} outside the sandbox` : undefined;
    }
    case XsType.INTRODUCE:
    case XsType.RELEASE:
      return namesRingDomain ? `${frame.type === XsType.INTRODUCE ? 'INTRODUCE' : 'RELEASE'} of the fuzzing domain` : undefined;
    case XsType.SET_QUOTA:
      return args.length === 3 && namesRingDomain ? 'SET_QUOTA of the fuzzing domain' : undefined;
    default:
      return undefined;
  }
}

/**
 * Defuses the dangerous frames of `bytes` (framed from its start) in
 * place; returns what was defused.
 */
export function confine(bytes: Buffer, frames: readonly Frame[], world: XsWorld, headerSize: number): string[] {
  const defused: string[] = [];
  for (const frame of frames) {
    const why = danger(frame, world);
    if (!why) continue;
    bytes[frame.offset + headerSize] = DEFUSED;
    defused.push(why);
  }
  return defused;
}

function isInside(path: string, dir: string): boolean {
  return path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}
