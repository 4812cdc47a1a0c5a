/**
 * The kernel: owns physical memory's page metadata, the IOMMU, the process table and the
 * files. Fork and exit live here because they cross processes; the PASID binding lives
 * here because it joins an address space (src/kernel) to the IOMMU (src/hw) through an
 * mmu notifier, as iommu_sva_bind_device does (drivers/iommu/iommu-sva.c).
 */
import { Errno, err, ok, type Result } from '../hw/errno.ts'
import { Iommu } from '../hw/iommu.ts'
import { DEFAULT_PHYS_MEM_BYTES, PhysMem } from '../hw/phys-mem.ts'
import { File, FileKind } from './file.ts'
import { DEFAULT_MM_LIMITS, Mm, type MmLimits } from './mm.ts'
import type { MmuNotifier } from './mmu-notifier.ts'
import { PageMeta } from './page-meta.ts'
import { Process } from './process.ts'

export interface KernelConfig {
  physMemBytes?: number
  mmLimits?: MmLimits
  /** the largest a file (or a shared anonymous mapping) may grow */
  maxFileBytes?: number
}

export class Kernel {
  readonly mem: PhysMem
  readonly meta: PageMeta
  readonly iommu: Iommu
  readonly processes = new Map<number, Process>()
  readonly files = new Map<string, { file: File, tenant: string }>()
  readonly mmLimits: MmLimits
  readonly maxFileBytes: number
  readonly #pasidNotifiers = new Map<number, MmuNotifier>()
  #nextPid = 1
  #nextFile = 1

  constructor (config: KernelConfig = {}) {
    this.mem = new PhysMem(config.physMemBytes ?? DEFAULT_PHYS_MEM_BYTES)
    this.meta = new PageMeta(this.mem.nframes)
    this.iommu = new Iommu(this.mem)
    this.mmLimits = config.mmLimits ?? DEFAULT_MM_LIMITS
    this.maxFileBytes = config.maxFileBytes ?? 256 * 2 ** 20
  }

  #newMm (): Mm {
    const mm = new Mm(this.mem, this.meta, this.mmLimits)
    mm.shmemFactory = (length) => {
      const shmem = new File(`shmem-${this.#nextFile++}`, FileKind.SHMEM, length, length, this.mem, this.meta)
      // No name refers to it: its pages go with its last mapping.
      shmem.unlinked = true
      return shmem
    }
    return mm
  }

  createProcess (tenant: string): Process {
    const p = new Process(this.#nextPid++, tenant, this.#newMm())
    this.processes.set(p.pid, p)
    return p
  }

  getProcess (pid: number): Process | undefined {
    const p = this.processes.get(pid)
    return p?.state === 'running' ? p : undefined
  }

  /** fork: a copy-on-write child with no PASID, queue or doorbell (DESIGN.md invariant 3). */
  fork (parent: Process): Result<Process> {
    if (parent.state !== 'running') return err(Errno.ESRCH, `process ${parent.pid} has exited`)
    const mm = this.#newMm()
    const r = parent.mm.forkInto(mm)
    if (!r.ok) return r
    const child = new Process(this.#nextPid++, parent.tenant, mm, parent.pid)
    this.processes.set(child.pid, child)
    return ok(child)
  }

  /** Releases queues (exit hooks), then the PASID, then the address space. */
  exit (p: Process): void {
    if (p.state !== 'running') return
    p.state = 'exited'
    for (const hook of p.exitHooks.splice(0)) hook(p)
    this.unbindPasid(p)
    p.mm.exit()
    this.processes.delete(p.pid)
  }

  /** Binds the process's address space to the IOMMU: the PASID; idempotent. */
  bindPasid (p: Process): Result<number> {
    if (p.state !== 'running') return err(Errno.ESRCH, `process ${p.pid} has exited`)
    if (p.pasid !== undefined) return ok(p.pasid)
    const r = this.iommu.bindPasid(p.mm)
    if (!r.ok) return r
    const pasid = r.value
    const notifier: MmuNotifier = {
      invalidateRangeStart: (range) => this.iommu.invalidate(pasid, range.start, range.end),
      release: () => this.iommu.unbindPasid(pasid)
    }
    p.mm.notifiers.register(notifier)
    this.#pasidNotifiers.set(pasid, notifier)
    p.pasid = pasid
    return ok(pasid)
  }

  unbindPasid (p: Process): void {
    const pasid = p.pasid
    if (pasid === undefined) return
    const n = this.#pasidNotifiers.get(pasid)
    if (n !== undefined) p.mm.notifiers.unregister(n)
    this.#pasidNotifiers.delete(pasid)
    this.iommu.unbindPasid(pasid)
    p.pasid = undefined
  }

  createFile (tenant: string, size = 0): Result<File> {
    if (!Number.isSafeInteger(size) || size < 0) return err(Errno.EINVAL, 'size must be a non-negative integer')
    if (size > this.maxFileBytes) return err(Errno.EFBIG, `files are limited to ${this.maxFileBytes} bytes`)
    const file = new File(`file-${this.#nextFile++}`, FileKind.REGULAR, size, this.maxFileBytes, this.mem, this.meta)
    this.files.set(file.id, { file, tenant })
    return ok(file)
  }

  /** Unlinks a file; its page cache goes once nothing maps it. */
  deleteFile (id: string): void {
    const entry = this.files.get(id)
    if (entry === undefined) return
    this.files.delete(id)
    entry.file.unlinked = true
    if (entry.file.mapCount === 0) entry.file.dropCache()
  }
}
