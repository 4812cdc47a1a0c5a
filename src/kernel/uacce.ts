/**
 * The accelerator subsystem (drivers/misc/uacce/uacce.c, with the corrections of the
 * seed thread): a registry of devices, queues created per process — `dedicated` (a
 * hardware queue of its own, EBUSY when none is free), `shared` (many PASIDs on one
 * hardware queue), and on a device without SVA always `sync_only` — and the
 * kernel-mediated submit of PROTOCOL.md section 6, which validates, pins, maps into the
 * device's IOVA domain, rewrites, queues on a kernel hardware queue shared by every
 * sync-only tenant of the device, waits, unpins and answers the completions in order.
 *
 * Queue creation hands out a QueuePort: the doorbell talks to the hardware through it,
 * so no kernel code runs per descriptor on the direct path (R3).
 */
import { AccelDevice } from '../hw/accel-device.ts'
import {
  CR, CR_SIZE, DESC, DESC_SIZE, FaultInfo, Flag, Opcode, Status, descriptorRegions, exactFaultAddr, readAddr, readU32,
  recordAddr, validateInPlace, writeU32, writeU64
} from '../hw/descriptor.ts'
import type { DeviceConfig } from '../hw/device-config.ts'
import { Errno, err, ok, type Result } from '../hw/errno.ts'
import { QueueState, type CompletionCallback, type HwQueue, type PortListener, type QueuePort } from '../hw/hw-queue.ts'
import { IovaDomain } from '../hw/iova-domain.ts'
import { PAGE_SIZE } from '../hw/phys-mem.ts'
import { TASK_SIZE } from '../hw/iommu.ts'
import type { Kernel } from './kernel.ts'
import type { Pin } from './mm.ts'
import type { Process } from './process.ts'

export const QueueKind = {
  DEDICATED: 'dedicated',
  SHARED: 'shared',
  SYNC_ONLY: 'sync_only'
} as const
export type QueueKind = typeof QueueKind[keyof typeof QueueKind]

const NOOP_LISTENER: PortListener = { completion: () => {} }

/** A device as the kernel holds it: the hardware, and for non-SVA devices its IOVA domain and kernel queues. */
export interface DeviceEntry {
  dev: AccelDevice
  domain: IovaDomain | undefined
  domainCtx: number
  kernelQueues: HwQueue[]
}

/** A tenant's queue: what `POST /v1/devices/{dev}/queues` creates. */
export class Queue {
  readonly qid: string
  readonly process: Process
  readonly device: DeviceEntry
  readonly kind: QueueKind
  readonly hw: HwQueue | undefined
  /** the doorbell's way to the hardware (dedicated and shared queues) */
  readonly port: QueuePort | undefined
  /** sync_only: one port per kernel hardware queue, so a release aborts only this queue's work */
  readonly kernelPorts: QueuePort[] = []
  readonly createdAt = Date.now()
  released = false
  /** the doorbell channel open on it, if any: a doorbell is mapped once */
  doorbell: unknown
  inflight = 0
  /** mediated submissions waiting for room on the kernel queues */
  readonly backlog: Array<() => void> = []

  constructor (qid: string, process: Process, device: DeviceEntry, kind: QueueKind, hw: HwQueue | undefined, port: QueuePort | undefined) {
    this.qid = qid
    this.process = process
    this.device = device
    this.kind = kind
    this.hw = hw
    this.port = port
  }

  get tenant (): string { return this.process.tenant }

  get state (): QueueState {
    if (this.released) return QueueState.RELEASED
    return this.hw?.state ?? QueueState.RUNNING
  }
}

/** One descriptor of a mediated submission on its way through the kernel. */
interface Mediated {
  index: number
  /** the tenant's descriptor bytes, never modified */
  orig: Uint8Array
  /** the rewritten copy the device sees */
  desc: Uint8Array
  pins: Pin[]
  iovas: Array<[number, number]>
  /** (iova, va, length) triples to map a fault address back to the tenant's view */
  rewrites: Array<[number, number, number]>
  /** a kernel-owned buffer for a rewritten BATCH array */
  batchFrames: number[]
  record: Uint8Array | undefined
  /** records of batch members the kernel answered itself, written when the batch is done */
  late: Array<[number, Uint8Array]>
}

export interface SubmitLimits {
  /** descriptors in flight for the tenant, counting this submission; above it: EAGAIN */
  maxInflight?: number
  inflightNow?: number
}

export class Uacce {
  readonly kernel: Kernel
  readonly devices = new Map<string, DeviceEntry>()
  readonly queues = new Map<string, Queue>()
  #nextQueue = 1
  #nextDomain = 1
  #closing = false

  constructor (kernel: Kernel, configs: DeviceConfig[]) {
    this.kernel = kernel
    for (const config of configs) {
      if (this.devices.has(config.id)) throw new Error(`device id ${config.id} appears twice`)
      const dev = new AccelDevice(config, kernel.iommu)
      let domain: IovaDomain | undefined
      let domainCtx = 0
      const kernelQueues: HwQueue[] = []
      if (!config.sva) {
        domain = new IovaDomain(this.#nextDomain++, kernel.mem)
        domainCtx = kernel.iommu.attachDomain(domain)
      }
      for (;;) {
        const q = dev.allocQueue('kernel')
        if (q === undefined) break
        kernelQueues.push(q)
      }
      this.devices.set(config.id, { dev, domain, domainCtx, kernelQueues })
    }
  }

  device (id: string): DeviceEntry | undefined {
    return this.devices.get(id)
  }

  /** Binds the process to an SVA device: the PASID. A device without SVA answers EOPNOTSUPP. */
  bind (p: Process, deviceId: string): Result<number> {
    const d = this.devices.get(deviceId)
    if (d === undefined) return err(Errno.ENODEV, `no device ${deviceId}`)
    if (!d.dev.config.sva) return err(Errno.EOPNOTSUPP, `device ${deviceId} has no shared virtual addressing: use a sync_only queue`)
    return this.kernel.bindPasid(p)
  }

  createQueue (p: Process, deviceId: string, kind?: QueueKind, weight = 1): Result<Queue> {
    if (p.state !== 'running') return err(Errno.ESRCH, `process ${p.pid} has exited`)
    const d = this.devices.get(deviceId)
    if (d === undefined) return err(Errno.ENODEV, `no device ${deviceId}`)
    const qid = `q-${this.#nextQueue++}`
    let q: Queue
    if (!d.dev.config.sva) {
      // Without SVA there is only the kernel's queue (the seed's SYNC_ONLY), never EBUSY.
      if (kind !== undefined && kind !== QueueKind.SYNC_ONLY) {
        return err(Errno.EOPNOTSUPP, `device ${deviceId} has no shared virtual addressing: only sync_only queues`)
      }
      if (d.kernelQueues.length === 0) return err(Errno.ENODEV, `device ${deviceId} has no kernel queues`)
      q = new Queue(qid, p, d, QueueKind.SYNC_ONLY, undefined, undefined)
      for (const hw of d.kernelQueues) q.kernelPorts.push(hw.attach(d.domainCtx, 0, NOOP_LISTENER, weight))
    } else {
      const want = kind ?? QueueKind.DEDICATED
      if (want === QueueKind.SYNC_ONLY) return err(Errno.EINVAL, 'sync_only queues are for devices without SVA')
      const pasid = this.kernel.bindPasid(p)
      if (!pasid.ok) return pasid
      const hw = want === QueueKind.DEDICATED ? d.dev.allocQueue('dedicated') : d.dev.sharedQueue()
      if (hw === undefined) {
        return err(Errno.EBUSY, want === QueueKind.DEDICATED
          ? `every dedicated queue of ${deviceId} is in use`
          : `device ${deviceId} has no shared queue`)
      }
      q = new Queue(qid, p, d, want, hw, hw.attach(pasid.value, pasid.value, NOOP_LISTENER, weight))
    }
    this.queues.set(qid, q)
    if (!p.exitHooks.includes(this.#onExit)) p.exitHooks.push(this.#onExit)
    return ok(q)
  }

  readonly #onExit = (p: Process): void => {
    for (const q of [...this.queues.values()]) if (q.process === p) this.releaseQueue(q, 'process exited')
  }

  /** Release: its work is aborted (ABORTED completions), a dedicated hardware queue is free again. */
  releaseQueue (q: Queue, reason = 'queue released'): void {
    if (q.released) return
    q.released = true
    this.queues.delete(q.qid)
    const dev = q.device.dev
    if (q.kind === QueueKind.DEDICATED && q.hw !== undefined) {
      dev.releaseQueue(q.hw, reason)
    } else if (q.port !== undefined) {
      q.port.listener.status?.(QueueState.RELEASED, reason)
      dev.abortPort(q.port)
      q.port.close()
    }
    for (const port of q.kernelPorts) {
      dev.abortPort(port)
      port.close()
    }
    // Mediated submissions still waiting for room are let go: they answer ABORTED.
    for (const wake of q.backlog.splice(0)) wake()
  }

  /**
   * The mediated submit (PROTOCOL.md section 6): `body` is N x 64 descriptor bytes; the
   * answer is N x 32 completion bytes in the same order.
   */
  async submit (q: Queue, body: Uint8Array, limits: SubmitLimits = {}): Promise<Result<Uint8Array>> {
    if (body.length === 0 || body.length % DESC_SIZE !== 0) return err(Errno.EINVAL, `the body must be a whole number of ${DESC_SIZE}-byte descriptors`)
    const n = body.length / DESC_SIZE
    if (limits.maxInflight !== undefined && (limits.inflightNow ?? 0) + n > limits.maxInflight) {
      return err(Errno.EAGAIN, `more than ${limits.maxInflight} descriptors in flight`)
    }
    const out = new Uint8Array(n * CR_SIZE)
    if (q.released || q.process.state !== 'running') {
      for (let i = 0; i < n; i++) this.#refuse(out, i, body, Status.QUEUE_DISABLED)
      return ok(out)
    }
    q.inflight += n
    try {
      if (q.port !== undefined) await this.#submitSva(q, q.port, body, out)
      else await this.#submitMediated(q, body, out)
    } finally {
      q.inflight -= n
    }
    return ok(out)
  }

  #refuse (out: Uint8Array, i: number, body: Uint8Array, status: number): void {
    const at = i * CR_SIZE
    out.fill(0, at, at + CR_SIZE)
    out.set(body.subarray(i * DESC_SIZE + DESC.TAG, i * DESC_SIZE + DESC.TAG + 8), at + CR.TAG)
    out[at + CR.STATUS] = status
  }

  /**
   * On a queue with a PASID the kernel rings the doorbell for the tenant and waits: the
   * device translates through the process's own page tables.
   */
  async #submitSva (q: Queue, port: QueuePort, body: Uint8Array, out: Uint8Array): Promise<void> {
    const n = body.length / DESC_SIZE
    let left = n
    let resolveAll: () => void = () => {}
    const all = new Promise<void>(resolve => { resolveAll = resolve })
    const tokens: CompletionCallback[] = Array.from({ length: n }, (_, i) => (rec: Uint8Array) => {
      out.set(rec, i * CR_SIZE)
      if (--left === 0) resolveAll()
    })
    let next = 0
    while (next < n) {
      const accepted = port.submit(body, next * DESC_SIZE, n - next, tokens.slice(next))
      next += accepted
      if (next < n && port.lastRefusal === Status.QUEUE_DISABLED) {
        for (let i = next; i < n; i++) this.#refuse(out, i, body, Status.QUEUE_DISABLED)
        left -= n - next
        break
      }
      // A full ring: the kernel holds the rest and rings again as room appears.
      if (next < n) await new Promise(resolve => setTimeout(resolve, 1))
    }
    if (left > 0) await all
  }

  async #submitMediated (q: Queue, body: Uint8Array, out: Uint8Array): Promise<void> {
    const n = body.length / DESC_SIZE
    const d = q.device
    const work: Mediated[] = []
    try {
      for (let i = 0; i < n; i++) {
        const orig = body.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE)
        const m: Mediated = { index: i, orig, desc: new Uint8Array(orig), pins: [], iovas: [], rewrites: [], batchFrames: [], record: undefined, late: [] }
        work.push(m)
        const status = this.#prepare(q, m, false)
        if (status !== 0) {
          m.record ??= this.#record(m, status)
          this.#release(d, m)
        }
      }
      await this.#runAll(q, work.filter(m => m.record === undefined))
    } finally {
      // Whatever happened, nothing this submission pinned or mapped outlives it.
      for (const m of work) this.#release(d, m)
    }
    const mm = q.process.mm
    // the tenant's records, body first and status last, through the process's own stores
    const put = (ca: number, rec: Uint8Array): void => {
      if (mm.store(ca + 1, rec.subarray(1)).ok) mm.store(ca, rec.subarray(0, 1))
    }
    for (const m of work) {
      const rec = m.record as Uint8Array
      out.set(rec, m.index * CR_SIZE)
      for (const [ca, r] of m.late) put(ca, r)
      const ca = recordAddr(m.orig)
      if (ca !== 0) put(ca, rec)
    }
  }

  /** The least busy running kernel queue with room, or -1. */
  #leastBusy (d: DeviceEntry): number {
    let best = -1
    for (let i = 0; i < d.kernelQueues.length; i++) {
      const hw = d.kernelQueues[i]
      if (hw.state !== QueueState.RUNNING || hw.occupancy >= hw.depth) continue
      if (best < 0 || hw.occupancy < d.kernelQueues[best].occupancy) best = i
    }
    return best
  }

  /**
   * One doorbell write for as many prepared descriptors as the least busy kernel queue
   * takes; what does not fit waits for room one by one.
   */
  async #runAll (q: Queue, pending: Mediated[]): Promise<void> {
    if (pending.length === 0) return
    const d = q.device
    const waits: Array<Promise<void>> = []
    let accepted = 0
    const best = q.released ? -1 : this.#leastBusy(d)
    if (best >= 0) {
      const hw = d.kernelQueues[best]
      const room = Math.min(pending.length, hw.depth - hw.occupancy)
      const buf = new Uint8Array(room * DESC_SIZE)
      const tokens: CompletionCallback[] = []
      const done: Array<Promise<void>> = []
      for (let i = 0; i < room; i++) {
        const m = pending[i]
        buf.set(m.desc, i * DESC_SIZE)
        done.push(new Promise<void>(resolve => {
          tokens.push((r) => {
            m.record = this.#untranslate(m, new Uint8Array(r))
            this.#release(d, m)
            this.#wake(d)
            resolve()
          })
        }))
      }
      accepted = q.kernelPorts[best].submit(buf, 0, room, tokens)
      // only the accepted ones will ever be answered through their callbacks
      waits.push(...done.slice(0, accepted))
    }
    for (const m of pending.slice(accepted)) {
      waits.push(this.#runOnKernelQueue(q, m).then(rec => { m.record = rec }))
    }
    await Promise.all(waits)
  }

  /** A completion record for a descriptor answered by the kernel itself. */
  #record (m: Mediated, status: number, faultAddr: number | bigint = 0, faultInfo = 0): Uint8Array {
    const rec = new Uint8Array(CR_SIZE)
    rec[CR.FAULT_INFO] = faultInfo
    writeU64(rec, CR.FAULT_ADDR, faultAddr)
    rec.set(m.orig.subarray(DESC.TAG, DESC.TAG + 8), CR.TAG)
    rec[CR.STATUS] = status
    return rec
  }

  /**
   * Validates, pins and maps every buffer the descriptor names, and rewrites its
   * addresses to IOVAs. Answers 0, or the status the descriptor completes with.
   */
  #prepare (q: Queue, m: Mediated, inBatch: boolean): number {
    const d = q.device
    const desc = m.desc
    const dev = d.dev
    const st = validateInPlace(desc, dev.limits, inBatch)
    if (st !== 0) return st
    // A top-level record the kernel writes itself after unpinning; a batch member's the
    // device writes, into the tenant's page pinned and mapped for it. Nothing is pushed.
    desc[DESC.FLAGS] &= ~(Flag.NOTIFY | Flag.BLOCK_ON_FAULT)
    writeU32(desc, DESC.PASID, 0)
    // validated, so an address asked for is aligned: recordAddr answers it
    const ca = recordAddr(desc)
    if (inBatch && ca !== 0) {
      const s = this.#mapRegion(q, m, ca, CR_SIZE, true)
      if (typeof s !== 'number') {
        m.record = this.#record(m, Status.PAGE_FAULT, exactFaultAddr(m.orig, DESC.COMPLETION_ADDR, s.addr), FaultInfo.WRITE | (s.noMapping ? FaultInfo.NO_MAPPING : 0))
        return Status.PAGE_FAULT
      }
      writeU64(desc, DESC.COMPLETION_ADDR, s)
    } else {
      desc[DESC.FLAGS] &= ~Flag.COMPLETION_RECORD
      writeU64(desc, DESC.COMPLETION_ADDR, 0)
    }
    const opcode = desc[DESC.OPCODE]
    const size = readU32(desc, DESC.SIZE)
    if (opcode === Opcode.NOOP || opcode === Opcode.DRAIN) return 0
    if (opcode === Opcode.BATCH) return this.#prepareBatch(q, m, size)
    for (const { field, va, len, write } of descriptorRegions(desc, dev.config.maxTransferSize)) {
      if (len === 0) continue
      const s = this.#mapRegion(q, m, va, len, write)
      if (typeof s !== 'number') {
        // An address no process can map (2**53 and up) is reported exactly as the tenant wrote it.
        const addr = exactFaultAddr(m.orig, field, s.addr)
        m.record = this.#record(m, Status.PAGE_FAULT, addr, (write ? FaultInfo.WRITE : 0) | (s.noMapping ? FaultInfo.NO_MAPPING : 0))
        return Status.PAGE_FAULT
      }
      writeU64(desc, field, s)
    }
    return 0
  }

  /** Pins [va, va+len) and maps it into the domain; answers the IOVA of va, or where it faulted. */
  #mapRegion (q: Queue, m: Mediated, va: number, len: number, write: boolean): number | { addr: number, noMapping: boolean } {
    const mm = q.process.mm
    if (!Number.isSafeInteger(va) || va + len > TASK_SIZE) return { addr: Number.isSafeInteger(va) ? Math.max(va, TASK_SIZE) : va, noMapping: true }
    const pin = mm.pin(va, len, write, false)
    if (!pin.ok) {
      const addr = pin.addr ?? va
      return { addr, noMapping: mm.findVma(addr) === undefined }
    }
    m.pins.push(pin.value)
    const domain = q.device.domain as IovaDomain
    const mapped = domain.map(undefined, pin.value.frames, write ? 3 : 1)
    if (!mapped.ok) return { addr: va, noMapping: false }
    const bytes = pin.value.frames.length * PAGE_SIZE
    m.iovas.push([mapped.value, bytes])
    const iova = mapped.value + (va % PAGE_SIZE)
    m.rewrites.push([iova, va, len])
    return iova
  }

  /** A BATCH is read by the kernel, each member checked and rewritten into a kernel-owned array. */
  #prepareBatch (q: Queue, m: Mediated, count: number): number {
    const src = readAddr(m.desc, DESC.SRC)
    const arr = q.process.mm.load(src, count * DESC_SIZE)
    if (!arr.ok) {
      const addr = arr.addr ?? src
      m.record = this.#record(m, Status.PAGE_FAULT, exactFaultAddr(m.orig, DESC.SRC, addr), q.process.mm.findVma(addr) === undefined ? FaultInfo.NO_MAPPING : 0)
      return Status.PAGE_FAULT
    }
    const mem = this.kernel.mem
    const pages = Math.ceil(count * DESC_SIZE / PAGE_SIZE)
    for (let i = 0; i < pages; i++) {
      const f = mem.alloc()
      if (!f.ok) return Status.ABORTED
      m.batchFrames.push(f.value)
    }
    for (let i = 0; i < count; i++) {
      const member: Mediated = {
        index: i,
        orig: arr.value.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE),
        desc: new Uint8Array(arr.value.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE)),
        pins: m.pins,
        iovas: m.iovas,
        rewrites: m.rewrites,
        batchFrames: m.batchFrames,
        record: undefined,
        late: m.late
      }
      const st = this.#prepare(q, member, true)
      if (st !== 0) {
        const ca = recordAddr(member.orig)
        if (ca !== 0) m.late.push([ca, member.record ?? this.#record(member, st)])
        // A member that cannot run becomes a NOOP the device completes: the batch must
        // still count it failed, so it is made invalid on purpose (reserved flag bit).
        member.desc.fill(0)
        member.desc[DESC.FLAGS] = 0x80
        member.desc.set(member.orig.subarray(DESC.TAG, DESC.TAG + 8), DESC.TAG)
      }
      const frame = m.batchFrames[Math.floor(i * DESC_SIZE / PAGE_SIZE)]
      mem.bytes.set(member.desc, frame * PAGE_SIZE + (i * DESC_SIZE) % PAGE_SIZE)
    }
    const domain = q.device.domain as IovaDomain
    const mapped = domain.map(undefined, m.batchFrames, 1)
    if (!mapped.ok) return Status.ABORTED
    m.iovas.push([mapped.value, pages * PAGE_SIZE])
    writeU64(m.desc, DESC.SRC, mapped.value)
    return 0
  }

  /** Queues the rewritten descriptor on the least busy kernel queue and waits for it. */
  async #runOnKernelQueue (q: Queue, m: Mediated): Promise<Uint8Array> {
    const d = q.device
    try {
      for (;;) {
        // Never accepted by the device: a release or a shutdown answers it ABORTED.
        if (q.released || this.#closing) return this.#record(m, Status.ABORTED)
        const best = this.#leastBusy(d)
        if (best >= 0) {
          const port = q.kernelPorts[best]
          const rec = await new Promise<Uint8Array | undefined>(resolve => {
            const done: CompletionCallback = (r) => {
              resolve(new Uint8Array(r))
              this.#wake(d)
            }
            if (port.submit(m.desc, 0, 1, [done]) === 0) resolve(undefined)
          })
          if (rec !== undefined) return this.#untranslate(m, rec)
          // refused: the queue filled or stopped between the check and the submit
        }
        // Every kernel queue is full: wait for a completion to make room.
        await new Promise<void>(resolve => {
          q.backlog.push(resolve)
          // a completion wakes it; the timer only covers a queue that stopped meanwhile
          setTimeout(() => {
            const i = q.backlog.indexOf(resolve)
            if (i >= 0) q.backlog.splice(i, 1)
            resolve()
          }, 50)
        })
      }
    } finally {
      this.#release(d, m)
    }
  }

  /** A kernel queue made room: mediated submissions waiting for it try again. */
  #wake (d: DeviceEntry): void {
    for (const q of this.queues.values()) {
      if (q.device === d && q.backlog.length > 0) q.backlog.shift()?.()
    }
  }

  /** Turns IOVAs in a completion back into the tenant's addresses. */
  #untranslate (m: Mediated, rec: Uint8Array): Uint8Array {
    rec.set(m.orig.subarray(DESC.TAG, DESC.TAG + 8), CR.TAG)
    const fa = readAddr(rec, CR.FAULT_ADDR)
    if (fa !== 0) {
      let va = 0
      for (const [iova, v, len] of m.rewrites) {
        if (fa >= iova && fa < iova + len) va = v + (fa - iova)
      }
      writeU64(rec, CR.FAULT_ADDR, va)
    }
    return rec
  }

  /** Unmaps the IOVAs, unpins, frees a batch array. */
  #release (d: DeviceEntry, m: Mediated): void {
    for (const [iova, len] of m.iovas.splice(0)) d.domain?.unmap(iova, len)
    for (const pin of m.pins.splice(0)) pin.unpin()
    for (const f of m.batchFrames.splice(0)) this.kernel.mem.put(f)
  }

  /** Resets a device: everything in flight completes ABORTED. */
  reset (deviceId: string): Result<void> {
    const d = this.devices.get(deviceId)
    if (d === undefined) return err(Errno.ENODEV, `no device ${deviceId}`)
    d.dev.reset()
    return ok(undefined)
  }

  /** Drains every device (shutdown): nothing accepted is lost. */
  async close (): Promise<void> {
    this.#closing = true
    for (const q of [...this.queues.values()]) {
      if (q.backlog.length > 0) for (const wake of q.backlog.splice(0)) wake()
    }
    await Promise.all([...this.devices.values()].map(async d => await d.dev.close()))
    for (const d of this.devices.values()) {
      if (d.domain !== undefined) {
        d.domain.unmapAll()
        this.kernel.iommu.detachDomain(d.domain)
      }
    }
  }
}
