/**
 * The IOMMU: a PASID table whose entries are processes' page tables (shared virtual
 * addressing, drivers/iommu/iommu-sva.c), IOVA domains that only the kernel maps into
 * (drivers/iommu/iommufd/io_pagetable.c), an IOTLB per device, page requests (PRI) served
 * by the kernel's fault handler, and the bookkeeping of device accesses in flight so an
 * mmu notifier can wait for them before a frame changes hands.
 *
 * Everything above this layer is reached through IommuAddressSpace, which src/kernel
 * implements: src/hw imports nothing above it.
 */
import { Errno, err, ok, type Result } from './errno.ts'
import { PAGE_SIZE, type PhysMem } from './phys-mem.ts'
import type { IovaDomain } from './iova-domain.ts'

/** A scatter list the IOMMU fills: physical byte addresses and lengths (an engine Sg). */
export interface SgList {
  addrs: number[]
  lens: number[]
}

/** Walk outcomes below zero; a walk that succeeds answers the frame number (always >= 1). */
export const Xlate = {
  NOT_PRESENT: -1,
  PERMISSION: -2,
  NO_MAPPING: -3
} as const

/** Highest user virtual address + 1 (x86-64 four-level paging, TASK_SIZE). */
export const TASK_SIZE = 2 ** 47
/** PASIDs stay below this so (ctx, page) packs into one safe integer key. */
export const PASID_MAX = 0xffff
const DOMAIN_CTX_BASE = 0x10000
/**
 * Up to this many contexts keep their (empty) list of accesses when the last access ends,
 * rather than deleting and re-adding it every round trip (as the device's context lists).
 */
const KEEP_EMPTY_ACCESS_LISTS = 64
/**
 * Released accesses kept for reuse, at most: more than a device keeps in flight (256 jobs
 * per engine). A spare keeps its frame and range arrays at their longest (a 1 MiB job's
 * run to a few hundred entries), so the bound also bounds what spares hold on to.
 */
const MAX_SPARE_ACCESSES = 1024
/** IOTLB associativity: entries per set */
const IOTLB_WAYS = 4

export interface IommuFault {
  pasid: number
  /** a bigint only for an address of 2**53 or more: the exact 64 bits a descriptor named */
  addr: number | bigint
  write: boolean
  reason: 'not_present' | 'permission' | 'no_mapping'
  /** what the page request answered, when one was made */
  served?: boolean
  device?: string
  at: number
}

/** What a PASID-table entry points to: a process's address space, implemented by the kernel's mm. */
export interface IommuAddressSpace {
  /** A side-effect-free page walk: the frame, or a negative Xlate code. */
  walk: (va: number, write: boolean) => number
  /** A page request (PRI): fault the page in and answer true, or answer invalid (false). */
  pageRequest: (va: number, write: boolean) => boolean | Promise<boolean>
  /** Recorded in the owning process's fault queue. */
  reportFault: (fault: IommuFault) => void
}

/**
 * One device access in flight (a descriptor being translated or run). It holds a
 * reference on every frame it reached, so no frame is freed under it; the notifier waits
 * for it (running) or marks it stale (still translating) before a translation changes.
 *
 * Accesses are reused: once released, beginAccess may hand the object out again (one per
 * descriptor was garbage per descriptor), so whoever releases one lets go of it.
 */
export class DeviceAccess {
  /** the frames held are the first `nframes` (the arrays are reused, never shortened) */
  readonly frames: number[] = []
  nframes = 0
  /** [start, end) virtual ranges touched, flat pairs: the first `nranges` numbers */
  readonly ranges: number[] = []
  nranges = 0
  state: 'translating' | 'running' | 'done' = 'translating'
  /** a translation it used was invalidated before it started running: translate again */
  stale = false
  /** set by the device when the access starts running: blocks until it is done */
  wait: ((a: DeviceAccess) => void) | undefined
  /** the device's job running under this access, for its `wait` */
  job = -1
  /** the context's accesses in flight, a list (a Set grew and shrank with every burst) */
  prev: DeviceAccess | undefined
  next: DeviceAccess | undefined
  /** the list it is on, while it is on one */
  list: AccessList | undefined

  ctx: number
  readonly iommu: Iommu

  constructor (ctx: number, iommu: Iommu) {
    this.ctx = ctx
    this.iommu = iommu
  }

  addRange (start: number, end: number): void {
    this.ranges[this.nranges++] = start
    this.ranges[this.nranges++] = end
  }

  overlaps (start: number, end: number): boolean {
    const r = this.ranges
    for (let i = 0; i < this.nranges; i += 2) {
      if (r[i] < end && start < r[i + 1]) return true
    }
    return false
  }

  /**
   * Frees every frame reference and forgets the access; it may then be handed out again.
   * A second call before that does nothing.
   */
  release (): void {
    if (this.state === 'done') return
    this.state = 'done'
    this.iommu.forgetAccess(this)
    const mem = this.iommu.mem
    for (let i = 0; i < this.nframes; i++) mem.put(this.frames[i])
    this.nframes = 0
    this.nranges = 0
    this.iommu.recycleAccess(this)
  }
}

/**
 * A device's IOTLB: (context, page) to frame, with the write permission cached only once a
 * write walk succeeded. Set-associative like a hardware one: a page can live in one set
 * of WAYS entries, replaced oldest first, so a hit, a miss and an eviction cost the same
 * whatever the history. (A Map used as a FIFO slows down as deletions pile up at its
 * front, and a working set one page larger than the cache evicts on every access.)
 * Invalidated by range from the notifiers and by domain unmaps.
 */
export class Iotlb {
  hits = 0
  misses = 0
  #size = 0
  /** per entry: its context, -1 when empty */
  readonly #ctx: Int32Array
  readonly #vpn: Float64Array
  /** frame * 2 + 1 when the write right is cached */
  readonly #pte: Int32Array
  /** per set: the way to replace next */
  readonly #victim: Uint8Array
  readonly #sets: number
  readonly #ways: number

  readonly name: string
  readonly iommu: Iommu
  /** entries: iotlbEntries, rounded up to whole sets */
  readonly capacity: number

  constructor (name: string, iommu: Iommu, capacity = 4096) {
    this.name = name
    this.iommu = iommu
    // A power of two of sets, so that a set is a mask of the page number (a floating-point
    // `%` of it was two thirds of a hit's cost: 19.7 ns a translate against 6.1 ns with
    // the mask and the set's ways walked in place, thirteenth session); what the sets
    // cannot hold at IOTLB_WAYS goes to more ways.
    this.#sets = 2 ** Math.max(0, Math.floor(Math.log2(capacity / IOTLB_WAYS)))
    this.#ways = Math.ceil(capacity / this.#sets)
    this.capacity = this.#sets * this.#ways
    this.#ctx = new Int32Array(this.capacity).fill(-1)
    this.#vpn = new Float64Array(this.capacity)
    this.#pte = new Int32Array(this.capacity)
    this.#victim = new Uint8Array(this.#sets)
  }

  get size (): number { return this.#size }

  #set (ctx: number, vpn: number): number {
    // `>>> 0` and `&` take the sum modulo 2**32, exact for the integers here (below 2**53)
    return ((vpn >>> 0) + ctx * 0x9e37) & (this.#sets - 1)
  }

  /** The entry index holding (ctx, vpn) in its set, or -1. */
  #find (set: number, ctx: number, vpn: number): number {
    const ctxs = this.#ctx
    const vpns = this.#vpn
    const end = (set + 1) * this.#ways
    for (let i = set * this.#ways; i < end; i++) {
      if (ctxs[i] === ctx && vpns[i] === vpn) return i
    }
    return -1
  }

  /** The frame for (ctx, va) with the access, or a negative Xlate code. */
  translate (ctx: number, va: number, write: boolean): number {
    const vpn = Math.floor(va / PAGE_SIZE)
    const set = this.#set(ctx, vpn)
    let at = this.#find(set, ctx, vpn)
    if (at >= 0) {
      const e = this.#pte[at]
      if (!write || (e & 1) === 1) {
        this.hits++
        return e >>> 1
      }
    }
    this.misses++
    const frame = this.iommu.walk(ctx, va, write)
    if (frame < 0) return frame
    if (at < 0) {
      const way = this.#victim[set]
      this.#victim[set] = (way + 1) % this.#ways
      at = set * this.#ways + way
      if (this.#ctx[at] < 0) this.#size++
      this.#ctx[at] = ctx
      this.#vpn[at] = vpn
    }
    this.#pte[at] = frame * 2 + (write ? 1 : 0)
    return frame
  }

  /** Empties a valid entry. */
  #drop (at: number): void {
    this.#ctx[at] = -1
    this.#size--
  }

  flushRange (ctx: number, start: number, end: number): void {
    if (this.#size === 0) return
    const first = Math.floor(start / PAGE_SIZE)
    const last = Math.ceil(end / PAGE_SIZE)
    if (last - first <= this.#sets) {
      for (let v = first; v < last; v++) {
        const at = this.#find(this.#set(ctx, v), ctx, v)
        if (at >= 0) this.#drop(at)
      }
      return
    }
    for (let at = 0; at < this.capacity; at++) {
      if (this.#ctx[at] === ctx && this.#vpn[at] >= first && this.#vpn[at] < last) this.#drop(at)
    }
  }

  flushAll (): void {
    this.#ctx.fill(-1)
    this.#size = 0
  }
}

/** A context's device accesses in flight, linked through DeviceAccess.prev/next. */
interface AccessList {
  first: DeviceAccess | undefined
  last: DeviceAccess | undefined
  count: number
}

export class Iommu {
  readonly #pasids = new Map<number, IommuAddressSpace>()
  readonly #domains = new Map<number, IovaDomain>()
  readonly #iotlbs: Iotlb[] = []
  readonly #accesses = new Map<number, AccessList>()
  /** released accesses, to be handed out again */
  readonly #spareAccesses: DeviceAccess[] = []
  /** the list the last access began on: a doorbell write's descriptors share one */
  #lastAccessList: AccessList | undefined
  #lastAccessCtx = -1
  #nextPasid = 1
  faultsRecorded = 0
  pageRequests = 0

  readonly mem: PhysMem

  constructor (mem: PhysMem) {
    this.mem = mem
  }

  createIotlb (name: string, capacity?: number): Iotlb {
    const tlb = new Iotlb(name, this, capacity)
    this.#iotlbs.push(tlb)
    return tlb
  }

  /** iommu_sva_bind_device: one PASID per address space. The kernel makes sure of the "one". */
  bindPasid (space: IommuAddressSpace): Result<number> {
    if (this.#pasids.size >= PASID_MAX) return err(Errno.ENOSPC, 'no free PASID')
    let pasid = this.#nextPasid
    while (this.#pasids.has(pasid)) pasid = pasid >= PASID_MAX ? 1 : pasid + 1
    this.#nextPasid = pasid >= PASID_MAX ? 1 : pasid + 1
    this.#pasids.set(pasid, space)
    return ok(pasid)
  }

  /** Drops the PASID after invalidating everything cached or in flight under it. */
  unbindPasid (pasid: number): void {
    if (!this.#pasids.has(pasid)) return
    this.invalidate(pasid, 0, TASK_SIZE)
    this.#pasids.delete(pasid)
  }

  isBound (pasid: number): boolean { return this.#pasids.has(pasid) }
  get boundPasids (): number { return this.#pasids.size }

  /** Makes a domain reachable as a translation context; its unmaps invalidate this IOMMU. */
  attachDomain (domain: IovaDomain): number {
    const ctx = DOMAIN_CTX_BASE + domain.id
    this.#domains.set(ctx, domain)
    domain.onInvalidate = (iova, length) => this.invalidate(ctx, iova, iova + length)
    return ctx
  }

  detachDomain (domain: IovaDomain): void {
    const ctx = DOMAIN_CTX_BASE + domain.id
    this.invalidate(ctx, 0, TASK_SIZE)
    this.#domains.delete(ctx)
    domain.onInvalidate = undefined
  }

  static domainCtx (domainId: number): number { return DOMAIN_CTX_BASE + domainId }

  /** The page walk behind an IOTLB miss. */
  walk (ctx: number, va: number, write: boolean): number {
    if (!(va >= 0 && va < TASK_SIZE)) return Xlate.NO_MAPPING
    if (ctx < DOMAIN_CTX_BASE) {
      const space = this.#pasids.get(ctx)
      return space === undefined ? Xlate.NO_MAPPING : space.walk(va, write)
    }
    const domain = this.#domains.get(ctx)
    const m = domain?.lookup(va)
    if (m === undefined) return Xlate.NO_MAPPING
    return (m.perm & (write ? 2 : 1)) !== 0 ? m.frame : Xlate.PERMISSION
  }

  /** translate() without a device cache, for tests and one-off kernel use. */
  translate (ctx: number, va: number, write: boolean): number {
    return this.walk(ctx, va, write)
  }

  /**
   * A page request for a fault under a PASID: the kernel's fault handler serves a
   * not-present (or copy-on-write) page of a valid mapping and answers invalid for anything
   * else. IOVA domains have no page requests: the kernel mapped everything up front.
   */
  async pageRequest (ctx: number, va: number, write: boolean): Promise<boolean> {
    this.pageRequests++
    const space = this.#pasids.get(ctx)
    if (space === undefined) return false
    return await space.pageRequest(va, write)
  }

  /** Records a fault against the owner of the context (a process's fault queue for PASIDs). */
  reportFault (ctx: number, va: number | bigint, write: boolean, code: number, device: string, served?: boolean): void {
    this.faultsRecorded++
    const space = this.#pasids.get(ctx)
    if (space === undefined) return
    space.reportFault({
      pasid: ctx,
      addr: va,
      write,
      reason: code === Xlate.NOT_PRESENT ? 'not_present' : code === Xlate.PERMISSION ? 'permission' : 'no_mapping',
      served,
      device,
      at: Date.now()
    })
  }

  beginAccess (ctx: number): DeviceAccess {
    let a = this.#spareAccesses.pop()
    if (a === undefined) {
      a = new DeviceAccess(ctx, this)
    } else {
      a.ctx = ctx
      a.state = 'translating'
      a.stale = false
      a.wait = undefined
      a.job = -1
    }
    let list = ctx === this.#lastAccessCtx ? this.#lastAccessList : this.#accesses.get(ctx)
    if (list === undefined) {
      list = { first: undefined, last: undefined, count: 0 }
      this.#accesses.set(ctx, list)
    }
    this.#lastAccessCtx = ctx
    this.#lastAccessList = list
    a.list = list
    a.prev = list.last
    if (list.last !== undefined) list.last.next = a
    else list.first = a
    list.last = a
    list.count++
    return a
  }

  /** Called by DeviceAccess.release, once it has let go of everything. */
  recycleAccess (a: DeviceAccess): void {
    if (this.#spareAccesses.length < MAX_SPARE_ACCESSES) this.#spareAccesses.push(a)
  }

  /** Called by DeviceAccess.release. */
  forgetAccess (a: DeviceAccess): void {
    const list = a.list
    if (list === undefined) return
    if (a.prev !== undefined) a.prev.next = a.next
    else list.first = a.next
    if (a.next !== undefined) a.next.prev = a.prev
    else list.last = a.prev
    a.prev = a.next = undefined
    a.list = undefined
    if (--list.count === 0 && this.#accesses.size > KEEP_EMPTY_ACCESS_LISTS) {
      this.#accesses.delete(a.ctx)
      if (this.#lastAccessList === list) {
        this.#lastAccessList = undefined
        this.#lastAccessCtx = -1
      }
    }
  }

  accessesInFlight (ctx?: number): number {
    if (ctx !== undefined) return this.#accesses.get(ctx)?.count ?? 0
    let n = 0
    for (const l of this.#accesses.values()) n += l.count
    return n
  }

  /**
   * The IOMMU side of an mmu notifier's invalidate-range-start: flush every IOTLB, then
   * wait for the device accesses running in the range (or mark those still translating
   * stale). When it returns, no device uses a translation of the range any more.
   */
  invalidate (ctx: number, start: number, end: number): void {
    for (const tlb of this.#iotlbs) tlb.flushRange(ctx, start, end)
    const list = this.#accesses.get(ctx)
    if (list === undefined) return
    // A copy: waiting delivers completions, which release (unlink) accesses. One released
    // meanwhile may be reused by then; waiting for it or marking it stale is only
    // caution, never wrong.
    const running: DeviceAccess[] = []
    for (let a = list.first; a !== undefined; a = a.next) running.push(a)
    for (const a of running) {
      if (!a.overlaps(start, end)) continue
      if (a.state === 'translating') a.stale = true
      else if (a.state === 'running') a.wait?.(a)
    }
  }

  /** why the last holdInto stopped short: an Xlate code, or 0 when it did not */
  holdFault = 0

  /**
   * holdInto of a buffer of 1 to PAGE_SIZE - (va % PAGE_SIZE) bytes, within one page, as
   * most descriptors' buffers are: without the loop's bookkeeping, and small enough for
   * V8 to inline where holdInto is not. A 64-byte buffer cost 38 ns a call through
   * holdInto against 18 ns a page of a long one.
   */
  holdInPage (tlb: Iotlb, a: DeviceAccess, va: number, len: number, write: boolean, sg: SgList): number {
    a.addRange(va, va + len)
    const inPage = va & (PAGE_SIZE - 1)
    const addrs = sg.addrs
    const lens = sg.lens
    const frame = tlb.translate(a.ctx, va, write)
    const k = frame < 0 ? 0 : 1
    if (frame >= 0) {
      this.mem.get(frame)
      a.frames[a.nframes++] = frame
      addrs[0] = frame * PAGE_SIZE + inPage
      lens[0] = len
    }
    if (addrs.length !== k) {
      addrs.length = k
      lens.length = k
    }
    this.holdFault = frame < 0 ? frame : 0
    return frame < 0 ? 0 : len
  }

  /**
   * Translates [va, va+len) for an access, one page at a time, holding each frame, and
   * refills `sg` with the physical segments of what translated, physically adjacent pages
   * in one segment: a 1 MiB buffer in 256 segments cost the main thread two more passes
   * over each at the engine ring (AES-256-GCM at 1 MiB, alternated runs: 78-80% of the
   * bare rate with a segment a page, 81-88% merged; tenth session). Answers
   * the bytes translated before the first fault, whose code it leaves in `holdFault`
   * (0 when none): the device's front end calls this for every buffer that spans pages
   * (holdInPage takes the others), and a result object and a frame list per call were
   * garbage per buffer.
   */
  holdInto (tlb: Iotlb, a: DeviceAccess, va: number, len: number, write: boolean, sg: SgList): number {
    a.addRange(va, va + len)
    const addrs = sg.addrs
    const lens = sg.lens
    // the access's frame list filled in place, and the segment's end kept in a local:
    // 18 ns a page against 20.6 through a method per frame (fourteenth session)
    const mem = this.mem
    const frames = a.frames
    const ctx = a.ctx
    let nframes = a.nframes
    let done = 0
    let k = 0
    let code = 0
    // where the last segment ends: a page that starts there extends it
    let end = -1
    let inPage = va & (PAGE_SIZE - 1)
    while (done < len) {
      const frame = tlb.translate(ctx, va + done, write)
      if (frame < 0) {
        code = frame
        break
      }
      mem.get(frame)
      frames[nframes++] = frame
      const n = Math.min(PAGE_SIZE - inPage, len - done)
      const at = frame * PAGE_SIZE + inPage
      if (at === end) {
        lens[k - 1] += n
      } else {
        addrs[k] = at
        lens[k] = n
        k++
      }
      end = at + n
      done += n
      inPage = 0
    }
    a.nframes = nframes
    // a length store runs through V8's runtime even when nothing changes
    if (addrs.length !== k) {
      addrs.length = k
      lens.length = k
    }
    this.holdFault = code
    return done
  }
}
