import { XsError } from '../../shared/errors.js';
import { createLogger } from '../../shared/log.js';
import { quotaValueProblem, type QuotaName, type QuotaSet } from '../store/quota.js';

const log = createLogger('xenstored');

/**
 * Sets a quota at run time, for SET_QUOTA and `xenstore-control quota set`.
 * A value that would leave domains unable to use the store is refused with
 * EINVAL and the quota keeps its value; since an error reply carries only the
 * errno, the reason goes to the daemon's log. `request` says what asked, for
 * that log line.
 */
export function setQuota(quotas: QuotaSet, name: QuotaName, value: number, request: string): void {
  if (name.kind === 'soft') {
    quotas.soft[name.item] = value;
    return;
  }
  const problem = quotaValueProblem(name.item, value);
  if (problem) {
    log.warn(`${request} refused: ${problem}`);
    throw new XsError('EINVAL', problem);
  }
  quotas.hard[name.item] = value;
}
