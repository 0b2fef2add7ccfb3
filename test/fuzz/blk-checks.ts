/**
 * What must hold around and after a block fuzz batch: a producer index
 * beyond the ring cuts the frontend off cleanly; without one, every request
 * was answered once and the device is still Connected; the unplugged disk's
 * backend lets go; nothing was written outside the image; and a
 * well-behaved guest reads back what it writes on a fresh disk.
 */
import { open, stat } from 'node:fs/promises';
import { SECTOR_SIZE } from '../../shared/blkif.js';
import { diskDevice, type DeviceSpec } from '../../host/toolstack/devices.js';
import { XenbusState } from '../../xenbus/state.js';
import type { HostileFrontend } from './blk-frontend.js';
import type { HostileRing } from './blk-ring.js';
import { RESPONSE_TIMEOUT_MS, type Testbed } from './blk-testbed.js';
import type { Prng } from './prng.js';
import { FuzzViolation, type Trail } from './violation.js';

const { Initialised, Connected, Closing, Closed } = XenbusState;

/** The well-behaved guest's disk: a RAM disk of 1 MiB. */
const GOOD_DISK_BYTES = 1024 * 1024;

/**
 * Moves the request producer more than a ring ahead of the responses, as
 * a broken frontend might: like Linux's blkback ("Frontend provided bogus
 * ring requests"), the backend stops taking requests from the ring; ours
 * also reports it in the device's error node and goes Closing, and must
 * send nothing more.
 */
export async function overrunRing(t: Testbed, spec: DeviceSpec, frontend: HostileFrontend, ring: HostileRing, rng: Prng, trail: Trail): Promise<void> {
  await frontend.settle();
  const distance = rng.pick([ring.size + 1, ring.size + rng.int(2, 1000), 0x8000_0000, -1, -ring.size]);
  trail.add(`moved the request producer ${distance} slots from the last response`);
  ring.overrun(distance);
  ring.notify();
  try {
    await t.bed.waitStates(spec, Initialised, Closing, RESPONSE_TIMEOUT_MS);
  } catch (err) {
    throw trail.violation(`after the overrun: ${(err as Error).message}`);
  }
  const error = await t.bed.dom0.tryRead(`/local/domain/${t.driver.domid}/error/backend/vbd/${spec.frontendDomid}/${spec.devid}/error`);
  if (!/more than a ring ahead/.test(error ?? '')) throw trail.violation(`after the overrun the error node says ${JSON.stringify(error)}`);
  frontend.collect();
  if (frontend.owed !== 0) throw trail.violation(`${frontend.owed} requests unanswered after the overrun`);
}

/** After a batch without an overrun: every request answered once, nothing more, and the device still Connected. */
export async function stillConnected(t: Testbed, spec: DeviceSpec, frontend: HostileFrontend, trail: Trail): Promise<void> {
  await frontend.settle();
  await new Promise((resolve) => setTimeout(resolve, 5));
  frontend.collect();
  const backend = t.back.devices.get(`${spec.frontendDomid}/${spec.devid}`);
  if (backend?.served !== frontend.sent) throw trail.violation(`the backend answered ${backend?.served} requests of ${frontend.sent}`);
  const states = await t.bed.states(spec);
  if (states.back !== 'Connected') throw trail.violation(`the backend went ${states.back} though the ring was never overrun`);
}

/** Unplugs the hostile disk as libxl does for a domain being destroyed, and waits until the backend let it go. */
export async function unplugHostile(t: Testbed, spec: DeviceSpec): Promise<void> {
  await t.bed.unplug(spec, { force: true, timeoutMs: RESPONSE_TIMEOUT_MS });
  const deadline = Date.now() + RESPONSE_TIMEOUT_MS;
  while (t.back.devices.has(`${spec.frontendDomid}/${spec.devid}`)) {
    if (Date.now() > deadline) throw new FuzzViolation(`the backend of ${spec.devid} did not detach after the unplug`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Nothing was written outside the disk: the file is as long as it was, its tail past the last whole sector as it was. */
export async function imageUntouched(path: string, before: Buffer, trail: Trail): Promise<void> {
  const size = (await stat(path)).size;
  if (size !== before.length) throw trail.violation(`the image grew from ${before.length} to ${size} bytes`);
  const tailStart = Math.floor(before.length / SECTOR_SIZE) * SECTOR_SIZE;
  if (tailStart === before.length) return;
  const file = await open(path, 'r');
  const tail = Buffer.alloc(before.length - tailStart);
  await file.read(tail, 0, tail.length, tailStart);
  await file.close();
  if (!tail.equals(before.subarray(tailStart))) throw trail.violation('the bytes after the last whole sector of the image changed');
}

/** A well-behaved guest's blkfront, on a fresh disk from the same driver domain, reads back what it writes. */
export async function goodFrontendServed(t: Testbed, vdev: string, rng: Prng, trail: Trail): Promise<void> {
  const spec = diskDevice({ frontendDomid: t.good.domid, backendDomid: t.driver.domid, vdev, target: `memory:${GOOD_DISK_BYTES}` });
  await t.bed.plug(spec);
  try {
    await t.bed.waitStates(spec, Connected, Connected, RESPONSE_TIMEOUT_MS);
    const disk = t.front.devices.get(String(spec.devid))!.disk;
    await disk.whenConnected();
    const sectors = GOOD_DISK_BYTES / SECTOR_SIZE;
    for (const length of [rng.int(1, 8), rng.int(9, 256)]) {
      const data = rng.bytes(length * SECTOR_SIZE);
      const sector = rng.int(0, sectors - length);
      await disk.write(sector, data);
      const back = await disk.read(sector, length);
      if (!Buffer.from(back).equals(data)) throw trail.violation(`a well-behaved guest read back other data than it wrote (${length} sectors at ${sector})`);
    }
  } catch (err) {
    await t.bed.unplug(spec, { force: true, timeoutMs: RESPONSE_TIMEOUT_MS }).catch(() => {});
    throw err;
  }
  const result = await t.bed.unplug(spec, { timeoutMs: RESPONSE_TIMEOUT_MS });
  if (!result.clean || (result.backendState !== Closed && result.backendState !== XenbusState.Unknown)) {
    throw trail.violation(`the well-behaved guest's disk did not close cleanly on unplug (backend state ${result.backendState})`);
  }
}
