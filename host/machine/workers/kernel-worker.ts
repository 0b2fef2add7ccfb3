/** A domain's kernel in its own worker. */
import { runRole } from '../../../shared/mesh/worker-runtime.js';
import { startKernel, type KernelRoleConfig } from '../kernel.js';

runRole<KernelRoleConfig>(startKernel);
