import { PalisadeError } from '../../errors/index.js';
import { describeFailures, probeCgroups } from './detect.js';
import type { CgroupManager, CgroupManagerOptions } from './types.js';
import { V1CgroupManager } from './v1.js';
import { V2CgroupManager } from './v2.js';
import { validatePrefix } from './validate.js';

/**
 * Fails closed: if any controller or the kill mechanism is missing, this throws
 * REQUIREMENT_MISSING naming each missing piece and its fix, instead of returning a manager
 * that would create unlimited sandboxes.
 */
export function createCgroupManager(options: CgroupManagerOptions): CgroupManager {
  if (typeof options !== 'object' || options === null) {
    throw new PalisadeError('INVALID_ARGUMENT', 'createCgroupManager needs { prefix, root? }');
  }
  const prefix = validatePrefix(options.prefix);
  if (options.root !== undefined && (typeof options.root !== 'string' || options.root === '')) {
    throw new PalisadeError('INVALID_ARGUMENT', 'cgroup root must be a non-empty path');
  }
  const probe = probeCgroups(options.root);
  if (!probe.support.usable || probe.layout === undefined) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `cgroups cannot enforce sandbox limits on this host: ${describeFailures(probe.support)}`,
      {
        version: probe.support.version,
        failed: probe.support.checks.filter((c) => !c.ok).map((c) => c.name),
      },
    );
  }
  return probe.layout.version === 'v1'
    ? new V1CgroupManager(probe.layout.v1, prefix)
    : new V2CgroupManager(probe.layout.v2, prefix);
}
