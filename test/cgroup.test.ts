import t from 'tap'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { cpuLimit } from '../src/cgroup.ts'
import { tempStateDir } from './helper.ts'

/** A fake cgroup mount and /proc/self/cgroup: `files` by path under the mount. */
function fake (t: Parameters<typeof tempStateDir>[0], self: string, files: Record<string, string>): { root: string, self: string } {
  const dir = tempStateDir(t)
  const root = join(dir, 'cgroup')
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true })
    writeFileSync(join(root, path), text)
  }
  writeFileSync(join(dir, 'self'), self)
  return { root, self: join(dir, 'self') }
}

t.test('cgroup v2: the tightest cpu.max from the process\'s cgroup up to the mount', async t => {
  t.equal(cpuLimit(fake(t, '0::/app.slice/svc\n', { 'app.slice/svc/cpu.max': 'max 100000\n' })), undefined, 'max: no quota')
  t.equal(cpuLimit(fake(t, '0::/svc\n', { 'svc/cpu.max': '150000 100000\n' })), 1.5, '--cpus 1.5')
  t.equal(cpuLimit(fake(t, '0::/a/b\n', { 'a/b/cpu.max': '300000 100000', 'a/cpu.max': '50000 100000' })), 0.5, 'a parent\'s quota binds the child')
  // inside a container without a cgroup namespace: the host's path is not under the mount,
  // whose root is the container's own cgroup
  t.equal(cpuLimit(fake(t, '0::/system.slice/docker-abc.scope\n', { 'cpu.max': '100000 100000' })), 1, 'the mount\'s root')
})

t.test('cgroup v1: cpu.cfs_quota_us over cpu.cfs_period_us in the cpu hierarchy', async t => {
  const self = '12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n'
  t.equal(cpuLimit(fake(t, self, { 'cpu,cpuacct/docker/abc/cpu.cfs_quota_us': '-1', 'cpu,cpuacct/docker/abc/cpu.cfs_period_us': '100000' })), undefined, '-1: no quota')
  t.equal(cpuLimit(fake(t, self, { 'cpu,cpuacct/docker/abc/cpu.cfs_quota_us': '250000', 'cpu,cpuacct/docker/abc/cpu.cfs_period_us': '100000' })), 2.5)
  t.equal(cpuLimit(fake(t, self, { 'cpu/cpu.cfs_quota_us': '75000', 'cpu/cpu.cfs_period_us': '100000' })), 0.75, 'the container\'s own root, under the cpu link')
})

t.test('no cgroup to read: no quota', async t => {
  t.equal(cpuLimit({ root: '/nonexistent', self: '/nonexistent/self' }), undefined)
  t.equal(cpuLimit(fake(t, 'garbage\n', {})), undefined)
})
