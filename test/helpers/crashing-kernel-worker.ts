/**
 * The real kernel role, plus a way for a test to make it crash: writing
 * `now` to the domain's `data/crash` node throws an exception nobody
 * catches, as a kernel bug would. Only changes after the watch's first
 * event count, so that the restarted kernel does not crash again at once.
 */
import { runRole } from '../../shared/mesh/worker-runtime.js';
import { startKernel, type KernelRoleConfig } from '../../host/machine/kernel.js';

runRole<KernelRoleConfig>(async (ctx) => {
  const kernel = await startKernel(ctx);
  const watcher = await kernel.xenstore.watch('data/crash');
  void (async () => {
    let first = true;
    for await (const _event of watcher) {
      if (first) {
        first = false;
        continue;
      }
      if ((await kernel.xenstore.tryRead('data/crash')) === 'now') throw new Error('the test asked this kernel to crash');
    }
  })();
  return kernel;
});
