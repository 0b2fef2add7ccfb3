/** The states of a XenBus device end (xen/include/public/io/xenbus.h, enum xenbus_state). */
export const XenbusState = {
  Unknown: 0,
  Initialising: 1,
  /** Finished early initialisation, waiting for information from the peer or hotplug scripts. */
  InitWait: 2,
  /** Waiting for a connection from the peer. */
  Initialised: 3,
  Connected: 4,
  /** Being closed because of an error or an unplug. */
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;

export type XenbusStateValue = (typeof XenbusState)[keyof typeof XenbusState];

const NAMES = Object.fromEntries(Object.entries(XenbusState).map(([name, value]) => [value, name])) as Record<number, string>;

/** The state's name, or `INVALID(<n>)` (xenbus_strstate). */
export function stateName(state: number): string {
  return NAMES[state] ?? `INVALID(${state})`;
}

/**
 * A `state` node's value as a state. A missing state reads as Unknown, as
 * Linux's xenbus_read_driver_state has it: an end that is not there yet
 * (a backend can appear before its frontend) has no state to act on.
 */
export function parseState(text: string | undefined): number {
  if (text === undefined) return XenbusState.Unknown;
  const value = Number(text.trim());
  return Number.isInteger(value) && value >= XenbusState.Unknown && value <= XenbusState.Reconfigured ? value : XenbusState.Unknown;
}
