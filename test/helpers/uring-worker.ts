/**
 * A worker with its own io_uring: it writes and reads back a file and
 * reports what it read, then leaves the ring open for the worker's exit to
 * tear down, as a backend worker that is terminated would. In `exit-busy`
 * mode it exits with writes still in flight.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openSync, closeSync } from 'node:fs';
import { openUring } from '../../shared/uring.js';

interface Setup {
  path: string;
  mode: 'round-trip' | 'exit-busy';
}

const setup = workerData as Setup;
const opened = openUring(8);
if ('reason' in opened) throw new Error(opened.reason);
const { uring } = opened;
const fd = openSync(setup.path, 'r+');

if (setup.mode === 'round-trip') {
  const written = new TextEncoder().encode(`from worker ${process.pid}`);
  const read = new Uint8Array(written.length);
  uring.onCompletions((tags, results) => {
    for (let i = 0; i < tags.length; i++) {
      if (tags[i] === 1) {
        uring.readv(fd, [read], 0, 2);
        uring.submit();
      } else if (tags[i] === 2) {
        closeSync(fd);
        parentPort!.postMessage({ result: results[i], text: new TextDecoder().decode(read) });
      }
    }
  });
  uring.writev(fd, [written], 0, 1);
  uring.submit();
} else {
  const block = new Uint8Array(new SharedArrayBuffer(1 << 16)).fill(0x5a);
  for (let tag = 0; tag < 64; tag++) uring.writev(fd, [block], tag * block.length, tag);
  uring.submit();
  parentPort!.postMessage({ inFlight: uring.inFlight });
  process.exit(0);
}
