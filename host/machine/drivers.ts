import type { XenbusDriver } from '../../xenbus/driver.js';

/**
 * The drivers a domain's kernel can load, by the name its configuration
 * gives them: a driver domain loads backends, a guest frontends. Names
 * travel in worker configurations; the drivers themselves are made in the
 * worker that runs them, and their modules are loaded only there: a guest
 * that never serves a disk does not carry blkback in its heap (a couple of
 * MiB in each of hundreds of workers).
 */
const FRONTEND_DRIVERS: Record<string, () => Promise<XenbusDriver>> = {
  echo: async () => new (await import('../../echo/front.js')).EchoFrontDriver(),
  vbd: async () => new (await import('../../blkfront/driver.js')).BlkfrontDriver(),
};

const BACKEND_DRIVERS: Record<string, () => Promise<XenbusDriver>> = {
  echo: async () => new (await import('../../echo/back.js')).EchoBackDriver(),
  vbd: async () => new (await import('../../blkback/driver.js')).BlkbackDriver(),
};

export function frontendDriver(name: string): Promise<XenbusDriver> {
  const make = FRONTEND_DRIVERS[name];
  if (!make) throw new Error(`no frontend driver '${name}' (known: ${Object.keys(FRONTEND_DRIVERS).join(', ')})`);
  return make();
}

export function backendDriver(name: string): Promise<XenbusDriver> {
  const make = BACKEND_DRIVERS[name];
  if (!make) throw new Error(`no backend driver '${name}' (known: ${Object.keys(BACKEND_DRIVERS).join(', ')})`);
  return make();
}
