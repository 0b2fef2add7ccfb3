/**
 * The real kernel role, except that it never finishes stopping, as a
 * kernel stuck in a driver would not: only terminating its worker ends it.
 */
import { runRole } from '../../shared/mesh/worker-runtime.js';
import { startKernel, type KernelRoleConfig } from '../../host/machine/kernel.js';

runRole<KernelRoleConfig>(async (ctx) => {
  const kernel = await startKernel(ctx);
  return { ...kernel, stop: () => new Promise<void>(() => {}) };
});
