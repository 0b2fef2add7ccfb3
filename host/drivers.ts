import { BlkbackDriver } from '../blkback/driver.js';
import { BlkfrontDriver } from '../blkfront/driver.js';
import type { XenbusDriver } from '../xenbus/driver.js';
import { EchoBackDriver } from '../echo/back.js';
import { EchoFrontDriver } from '../echo/front.js';

/**
 * The drivers a domain's kernel can load, by the name its configuration
 * gives them: a driver domain loads backends, a guest frontends. Names
 * travel in worker configurations; the drivers themselves are made in the
 * worker that runs them.
 */
const FRONTEND_DRIVERS: Record<string, () => XenbusDriver> = {
  echo: () => new EchoFrontDriver(),
  vbd: () => new BlkfrontDriver(),
};

const BACKEND_DRIVERS: Record<string, () => XenbusDriver> = {
  echo: () => new EchoBackDriver(),
  vbd: () => new BlkbackDriver(),
};

export function frontendDriver(name: string): XenbusDriver {
  const make = FRONTEND_DRIVERS[name];
  if (!make) throw new Error(`no frontend driver '${name}' (known: ${Object.keys(FRONTEND_DRIVERS).join(', ')})`);
  return make();
}

export function backendDriver(name: string): XenbusDriver {
  const make = BACKEND_DRIVERS[name];
  if (!make) throw new Error(`no backend driver '${name}' (known: ${Object.keys(BACKEND_DRIVERS).join(', ')})`);
  return make();
}
