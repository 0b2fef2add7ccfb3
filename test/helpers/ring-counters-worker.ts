/**
 * A ring thread's side of the counters, alone: answers READs of 2^31 bytes
 * (so that every second one carries into the high word) and, every third
 * request, a WRITE that failed, until told to stop through word 0 of
 * `workerData.stop`; then says how many of each it counted.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { RingCounterWriter } from '../../blkback/ring-counters.js';
import { BlkifOp, BlkifStatus } from '../../shared/blkif.js';

const { counters, stop } = workerData as { counters: SharedArrayBuffer; stop: SharedArrayBuffer };
const writer = new RingCounterWriter(counters);
const stopFlag = new Int32Array(stop);
let reads = 0;
let failedWrites = 0;
while (Atomics.load(stopFlag, 0) === 0) {
  for (let i = 0; i < 1000; i++) {
    writer.inFlight(1);
    if ((reads + failedWrites) % 3 === 2) {
      failedWrites++;
      writer.answered(BlkifOp.WRITE, BlkifStatus.ERROR, 4096, 30, 0);
    } else {
      reads++;
      writer.answered(BlkifOp.READ, BlkifStatus.OKAY, 2 ** 31, 7, 0);
    }
  }
}
parentPort!.postMessage({ reads, failedWrites });
