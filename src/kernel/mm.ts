/**
 * An address space (struct mm_struct): the vmas, a page table filled on demand, the mmu
 * notifier chain, and the operations of mm/mmap.c (mmap, munmap), mm/mprotect.c,
 * mm/memory.c (the fault handler, copy-on-write), mm/gup.c (pin for DMA) and
 * kernel/fork.c's dup_mmap. It is also what the IOMMU's PASID table points to: walk,
 * page requests and the fault queue (IommuAddressSpace).
 */
import { Errno, err, ok, type Result } from '../hw/errno.ts'
import { PAGE_SIZE, type PhysMem } from '../hw/phys-mem.ts'
import { copyIn, copyOut } from '../hw/shared-copy.ts'
import { TASK_SIZE, Xlate, type IommuAddressSpace, type IommuFault } from '../hw/iommu.ts'
import { FileKind, type File, type FileMapper } from './file.ts'
import { MmuNotifierChain, NotifyEvent } from './mmu-notifier.ts'
import type { PageMeta } from './page-meta.ts'
import { PageTable } from './page-table.ts'
import { Prot, Vma } from './vma.ts'

/** PTE bits below the frame number: pte = frame * 8 + bits. */
const PTE_READ = 1
const PTE_WRITE = 2
/** the frame is a private anonymous page (else a page-cache page) */
const PTE_ANON = 4
const PTE_BITS = 8

/** Kernel-chosen addresses grow down from here, as with the legacy x86-64 mmap_base. */
export const MMAP_BASE = 0x7f00_0000_0000
/** vm.mmap_min_addr */
export const MMAP_MIN_ADDR = 0x10000
const FAULT_QUEUE_LENGTH = 256

export interface MmLimits {
  /** vm.max_map_count */
  maxMappings: number
  /** RLIMIT_AS, bytes */
  maxAddressSpace: number
}

export const DEFAULT_MM_LIMITS: MmLimits = { maxMappings: 4096, maxAddressSpace: 64 * 2 ** 30 }

export interface MmapRequest {
  length: number
  prot: number
  shared: boolean
  /** a file mapping; without one, anonymous memory */
  file?: File
  /** byte offset in the file, page aligned */
  offset?: number
  /** MADV_DONTFORK / VM_DONTCOPY: absent in a fork child */
  dontcopy?: boolean
  /** honoured when the range is free */
  addr?: number
}

export interface MappingInfo {
  start: number
  end: number
  prot: number
  shared: boolean
  file?: string
  offset: number
  dontcopy: boolean
  resident: number
}

/** A get_user_pages pin: frames held for DMA until unpin. */
export class Pin {
  #released = false
  readonly mm: Mm
  readonly va: number
  readonly length: number
  readonly write: boolean
  readonly frames: number[]
  /** for write pins of file pages: (file, pgoff) to dirty at unpin, as unpin_user_pages_dirty_lock does */
  readonly filePages: Array<[File, number]>

  constructor (mm: Mm, va: number, length: number, write: boolean, frames: number[], filePages: Array<[File, number]>) {
    this.mm = mm
    this.va = va
    this.length = length
    this.write = write
    this.frames = frames
    this.filePages = filePages
  }

  get released (): boolean { return this.#released }

  unpin (): void {
    if (this.#released) return
    this.#released = true
    for (const [file, pgoff] of this.filePages) file.markDirty(pgoff)
    for (const f of this.frames) {
      this.mm.meta.unpin(f)
      this.mm.mem.put(f)
    }
  }
}

function pageFloor (a: number): number { return a - (a % PAGE_SIZE) }
function pageCeil (a: number): number { return Math.ceil(a / PAGE_SIZE) * PAGE_SIZE }

export class Mm implements IommuAddressSpace, FileMapper {
  readonly vmas: Vma[] = []
  /** virtual page number to pte */
  readonly pt = new PageTable()
  readonly notifiers = new MmuNotifierChain()
  readonly faultQueue: IommuFault[] = []
  faultsTotal = 0
  totalVm = 0
  exited = false

  readonly mem: PhysMem
  readonly meta: PageMeta
  readonly limits: MmLimits

  constructor (mem: PhysMem, meta: PageMeta, limits: MmLimits = DEFAULT_MM_LIMITS) {
    this.mem = mem
    this.meta = meta
    this.limits = limits
  }

  get resident (): number { return this.pt.size }

  findVma (va: number): Vma | undefined {
    const v = this.vmas
    let lo = 0
    let hi = v.length - 1
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      const m = v[mid]
      if (va < m.start) hi = mid - 1
      else if (va >= m.end) lo = mid + 1
      else return m
    }
    return undefined
  }

  #indexOf (start: number): number {
    let lo = 0
    let hi = this.vmas.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (this.vmas[mid].start < start) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  #insert (vma: Vma): void {
    this.vmas.splice(this.#indexOf(vma.start), 0, vma)
    vma.file?.addMapper(this)
  }

  #isFree (start: number, end: number): boolean {
    const i = this.#indexOf(start)
    if (i > 0 && this.vmas[i - 1].end > start) return false
    return i >= this.vmas.length || this.vmas[i].start >= end
  }

  #findFreeRange (length: number): number | undefined {
    let top = MMAP_BASE
    for (let i = this.vmas.length - 1; i >= 0; i--) {
      const v = this.vmas[i]
      if (v.start >= top) continue
      if (v.end <= top && top - v.end >= length) return top - length
      top = v.start
    }
    return top - length >= MMAP_MIN_ADDR ? top - length : undefined
  }

  mmap (req: MmapRequest): Result<number> {
    if (this.exited) return err(Errno.ESRCH, 'process has exited')
    if (!Number.isSafeInteger(req.length) || req.length <= 0) return err(Errno.EINVAL, 'length must be a positive integer')
    if ((req.prot & ~(Prot.READ | Prot.WRITE)) !== 0) return err(Errno.EINVAL, 'unknown protection bits')
    const length = pageCeil(req.length)
    const offset = req.offset ?? 0
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) return err(Errno.EINVAL, 'offset must be a page-aligned byte count')
    if (req.file === undefined && offset !== 0) return err(Errno.EINVAL, 'offset without a file')
    if (this.vmas.length + 1 > this.limits.maxMappings) return err(Errno.ENOMEM, `more than ${this.limits.maxMappings} mappings`)
    if (this.totalVm + length > this.limits.maxAddressSpace) return err(Errno.ENOMEM, `address space would exceed ${this.limits.maxAddressSpace} bytes`)
    let addr: number | undefined
    const hint = req.addr
    if (hint !== undefined && hint % PAGE_SIZE === 0 && hint >= MMAP_MIN_ADDR && hint + length <= TASK_SIZE && this.#isFree(hint, hint + length)) addr = hint
    addr ??= this.#findFreeRange(length)
    if (addr === undefined) return err(Errno.ENOMEM, 'no free range of that size')
    let file = req.file
    let userFile = true
    if (file === undefined && req.shared) {
      // Shared anonymous memory is shmem, so that fork children share the very pages.
      file = this.shmemFactory(length)
      userFile = false
    }
    this.#insert(new Vma(addr, addr + length, req.prot, req.shared, file, offset / PAGE_SIZE, req.dontcopy === true, userFile))
    this.totalVm += length
    return ok(addr)
  }

  /** Set by the kernel: makes the shmem file behind a shared anonymous mapping. */
  shmemFactory: (length: number) => File = () => { throw new Error('no shmem factory') }

  /** Splits the vma containing `addr` so a vma boundary falls there (__split_vma). */
  #splitAt (addr: number): void {
    const v = this.findVma(addr)
    if (v === undefined || v.start === addr) return
    const tail = v.slice(addr, v.end)
    v.end = addr
    this.vmas.splice(this.#indexOf(addr), 0, tail)
    tail.file?.addMapper(this)
  }

  #splitsNeeded (start: number, end: number): number {
    let n = 0
    const a = this.findVma(start)
    if (a !== undefined && a.start !== start) n++
    const b = this.findVma(end)
    if (b !== undefined && b.start !== end) n++
    return n
  }

  #vmasIn (start: number, end: number): Vma[] {
    const out: Vma[] = []
    let i = this.#indexOf(start)
    if (i > 0 && this.vmas[i - 1].end > start) i--
    for (; i < this.vmas.length && this.vmas[i].start < end; i++) out.push(this.vmas[i])
    return out
  }

  #checkRange (addr: number, length: number): Result<number> {
    if (!Number.isSafeInteger(addr) || addr % PAGE_SIZE !== 0) return err(Errno.EINVAL, 'address must be page aligned')
    if (!Number.isSafeInteger(length) || length <= 0) return err(Errno.EINVAL, 'length must be a positive integer')
    const end = addr + pageCeil(length)
    if (end > TASK_SIZE) return err(Errno.EINVAL, 'range beyond the user address space')
    return ok(end)
  }

  /** Puts every pte of [start, end); the caller runs the notifiers around it. */
  #zap (start: number, end: number): void {
    const first = start / PAGE_SIZE
    const last = end / PAGE_SIZE
    const drop = (vpn: number, pte: number): void => {
      const frame = Math.floor(pte / PTE_BITS)
      this.pt.delete(vpn)
      this.meta.mapcount[frame]--
      this.mem.put(frame)
    }
    if (last - first <= this.pt.size) {
      for (let vpn = first; vpn < last; vpn++) {
        const pte = this.pt.get(vpn)
        if (pte !== undefined) drop(vpn, pte)
      }
    } else {
      for (const [vpn, pte] of this.pt) if (vpn >= first && vpn < last) drop(vpn, pte)
    }
  }

  munmap (addr: number, length: number): Result<number> {
    const r = this.#checkRange(addr, length)
    if (!r.ok) return r
    const end = r.value
    if (this.vmas.length + this.#splitsNeeded(addr, end) - this.#vmasIn(addr, end).length > this.limits.maxMappings) {
      return err(Errno.ENOMEM, `splitting would exceed ${this.limits.maxMappings} mappings`)
    }
    this.#splitAt(addr)
    this.#splitAt(end)
    const gone = this.#vmasIn(addr, end)
    if (gone.length === 0) return ok(0)
    let bytes = 0
    this.notifiers.invalidate(addr, end, NotifyEvent.UNMAP, () => {
      for (const v of gone) {
        this.#zap(v.start, v.end)
        bytes += v.length
      }
      this.vmas.splice(this.#indexOf(gone[0].start), gone.length)
    })
    this.totalVm -= bytes
    for (const v of gone) v.file?.removeMapper(this)
    return ok(bytes)
  }

  /** Whether mappings cover every byte of [start, end), with no hole. */
  covers (start: number, end: number): boolean {
    let cursor = start
    for (const v of this.#vmasIn(start, end)) {
      if (v.start > cursor) break
      cursor = v.end
    }
    return cursor >= end && this.findVma(start) !== undefined
  }

  mprotect (addr: number, length: number, prot: number): Result<void> {
    const r = this.#checkRange(addr, length)
    if (!r.ok) return r
    if ((prot & ~(Prot.READ | Prot.WRITE)) !== 0) return err(Errno.EINVAL, 'unknown protection bits')
    const end = r.value
    // Linux answers ENOMEM when part of the range is not mapped, and changes nothing.
    if (!this.covers(addr, end)) return err(Errno.ENOMEM, 'range is not fully mapped')
    if (this.vmas.length + this.#splitsNeeded(addr, end) > this.limits.maxMappings) {
      return err(Errno.ENOMEM, `splitting would exceed ${this.limits.maxMappings} mappings`)
    }
    this.#splitAt(addr)
    this.#splitAt(end)
    for (const v of this.#vmasIn(addr, end)) {
      const removed = v.prot & ~prot
      if (removed === 0) {
        v.prot = prot
        continue
      }
      // Taking a right away: devices may hold it in their IOTLBs.
      const clear = (removed & Prot.READ) !== 0 ? PTE_READ | PTE_WRITE : PTE_WRITE
      this.notifiers.invalidate(v.start, v.end, NotifyEvent.PROTECTION, () => {
        v.prot = prot
        this.#clearBits(v.start, v.end, clear)
      })
    }
    return ok(undefined)
  }

  #clearBits (start: number, end: number, bits: number): void {
    const first = start / PAGE_SIZE
    const last = end / PAGE_SIZE
    if (last - first <= this.pt.size) {
      for (let vpn = first; vpn < last; vpn++) {
        const pte = this.pt.get(vpn)
        if (pte !== undefined && (pte & bits) !== 0) this.pt.set(vpn, pte & ~bits)
      }
    } else {
      for (const [vpn, pte] of this.pt) {
        if (vpn >= first && vpn < last && (pte & bits) !== 0) this.pt.set(vpn, pte & ~bits)
      }
    }
  }

  /**
   * handle_mm_fault: makes va's page present with the access, or answers EFAULT.
   * `unshare` breaks copy-on-write sharing even for a read (FAULT_FLAG_UNSHARE, used by
   * pins so a pinned page is never one the other side of a fork can keep).
   */
  handleFault (va: number, write: boolean, unshare = false): Result<number> {
    const vma = this.findVma(va)
    if (vma === undefined) return err(Errno.EFAULT, `no mapping at 0x${va.toString(16)}`, { addr: va })
    if ((vma.prot & (write ? Prot.WRITE : Prot.READ)) === 0) {
      return err(Errno.EFAULT, `${write ? 'write to' : 'read of'} 0x${va.toString(16)} not permitted`, { addr: va })
    }
    const vpn = Math.floor(va / PAGE_SIZE)
    const pte = this.pt.get(vpn)
    const readBit = (vma.prot & Prot.READ) !== 0 ? PTE_READ : 0
    if (pte === undefined) {
      if (vma.file !== undefined) {
        const pgoff = vma.filePage(va)
        if (pgoff * PAGE_SIZE >= vma.file.size && vma.file.kind === FileKind.REGULAR) {
          return err(Errno.EFAULT, `0x${va.toString(16)} is past the end of the file`, { addr: va })
        }
        const r = vma.file.getPage(pgoff)
        if (!r.ok) return err(r.errno, r.message, { addr: va })
        if (vma.shared || !(write || unshare)) {
          if (write) vma.file.markDirty(pgoff)
          return ok(this.#map(vpn, r.value, readBit | (write ? PTE_WRITE : 0), true))
        }
        return this.#mapCopy(vpn, r.value, readBit | (write ? PTE_WRITE : 0), va)
      }
      const r = this.mem.alloc()
      if (!r.ok) return err(r.errno, r.message, { addr: va })
      // A fresh zeroed page is exclusive: map it with every right the vma has.
      const bits = PTE_ANON | readBit | ((vma.prot & Prot.WRITE) !== 0 ? PTE_WRITE : 0)
      this.pt.set(vpn, r.value * PTE_BITS + bits)
      this.meta.mapcount[r.value] = 1
      return r
    }
    const frame = Math.floor(pte / PTE_BITS)
    const anon = (pte & PTE_ANON) !== 0
    if (!write && !unshare) {
      if ((pte & PTE_READ) === 0) this.pt.set(vpn, pte | PTE_READ)
      return ok(frame)
    }
    if (write && (pte & PTE_WRITE) !== 0) return ok(frame)
    const wantBits = readBit | (write ? PTE_WRITE : (pte & PTE_WRITE))
    if (anon) {
      if (this.meta.mapcount[frame] === 1) {
        this.pt.set(vpn, frame * PTE_BITS + PTE_ANON + wantBits)
        return ok(frame)
      }
      return this.#mapCopy(vpn, frame, wantBits, va)
    }
    if (vma.shared) {
      if (write) {
        vma.file?.markDirty(vma.filePage(va))
        this.pt.set(vpn, pte | PTE_WRITE | readBit)
      }
      return ok(frame)
    }
    return this.#mapCopy(vpn, frame, wantBits, va)
  }

  #map (vpn: number, frame: number, bits: number, takeRef: boolean): number {
    if (takeRef) this.mem.get(frame)
    this.meta.mapcount[frame]++
    this.pt.set(vpn, frame * PTE_BITS + bits)
    return frame
  }

  /** Copy-on-write: a private anonymous copy of `from` replaces whatever vpn mapped. */
  #mapCopy (vpn: number, from: number, bits: number, va: number): Result<number> {
    const r = this.mem.alloc()
    if (!r.ok) return err(r.errno, r.message, { addr: va })
    const fresh = r.value
    this.mem.copyFrame(fresh, from)
    const start = vpn * PAGE_SIZE
    const old = this.pt.get(vpn)
    const replace = (): void => {
      this.pt.set(vpn, fresh * PTE_BITS + PTE_ANON + bits)
      this.meta.mapcount[fresh] = 1
      if (old !== undefined) {
        const oldFrame = Math.floor(old / PTE_BITS)
        this.meta.mapcount[oldFrame]--
        this.mem.put(oldFrame)
      }
    }
    if (old === undefined) replace()
    else this.notifiers.invalidate(start, start + PAGE_SIZE, NotifyEvent.COW, replace)
    return r
  }

  /** IommuAddressSpace.walk: no side effects; the IOMMU faults on anything not ready. */
  walk (va: number, write: boolean): number {
    const pte = this.pt.get(Math.floor(va / PAGE_SIZE))
    if (pte !== undefined && (pte & (write ? PTE_WRITE : PTE_READ)) !== 0) return Math.floor(pte / PTE_BITS)
    const vma = this.findVma(va)
    if (vma === undefined) return Xlate.NO_MAPPING
    if (pte === undefined) return Xlate.NOT_PRESENT
    return Xlate.PERMISSION
  }

  pageRequest (va: number, write: boolean): boolean {
    return !this.exited && this.handleFault(va, write).ok
  }

  reportFault (fault: IommuFault): void {
    this.faultsTotal++
    if (this.faultQueue.length >= FAULT_QUEUE_LENGTH) this.faultQueue.shift()
    this.faultQueue.push(fault)
  }

  /** The frame for a CPU access, faulting it in; the fast path is one Map lookup. */
  #cpuFrame (va: number, write: boolean): Result<number> {
    const pte = this.pt.get(Math.floor(va / PAGE_SIZE))
    if (pte !== undefined && (pte & (write ? PTE_WRITE : PTE_READ)) !== 0) return ok(Math.floor(pte / PTE_BITS))
    return this.handleFault(va, write)
  }

  /** A CPU load of any length at any address; EFAULT at the first unreadable byte. */
  load (va: number, length: number): Result<Uint8Array> {
    if (!Number.isSafeInteger(va) || va < 0 || !Number.isSafeInteger(length) || length < 0) return err(Errno.EINVAL, 'bad address or length')
    const out = new Uint8Array(length)
    for (let done = 0; done < length;) {
      const addr = va + done
      const r = this.#cpuFrame(addr, false)
      if (!r.ok) return err(r.errno, r.message, { addr, done })
      const off = addr % PAGE_SIZE
      const n = Math.min(PAGE_SIZE - off, length - done)
      const base = r.value * PAGE_SIZE + off
      copyOut(out, done, this.mem.bytes, base, n)
      done += n
    }
    return ok(out)
  }

  /** A CPU store; at a fault answers EFAULT and writes nothing from the faulting byte on. */
  store (va: number, data: Uint8Array): Result<number> {
    if (!Number.isSafeInteger(va) || va < 0) return err(Errno.EINVAL, 'bad address')
    for (let done = 0; done < data.length;) {
      const addr = va + done
      const r = this.#cpuFrame(addr, true)
      if (!r.ok) return err(r.errno, r.message, { addr, done })
      const off = addr % PAGE_SIZE
      const n = Math.min(PAGE_SIZE - off, data.length - done)
      copyIn(this.mem.bytes, r.value * PAGE_SIZE + off, data.subarray(done, done + n))
      done += n
    }
    return ok(data.length)
  }

  /**
   * pin_user_pages: faults in and holds every page of [va, va+length) for DMA. A long-term
   * pin of a file-backed page is refused (the seed's I3: it would escape writeback).
   * All or nothing: on error nothing stays pinned.
   */
  pin (va: number, length: number, write: boolean, longterm: boolean): Result<Pin> {
    if (this.exited) return err(Errno.ESRCH, 'process has exited')
    if (!Number.isSafeInteger(va) || va < 0 || !Number.isSafeInteger(length) || length <= 0) return err(Errno.EINVAL, 'bad address or length')
    const frames: number[] = []
    const filePages: Array<[File, number]> = []
    const undo = (): void => {
      for (const f of frames) {
        this.meta.unpin(f)
        this.mem.put(f)
      }
    }
    for (let page = pageFloor(va); page < va + length; page += PAGE_SIZE) {
      const vma = this.findVma(page)
      if (vma !== undefined && longterm && vma.file?.kind === FileKind.REGULAR) {
        undo()
        return err(Errno.EOPNOTSUPP, 'long-term pins of file-backed pages are refused', { addr: page })
      }
      const r = this.handleFault(page, write, vma !== undefined && !vma.shared)
      if (!r.ok) {
        undo()
        return err(r.errno, r.message, { addr: Math.max(page, va) })
      }
      this.meta.pin(r.value)
      this.mem.get(r.value)
      frames.push(r.value)
      if (write && vma?.shared === true && vma.file?.kind === FileKind.REGULAR) filePages.push([vma.file, vma.filePage(page)])
    }
    return ok(new Pin(this, va, length, write, frames, filePages))
  }

  /**
   * dup_mmap: the child gets every vma but the dontcopy ones. Private anonymous pages are
   * shared copy-on-write (both sides write-protected, through the notifiers so devices
   * drop writable translations first), except pages pinned for DMA, which the child gets
   * a copy of at once so the parent keeps the pinned frame (Linux 5.10's fix for the I1
   * problem). Shared mappings are shared; the child has no PASID, queue or doorbell.
   */
  forkInto (child: Mm): Result<void> {
    for (const vma of this.vmas) {
      if (vma.dontcopy) continue
      child.#insert(vma.slice(vma.start, vma.end))
      child.totalVm += vma.length
      if (vma.shared) continue
      const entries: Array<[number, number]> = []
      const first = vma.start / PAGE_SIZE
      const last = vma.end / PAGE_SIZE
      if (last - first <= this.pt.size) {
        for (let vpn = first; vpn < last; vpn++) {
          const pte = this.pt.get(vpn)
          if (pte !== undefined && (pte & PTE_ANON) !== 0) entries.push([vpn, pte])
        }
      } else {
        for (const [vpn, pte] of this.pt) if (vpn >= first && vpn < last && (pte & PTE_ANON) !== 0) entries.push([vpn, pte])
      }
      let failure: Result<void> | undefined
      const share = (): void => {
        for (const [vpn, pte] of entries) {
          const frame = Math.floor(pte / PTE_BITS)
          if (this.meta.isPinned(frame)) {
            const r = this.mem.alloc()
            if (!r.ok) {
              failure = err(r.errno, 'out of memory copying pinned pages for the child')
              return
            }
            this.mem.copyFrame(r.value, frame)
            child.pt.set(vpn, r.value * PTE_BITS + (pte & (PTE_BITS - 1)))
            this.meta.mapcount[r.value] = 1
            continue
          }
          const ro = pte & ~PTE_WRITE
          this.pt.set(vpn, ro)
          child.pt.set(vpn, ro)
          this.meta.mapcount[frame]++
          this.mem.get(frame)
        }
      }
      if (entries.some(([, pte]) => (pte & PTE_WRITE) !== 0)) this.notifiers.invalidate(vma.start, vma.end, NotifyEvent.FORK, share)
      else share()
      if (failure !== undefined) {
        child.exit()
        return failure
      }
    }
    return ok(undefined)
  }

  /** FileMapper: writeback write-protects the page in every shared mapping of it. */
  writeProtectFilePage (file: File, pgoff: number): void {
    for (const v of this.vmas) {
      if (v.file !== file || !v.shared || pgoff < v.pgoff || pgoff >= v.pgoff + v.length / PAGE_SIZE) continue
      const va = v.start + (pgoff - v.pgoff) * PAGE_SIZE
      const vpn = va / PAGE_SIZE
      const pte = this.pt.get(vpn)
      if (pte === undefined || (pte & PTE_WRITE) === 0) continue
      this.notifiers.invalidate(va, va + PAGE_SIZE, NotifyEvent.WRITEBACK, () => this.pt.set(vpn, pte & ~PTE_WRITE))
    }
  }

  /** exit_mmap: tears everything down; frames still pinned live on until their unpin. */
  exit (): void {
    if (this.exited) return
    this.exited = true
    const vmas = this.vmas.splice(0)
    this.notifiers.invalidate(0, TASK_SIZE, NotifyEvent.EXIT, () => {
      for (const [vpn, pte] of this.pt) {
        const frame = Math.floor(pte / PTE_BITS)
        this.pt.delete(vpn)
        this.meta.mapcount[frame]--
        this.mem.put(frame)
      }
    })
    this.notifiers.release()
    this.totalVm = 0
    for (const v of vmas) v.file?.removeMapper(this)
  }

  mappings (): MappingInfo[] {
    return this.vmas.map(v => {
      let resident = 0
      for (let a = v.start; a < v.end; a += PAGE_SIZE) if (this.pt.has(a / PAGE_SIZE)) resident++
      return {
        start: v.start,
        end: v.end,
        prot: v.prot,
        shared: v.shared,
        file: v.userFile ? v.file?.id : undefined,
        offset: v.pgoff * PAGE_SIZE,
        dontcopy: v.dontcopy,
        resident
      }
    })
  }
}
