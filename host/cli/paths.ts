/**
 * The paths `xenmesh up` is given or picks, tried before it does anything
 * that leaves a trace (creating the default image, emptying the journal,
 * writing the state file): another host's socket is refused rather than
 * taken over, and a directory or file that cannot be used is one line
 * naming it and its option (shared/startup-paths.ts).
 */
import { journalDirFor } from '../../xenstore/daemon/options.js';
import { checkAppendableFile, checkReplaceable, prepareSocketDirectory, refuseServedSocketPath } from '../../shared/startup-paths.js';
import { toolstackSocketPath } from './toolstack-protocol.js';

export interface HostPaths {
  readonly socket: string;
  readonly traceFile: string | undefined;
}

/** Throws a PathError, one line, for the first of the host's paths that cannot be used. */
export async function checkHostPaths({ socket, traceFile }: HostPaths): Promise<void> {
  await refuseServedSocketPath(socket, '--socket PATH');
  await refuseServedSocketPath(toolstackSocketPath(socket), '--socket PATH');
  prepareSocketDirectory(socket, '--socket PATH');
  // What the host's xenstored keeps next to its socket (Host's journalDir and stateFile).
  checkReplaceable(journalDirFor(socket), 'xenstore journal', '--socket PATH');
  checkReplaceable(`${socket}.state`, 'xenstored state file', '--socket PATH');
  if (traceFile !== undefined) checkAppendableFile(traceFile, 'trace file', '--trace FILE');
}
