/**
 * The CPUs a cgroup quota leaves this process: what `docker run --cpus`, a compose
 * file's `cpus:` or a Kubernetes CPU limit sets. `os.availableParallelism()` counts the
 * CPUs the process may run on, not how much of them it may use, so the engines' polling
 * rules (README, "Engine polling") cannot see a quota on their own.
 *
 * cgroup v2: `cpu.max` ("max 100000", or "<quota> <period>" in microseconds) in the
 * process's cgroup and each ancestor up to the mount; v1: `cpu.cfs_quota_us` (-1 for
 * none) and `cpu.cfs_period_us` in the cpu controller's hierarchy. The tightest level
 * wins. Inside a container the process's cgroup is usually the mount's root.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

export interface CgroupPaths {
  /** where the cgroup filesystem is mounted (default /sys/fs/cgroup) */
  root?: string
  /** the process's cgroup membership (default /proc/self/cgroup) */
  self?: string
}

function read (path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** `dir` and each of its ancestors down to `root`, innermost first */
function upTo (root: string, rel: string): string[] {
  const parts = rel.split('/').filter(p => p !== '' && p !== '.' && p !== '..')
  const dirs: string[] = []
  for (let n = parts.length; n >= 0; n--) dirs.push(join(root, ...parts.slice(0, n)))
  return dirs
}

/** The CPUs the quota allows (1.5 for `--cpus 1.5`), or undefined when there is none or no cgroup to read. */
export function cpuLimit (paths: CgroupPaths = {}): number | undefined {
  const root = paths.root ?? '/sys/fs/cgroup'
  const self = read(paths.self ?? '/proc/self/cgroup')
  if (self === undefined) return undefined
  let limit: number | undefined
  const tighter = (quota: number, period: number): void => {
    if (!(quota > 0 && period > 0)) return
    const cpus = quota / period
    if (limit === undefined || cpus < limit) limit = cpus
  }
  for (const line of self.split('\n')) {
    // "hierarchy-id:controllers:path"; the path may itself hold colons
    const first = line.indexOf(':')
    const second = line.indexOf(':', first + 1)
    if (first < 0 || second < 0) continue
    const controllers = line.slice(first + 1, second)
    const rel = line.slice(second + 1)
    if (line.slice(0, first) === '0' && controllers === '') {
      for (const dir of upTo(root, rel)) {
        const max = read(join(dir, 'cpu.max'))?.split(/\s+/)
        if (max !== undefined && max[0] !== 'max') tighter(Number(max[0]), Number(max[1] ?? 100000))
      }
    } else if (controllers.split(',').includes('cpu')) {
      for (const mount of [join(root, controllers), join(root, 'cpu')]) {
        for (const dir of upTo(mount, rel)) tighter(Number(read(join(dir, 'cpu.cfs_quota_us'))), Number(read(join(dir, 'cpu.cfs_period_us'))))
      }
    }
  }
  return limit
}
