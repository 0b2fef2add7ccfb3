/** The back bus of a domain on real Xen, with its backend drivers, in its own worker. */
import { runRole } from '../../../shared/mesh/worker-runtime.js';
import { startBackendRole, type BackendRoleConfig } from '../backend-role.js';

runRole<BackendRoleConfig>(startBackendRole);
