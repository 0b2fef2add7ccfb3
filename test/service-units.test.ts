/**
 * The systemd units in systemd/: systemd-analyze verify finds nothing
 * wrong with them (where systemd-analyze is installed), and each is a
 * Type=notify service running xenmesh in the foreground.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UNITS = fileURLToPath(new URL('../../systemd/', import.meta.url));
const NAMES = ['xenmesh-xenstored.service', 'xenmesh-backend.service'];
const hasAnalyze = spawnSync('systemd-analyze', ['--version'], { stdio: 'ignore' }).status === 0;

/** What systemd-analyze verify says of a unit file, run from a copy under its own name. */
function verify(text: string, name: string): { status: number | null; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'xenmesh-units-'));
  try {
    writeFileSync(join(dir, name), text);
    const result = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, name)], { encoding: 'utf8' });
    // Problems it only warns of (an unknown key, a bad value) exit 0 too: what it says is the verdict.
    return { status: result.status, output: `${result.stdout}${result.stderr}`.trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const name of NAMES) {
  t.test(name, async (t) => {
    const text = readFileSync(join(UNITS, name), 'utf8');
    t.match(text, /^Type=notify$/m, 'systemd waits for READY=1');
    t.match(text, /^ExecStart=\/usr\/bin\/node \/opt\/xenmesh\/dist\/bin\/xenmesh\.js (xenstored|backend) /m, 'it runs xenmesh in the foreground');
    // On Xen both reach the hypervisor through its devices: a unit that hid /dev would start and serve nothing.
    t.notMatch(text, /^PrivateDevices=yes$/m, 'the Xen devices are not hidden');
    for (const device of name === 'xenmesh-xenstored.service' ? ['evtchn', 'gntdev', 'privcmd'] : ['evtchn', 'gntdev', 'gntalloc']) {
      t.match(text, new RegExp(`^DeviceAllow=/dev/xen/${device} rw$`, 'm'), `/dev/xen/${device} is allowed`);
    }
    if (!hasAnalyze) {
      t.comment('systemd-analyze is not installed: the units are not verified');
      return;
    }
    const result = verify(text, name);
    t.equal(result.output, '', 'systemd-analyze verify finds nothing wrong');
    t.equal(result.status, 0);
    const broken = verify(text.replace(/^Type=notify$/m, 'Type=notifyy'), name);
    t.match(broken.output, /Failed to parse service type.*notifyy/, 'and it would say if something were (an unknown Type=)');
  });
}
