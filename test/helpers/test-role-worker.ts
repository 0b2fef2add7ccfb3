/** A role for testing the supervisor: it behaves as its configuration says. */
import { runRole } from '../../shared/mesh/worker-runtime.js';

interface TestRoleConfig {
  behaviour: 'ok' | 'crash-after-ready' | 'fail-start' | 'exit-after-ready' | 'slow-stop';
}

runRole<TestRoleConfig>(async (ctx) => {
  if (ctx.config.behaviour === 'fail-start') throw new Error('cannot start');
  ctx.log.info('hello from the test role');
  ctx.stats({ served: 42, mood: 'fine' });
  if (ctx.config.behaviour === 'crash-after-ready') setTimeout(() => Promise.reject(new Error('boom')), 20);
  if (ctx.config.behaviour === 'exit-after-ready') setTimeout(() => process.exit(3), 20);
  return {
    info: { started: true },
    health: () => ({ served: 42 }),
    // `echo` answers with what it was asked, `slow` never answers, anything else is unknown.
    query: (topic: string) => {
      if (topic === 'echo') return { topic, list: [1, 2, 3] };
      if (topic === 'slow') return new Promise(() => {});
      throw new Error(`no query '${topic}'`);
    },
    stop: () => new Promise((resolve) => setTimeout(resolve, ctx.config.behaviour === 'slow-stop' ? 60_000 : 1)),
  };
});
