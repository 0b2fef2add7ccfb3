/**
 * The --metrics option of `xenmesh up` and `xenmesh backend`: its usage and
 * its address. The endpoint itself (metrics.ts, with prom-client) is loaded
 * only when the option is given.
 */

export const METRICS_OPTION_USAGE = `  --metrics ADDR  serve Prometheus metrics at http://ADDR/metrics: PORT (on
                  127.0.0.1), HOST:PORT or [IPv6]:PORT; port 0 takes a free
                  one, and the URL is logged`;

/** Where an endpoint given only a port listens: this machine only, as a node exporter is commonly kept. */
export const DEFAULT_METRICS_HOST = '127.0.0.1';

export class MetricsAddressError extends Error {}

/** The address of `--metrics`: `PORT`, `HOST:PORT` or `[v6]:PORT`. */
export function parseMetricsAddress(text: string): { host: string; port: number } {
  const refuse = (why: string): never => {
    throw new MetricsAddressError(`--metrics takes PORT, HOST:PORT or [IPv6]:PORT, not '${text}': ${why}`);
  };
  let host = DEFAULT_METRICS_HOST;
  let portText = text;
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(text);
  if (bracketed) {
    host = bracketed[1]!;
    portText = bracketed[2]!;
    if (!host.includes(':')) refuse('only an IPv6 address goes in brackets');
  } else if (text.includes(':')) {
    const colon = text.lastIndexOf(':');
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) refuse('an IPv6 address goes in brackets');
  }
  if (host === '') refuse('the host is empty');
  if (!/^\d{1,5}$/.test(portText)) refuse('the port is not a number');
  const port = Number(portText);
  if (port > 65535) refuse('the port is not between 0 and 65535');
  return { host, port };
}
