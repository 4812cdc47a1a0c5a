/**
 * The emulated accelerator (the role of drivers/dma/idxd and of a UACCE-registered
 * device): hardware queues served by a weighted arbiter, a DMA front end that translates
 * each descriptor's buffers through the IOMMU a page at a time, and engines (worker
 * threads over physical memory) fed in batches through shared-memory rings.
 *
 * Faults (PROTOCOL.md section 4): a buffer that does not translate completes PAGE_FAULT
 * with the faulting address, or with BLOCK_ON_FAULT waits for a page request. Error
 * containment (the seed's I2, UACCE's isolate_strategy): too many faults in a window
 * isolate the queue until an admin clears it. A reset aborts everything in flight.
 * Every accepted descriptor gets exactly one completion (DESIGN.md invariant 5).
 */
import {
  CR, CR_SIZE, DESC, DESC_SIZE, algorithmTable, FaultInfo, Flag, Opcode, RegionList, Role, Status, descriptorRegions,
  exactFaultAddr, readAddr, readU32, recordAddr, regionsInto, validateInPlace, writeU32, writeU64, type Limits, type OpcodeName
} from './descriptor.ts'
import type { DeviceConfig } from './device-config.ts'
import { EnginePool, type EnginePoolOptions, type PoolJob } from './engine-pool.ts'
import { runOp, type EngineResult, type Sg } from './engine-ops.ts'
import { HwQueue, QueueState, beginVisit, served, visitOver, type CompletionCallback, type CtxList, type Entry, type QueueHost, type QueuePort } from './hw-queue.ts'
import { Iommu, Xlate, type DeviceAccess, type Iotlb, type SgList } from './iommu.ts'
import { PAGE_SIZE, type PhysMem } from './phys-mem.ts'
import { copyOut } from './shared-copy.ts'

/** UACCE_DEV_SVA, include/uapi/misc/uacce/uacce.h */
export const UACCE_DEV_SVA = 0x1
/**
 * Jobs in the engines per engine thread before the arbiter holds work back in the queues.
 * Deep enough that an engine does not run dry while the main thread completes the last
 * round (64 halved small-descriptor throughput here); the arbiter's weights act on what
 * waits behind it.
 */
const JOBS_PER_ENGINE = 256
/**
 * Source bytes in the engines per engine thread before the arbiter holds work back. Jobs
 * on an engine run in the order they reached it, whatever their queue: without a cap in
 * bytes, one queue's 128 DEFLATEs of 1 MiB went to the engines whole, and another
 * queue's NOOP behind them waited 121 ms. 4 MiB keeps a few milliseconds of large jobs
 * on each engine, so it does not run dry, and leaves small ones to the count above.
 */
const JOB_BYTES_PER_ENGINE = 4 * 2 ** 20
/**
 * Up to this many contexts keep their (empty) list of outstanding entries when the last
 * one completes: a tenant whose work drains and comes back every round trip would
 * otherwise delete and re-add its list each time (a Map shrinking and growing). Past it,
 * empty lists go, so the map stays as large as the contexts with work.
 */
const KEEP_EMPTY_CTX_LISTS = 64
/**
 * A doorbell write of at least this many descriptors runs the arbiter at once when the
 * polling engine is awake (kick). Smaller ones wait for the turn, with the others of
 * the turn: a pump and a publish for each single descriptor cost more than the cache
 * saves (NOOPs written one at a time ran at 0.93 M a second in a full benchmark run,
 * against 1.40 M in the ninth session's; tenth session).
 */
const PUMP_NOW_MIN = 8
/** page requests one descriptor may make before it is failed (a livelock guard) */
const MAX_PAGE_REQUESTS = 64
/**
 * Jobs the front end runs itself (inlineBytes) before the arbiter lets the event loop
 * turn: the rest wait for a setImmediate, so 16 full queues of small descriptors do not
 * hold sockets and timers for the whole of them.
 */
export const INLINE_PER_TURN = 1024
/**
 * The opcodes a front end may run itself: one native copy or compare each. FILL and CRC32
 * ran slower on the main thread than through an engine even at 64 bytes (their JS per
 * job costs more than the handoff; bench/RESULTS.md, sixteenth session).
 */
const INLINE_OPS = new Uint8Array(256)
for (const op of [Opcode.NOOP, Opcode.MEMMOVE, Opcode.COMPARE]) INLINE_OPS[op] = 1
const ENGINE_ERROR: EngineResult = Object.freeze({ status: Status.ABORTED, result: 0, bytesCompleted: 0, value: 0 })

/** Sees every completion (metrics): the port tells whose it was. */
export type CompletionObserver = (queue: HwQueue, port: QueuePort, status: number, opcode: number, bytes: number, latencyNs: number) => void

export interface DeviceAttributes {
  id: string
  api: string
  flags: number
  sva: boolean
  available_instances: number
  algorithms: OpcodeName[]
  isolate: number
  isolate_strategy: { faults: number, windowMs: number }
  queueDepths: number[]
  maxTransferSize: number
  maxBatchSize: number
  engines: number
  pollUs: number
  arbiterQuantum: number
  inlineBytes: number
}

const EMPTY: Sg = { addrs: [], lens: [] }
const TWO_32 = 2 ** 32
const NO_ARGS = new Uint8Array(DESC_SIZE)

/**
 * An engine job with scatter lists of its own, one per region role (Role), reused from
 * job to job: the pool copies a job into its ring when it accepts it, so the object is
 * free again from then on.
 */
type DeviceJob = PoolJob & { own: SgList[] }

export class AccelDevice implements QueueHost {
  readonly config: DeviceConfig
  readonly iommu: Iommu
  readonly mem: PhysMem
  readonly iotlb: Iotlb
  readonly queues: HwQueue[]
  readonly pool: EnginePool
  readonly limits: Limits
  observer: CompletionObserver | undefined
  /**
   * Entries in the engines, by job slot (the engine job's id). Slots are reused, the last
   * freed first; a Map keyed by ever-growing ids grew and shrank with every burst instead.
   */
  readonly #jobs: Array<Entry | undefined> = []
  readonly #freeJobs: number[] = []
  #running = 0
  /** the source bytes of the running jobs (Entry.jobBytes) */
  #runningBytes = 0
  /** per context, its outstanding entries oldest first (a list through Entry.cPrev/cNext) */
  readonly #byCtx = new Map<number, CtxList>()
  /** the list the last accepted entry went on: a doorbell write's descriptors share one */
  #lastCtxList: CtxList | undefined
  #lastCtx = -1
  readonly #drains: Entry[] = []
  /**
   * Entries the engines finished, the first #finishedCount, for #finishAll; it swaps in
   * #finishedSpare, the list it went through last, emptied slot by slot. A fresh array
   * each time grew element by element, and `length = 0` gives the capacity back.
   */
  #finished: Array<Entry | undefined> = []
  #finishedCount = 0
  #finishedSpare: Array<Entry | undefined> = []
  /** the completion record being delivered: listeners copy what they keep */
  readonly #record = new Uint8Array(CR_SIZE)
  readonly #recordView = new DataView(this.#record.buffer)
  readonly #stalled: DeviceJob[] = []
  /** jobs the pool has copied into its rings, to be reused (see DeviceJob) */
  readonly #spareJobs: DeviceJob[] = []
  /** the regions of the descriptor being translated (translation does not re-enter) */
  readonly #regions = new RegionList()
  #finishScheduled = false
  /** performance.now() while #finishAll runs, else -1 */
  #finishNow = -1
  #pumpScheduled = false
  // Bound once: a closure per descriptor costs an allocation (and, under tsx, a __name call).
  readonly #waitAccess = (a: DeviceAccess): void => { this.pool.waitJob(a.job) }
  readonly #finishTask = (): void => this.#finishAll()
  readonly #pumpTask = (): void => {
    this.#pumpScheduled = false
    this.#inlineLeft = INLINE_PER_TURN
    this.#pump()
  }

  #pumping = false
  /** inline jobs the arbiter may still run before it yields to the event loop (INLINE_PER_TURN) */
  #inlineLeft = INLINE_PER_TURN
  /** jobs the front end ran itself, not an engine (inlineBytes) */
  inlineJobs = 0
  /** the queues with work, in arbiter order (HwQueue.busy marks them) */
  readonly #busy: HwQueue[] = []
  #rr = 0
  #nextId = 1
  #seq = 0
  #outstanding = 0
  #idleWaiters: Array<() => void> = []
  #closed = false
  readonly maxJobs: number
  readonly maxJobBytes: number

  /** `pool`: engine pool options beyond the configuration's (tests: pollContended) */
  constructor (config: DeviceConfig, iommu: Iommu, pool: Pick<EnginePoolOptions, 'pollContended' | 'nice'> = {}) {
    this.config = config
    this.iommu = iommu
    this.mem = iommu.mem
    this.iotlb = iommu.createIotlb(config.id, config.iotlbEntries)
    this.queues = config.queues.map((q, i) => new HwQueue(i, q.mode, q.depth, q.priority, this, config.arbiterQuantum))
    this.limits = {
      maxTransferSize: config.maxTransferSize,
      maxBatchSize: config.maxBatchSize,
      algorithms: algorithmTable(config.algorithms.map(n => Opcode[n]))
    }
    this.maxJobs = config.engines * JOBS_PER_ENGINE
    this.maxJobBytes = config.engines * JOB_BYTES_PER_ENGINE
    this.pool = new EnginePool({ ...pool, mem: this.mem, workers: config.engines, pollUs: config.pollUs, onComplete: (id, r) => this.#onEngine(id, r) })
    this.pool.onSpace = () => this.#resubmit()
  }

  get id (): string { return this.config.id }
  get outstanding (): number { return this.#outstanding }

  attributes (): DeviceAttributes {
    return {
      id: this.config.id,
      api: 'warpdrive-v1',
      flags: this.config.sva ? UACCE_DEV_SVA : 0,
      sva: this.config.sva,
      available_instances: this.queues.filter(q => q.mode === 'dedicated' && !q.allocated).length,
      algorithms: [...this.config.algorithms],
      isolate: this.queues.filter(q => q.state === QueueState.ISOLATED).length,
      isolate_strategy: { ...this.config.isolateStrategy },
      queueDepths: this.queues.map(q => q.depth),
      maxTransferSize: this.config.maxTransferSize,
      maxBatchSize: this.config.maxBatchSize,
      engines: this.config.engines,
      pollUs: this.config.pollUs,
      arbiterQuantum: this.config.arbiterQuantum,
      inlineBytes: this.config.inlineBytes
    }
  }

  /** A free queue of that mode, now allocated; undefined when none is free (EBUSY above). */
  allocQueue (mode: 'dedicated' | 'kernel'): HwQueue | undefined {
    const q = this.queues.find(x => x.mode === mode && !x.allocated && x.state === QueueState.RUNNING)
    if (q !== undefined) q.allocated = true
    return q
  }

  sharedQueue (): HwQueue | undefined {
    return this.queues.find(q => q.mode === 'shared')
  }

  // --- acceptance (QueueHost) ---

  accept (q: HwQueue, port: QueuePort, desc: Uint8Array, slot: number, token: unknown, now: number): void {
    this.#enqueue(q, this.#newEntry(q, port, desc, slot, token, undefined, now))
  }

  #enqueue (q: HwQueue, e: Entry): void {
    q.enqueue(e)
    if (!q.busy) {
      q.busy = true
      beginVisit(q, q.priority)
      this.#busy.push(q)
    }
  }

  #newEntry (q: HwQueue, port: QueuePort, desc: Uint8Array, slot: number, token: unknown, parent: Entry | undefined, t0: number): Entry {
    const e: Entry = {
      id: this.#nextId++,
      queue: q,
      port,
      ctx: port.ctx,
      desc,
      slot,
      seq: this.#seq++,
      token,
      parent,
      children: 0,
      failedChildren: 0,
      aborted: false,
      access: undefined,
      srcFault: undefined,
      dstFaultCode: 0,
      t0,
      state: 'queued',
      job: -1,
      jobBytes: 0,
      engine: undefined,
      qPrev: undefined,
      qNext: undefined,
      cPrev: undefined,
      cNext: undefined,
      cList: undefined
    }
    let list = e.ctx === this.#lastCtx ? this.#lastCtxList : this.#byCtx.get(e.ctx)
    if (list === undefined) {
      list = { oldest: undefined, newest: undefined }
      this.#byCtx.set(e.ctx, list)
    }
    this.#lastCtx = e.ctx
    this.#lastCtxList = list
    e.cList = list
    e.cPrev = list.newest
    if (list.newest !== undefined) list.newest.cNext = e
    else list.oldest = e
    list.newest = e
    this.#outstanding++
    return e
  }

  /**
   * A doorbell write: the arbiter runs once the event loop has handled every socket that
   * was ready, so the writes of many requests and channels reach the engines as one batch
   * (one publish, at most one wake-up each). A microtask ran it after each socket's
   * callback instead: with 16 mediated requests in flight one request in two woke a
   * sleeping engine, against one in four or five this way (counted in the benchmark).
   */
  kick (written = 0): void {
    if (this.#pumpScheduled) return
    if (written >= PUMP_NOW_MIN && !this.#pumping && this.#finishNow < 0 && this.pool.pollerAwake) {
      // An awake engine costs nothing to hand work to, and the descriptors just written
      // are still in the CPU's cache: the arbiter runs now. Deferred, it ran after every
      // socket of the turn, by when 16 tenants' entries and ring slots had left the cache
      // (half of its time was those misses, tenth session).
      this.#pump()
      return
    }
    this.#pumpScheduled = true
    setImmediate(this.#pumpTask)
  }

  // --- the arbiter ---

  /**
   * Weighted round robin over the queues with work. A visit (Visit, hw-queue.ts) serves
   * a queue `priority` descriptors, and goes on while what it served is under `priority`
   * quanta (`arbiterQuantum` bytes of work each, a descriptor counting at least 512):
   * 128 NOOPs or 64-byte MEMMOVEs a quantum of 64 KiB, 16 jobs of 4 KiB, a single
   * 1 MiB one. Shares stay by priority; what changes is how many small descriptors of one
   * tenant go together. A descriptor at a time, 16 tenants' doorbell writes were dealt
   * out one by one, so nearly every completion (0.95-0.99 of them) changed port, tenant
   * and channel from the one before, and every write's last descriptor waited for all
   * the others' (twelfth session, bench/RESULTS.md). Only queues with work are visited
   * (scanning every queue cost a dozen steps per descriptor on a device of 16 queues with
   * one busy); one found empty leaves the list.
   */
  #next (): Entry | undefined {
    const busy = this.#busy
    // each queue with work is visited at most twice: once to refill its credit, once to take
    let visits = 0
    while (busy.length > 0 && visits <= 2 * busy.length) {
      if (this.#rr >= busy.length) this.#rr = 0
      const q = busy[this.#rr]
      if (q.pending === 0) {
        this.#unbusy()
        continue
      }
      visits++
      if (!visitOver(q, q.priority, q.quantum)) {
        const e = q.take()
        if (e !== undefined) {
          if (q.pending === 0) {
            // emptied: off the list now rather than on the next visit
            this.#unbusy()
          } else if (served(q, q.takenCost, q.priority, q.quantum)) {
            // The visit over: the next one begins now, and the next queue's turn, so the
            // next call starts at the queue it takes from, not one step before it.
            beginVisit(q, q.priority)
            this.#rr++
          }
          return e
        }
      }
      // the visit over, or held by a FENCE: the next queue's turn
      beginVisit(q, q.priority)
      this.#rr++
    }
    return undefined
  }

  /** The queue at the arbiter's place has nothing waiting: it leaves the list (#enqueue brings it back, with full credit). */
  #unbusy (): void {
    this.#busy[this.#rr].busy = false
    this.#busy.splice(this.#rr, 1)
  }

  #pump (): void {
    if (this.#pumping) return
    this.#pumping = true
    const jobs: DeviceJob[] = []
    try {
      while (this.#running < this.maxJobs && this.#runningBytes < this.maxJobBytes && this.#stalled.length === 0) {
        if (this.#inlineLeft <= 0) {
          // the rest after the event loop's turn (#pumpTask gives the budget back)
          if (!this.#pumpScheduled) {
            this.#pumpScheduled = true
            setImmediate(this.#pumpTask)
          }
          break
        }
        const e = this.#next()
        if (e === undefined) break
        this.#start(e, jobs)
      }
    } finally {
      this.#pumping = false
    }
    if (jobs.length > 0) this.#submitJobs(jobs)
  }

  #submitJobs (jobs: DeviceJob[]): void {
    const n = this.pool.submit(jobs)
    // the rings have their copies
    for (let i = 0; i < n; i++) this.#putJob(jobs[i])
    for (let i = n; i < jobs.length; i++) this.#stalled.push(jobs[i])
  }

  /** A job nothing refers to any more goes back for reuse, letting go of its descriptor. */
  #putJob (job: DeviceJob): void {
    job.args = NO_ARGS
    this.#spareJobs.push(job)
  }

  /** A job for the descriptor `d`, its buffers still to fill in. */
  #takeJob (d: Uint8Array): DeviceJob {
    const job = this.#spareJobs.pop() ?? {
      id: -1,
      opcode: 0,
      flags: 0,
      size: 0,
      dstSize: 0,
      args: NO_ARGS,
      argsAt: DESC.OP_ARGS,
      src: EMPTY,
      dst: EMPTY,
      key: undefined,
      iv: undefined,
      own: [{ addrs: [], lens: [] }, { addrs: [], lens: [] }, { addrs: [], lens: [] }, { addrs: [], lens: [] }]
    }
    job.id = -1
    job.opcode = d[DESC.OPCODE]
    job.flags = d[DESC.FLAGS]
    job.size = readU32(d, DESC.SIZE)
    job.dstSize = readU32(d, DESC.DST_SIZE)
    job.args = d
    job.src = EMPTY
    job.dst = EMPTY
    job.key = undefined
    job.iv = undefined
    return job
  }

  #resubmit (): void {
    if (this.#stalled.length === 0) return
    const jobs = this.#stalled.splice(0)
    this.#submitJobs(jobs)
    this.#pump()
  }

  // --- starting a descriptor ---

  #start (e: Entry, jobs: DeviceJob[]): void {
    e.state = 'translating'
    if (e.aborted) return this.#complete(e, Status.ABORTED)
    const d = e.desc
    const opcode = d[DESC.OPCODE]
    const st = validateInPlace(d, this.limits, e.parent !== undefined)
    if (st !== 0) return this.#complete(e, st)
    if (opcode === Opcode.DRAIN) {
      this.#drains.push(e)
      this.#checkDrains(e.ctx)
      return
    }
    if (opcode === Opcode.BATCH) return this.#startBatch(e, jobs)
    const job = this.#translate(e)
    if (job === 'async') {
      // A page request that throws must still answer the descriptor.
      this.#translateBlocking(e).catch(() => this.#complete(e, Status.ABORTED))
      return
    }
    if (job !== undefined) this.#dispatch(e, job, jobs)
  }

  /** To an engine, or, when the handoff would cost more than the work, run here (inlineBytes). */
  #dispatch (e: Entry, job: DeviceJob, jobs: DeviceJob[]): void {
    if (INLINE_OPS[job.opcode] === 1 && job.size <= this.config.inlineBytes && this.config.inlineBytes > 0) this.#runInline(e, job)
    else this.#run(e, job, jobs)
  }

  /**
   * Runs a small job on the front end's own thread, through the engines' code, and
   * finishes it with the engines' completions. Synchronous: its access ends before any
   * notifier can run, so nothing ever waits on it.
   */
  #runInline (e: Entry, job: DeviceJob): void {
    e.state = 'running'
    this.#inlineLeft--
    this.inlineJobs++
    let r: EngineResult
    try {
      r = runOp(this.mem.bytes, job)
    } catch (err) {
      // what an engine does with a job it throws on (a bug of the front end's, not the tenant's)
      r = ENGINE_ERROR
      this.pool.onError?.(`front end: ${(err as Error).message}`)
    }
    this.#putJob(job)
    this.#finish(e, r)
  }

  #run (e: Entry, job: DeviceJob, jobs: DeviceJob[]): void {
    job.id = this.#freeJobs.length > 0 ? this.#freeJobs.pop() as number : this.#jobs.length
    e.state = 'running'
    const access = e.access
    if (access !== undefined) {
      access.state = 'running'
      access.job = job.id
      access.wait = this.#waitAccess
    }
    e.job = job.id
    e.jobBytes = job.size
    this.#jobs[job.id] = e
    this.#running++
    this.#runningBytes += job.size
    jobs.push(job)
  }

  /**
   * Translates the descriptor's buffers, holding every frame it reaches. Answers the
   * engine job, undefined when the descriptor already completed (a fault with no work to
   * do), or 'async' when a BLOCK_ON_FAULT page request is needed.
   */
  #translate (e: Entry): DeviceJob | undefined | 'async' {
    const d = e.desc
    this.#releaseAccess(e)
    e.srcFault = undefined
    e.dstFaultCode = 0
    const job = this.#takeJob(d)
    const opcode = job.opcode
    // A NOOP reaches no memory: nothing for an invalidation to wait for, so no access.
    if (opcode === Opcode.NOOP) return job
    const access = this.iommu.beginAccess(e.ctx)
    e.access = access
    const blocking = (job.flags & Flag.BLOCK_ON_FAULT) !== 0
    // Streaming ops run the prefix before a source fault; the others need all their input.
    const streaming = opcode === Opcode.MEMMOVE || opcode === Opcode.COMPARE || opcode === Opcode.CRC32
    const regions = regionsInto(d, this.config.maxTransferSize, this.#regions)
    for (let i = 0; i < regions.n; i++) {
      const role = regions.role[i]
      const va = regions.va[i]
      const write = regions.write[i] === 1
      // MEMMOVE, FILL and COMPARE reach only as far into dst as the source went
      const len = role === Role.DST && opcode <= Opcode.COMPARE ? Math.min(regions.len[i], job.size) : regions.len[i]
      if (len === 0) continue
      const sg = job.own[role]
      const done = (va & (PAGE_SIZE - 1)) + len <= PAGE_SIZE
        ? this.iommu.holdInPage(this.iotlb, access, va, len, write, sg)
        : this.iommu.holdInto(this.iotlb, access, va, len, write, sg)
      const code = this.iommu.holdFault
      if (role === Role.KEY) job.key = sg
      else if (role === Role.IV) job.iv = sg
      else if (role === Role.SRC) job.src = sg
      else job.dst = sg
      if (code >= 0) continue
      if (blocking && code !== Xlate.NO_MAPPING) {
        this.#putJob(job)
        return 'async'
      }
      if (write) {
        // The engine finds whether the output reaches the fault; remember what it was.
        e.dstFaultCode = code
      } else if ((role === Role.SRC || role === Role.DST) && streaming && done > 0) {
        // a source (or COMPARE's second source) faulted part way: run the prefix
        e.srcFault = { addr: va + done, info: code === Xlate.NO_MAPPING ? FaultInfo.NO_MAPPING : 0, done }
        job.size = done
      } else {
        this.#putJob(job)
        this.#fault(e, va + done, regions.field[i], false, code, 0)
        return undefined
      }
    }
    return job
  }

  /** The entry's device access ends: its frames go back, a notifier waiting on it may go on. */
  #releaseAccess (e: Entry): void {
    const a = e.access
    if (a === undefined) return
    e.access = undefined
    a.release()
  }

  /** BLOCK_ON_FAULT: page requests until the buffers translate, then the engine. */
  async #translateBlocking (e: Entry): Promise<void> {
    for (let i = 0; i < MAX_PAGE_REQUESTS; i++) {
      const fault = this.#firstFault(e)
      this.#releaseAccess(e)
      if (fault === undefined) break
      const served = await this.iommu.pageRequest(e.ctx, fault.va, fault.write)
      this.iommu.reportFault(e.ctx, exactFaultAddr(e.desc, fault.field, fault.va), fault.write, fault.code, this.id, served)
      if (e.aborted || this.#closed) return this.#complete(e, Status.ABORTED)
      if (!served) {
        this.#fault(e, fault.va, fault.field, fault.write, fault.code, 0, false)
        return
      }
    }
    const job = this.#translate(e)
    if (job === 'async') {
      // still faulting after the page requests: report instead of spinning
      const fault = this.#firstFault(e)
      this.#releaseAccess(e)
      if (fault !== undefined) this.#fault(e, fault.va, fault.field, fault.write, fault.code, 0)
      else this.#complete(e, Status.ABORTED)
      return
    }
    if (job === undefined) return
    const jobs: DeviceJob[] = []
    this.#dispatch(e, job, jobs)
    if (jobs.length > 0) this.#submitJobs(jobs)
  }

  /** Walks the descriptor's buffers and answers the first untranslatable page. */
  #firstFault (e: Entry): { va: number, field: number, write: boolean, code: number } | undefined {
    for (const { va, field, len, write } of descriptorRegions(e.desc, this.config.maxTransferSize)) {
      for (let off = 0; off < len;) {
        const code = this.iotlb.translate(e.ctx, va + off, write)
        if (code < 0) return { va: va + off, field, write, code }
        off += PAGE_SIZE - ((va + off) % PAGE_SIZE)
      }
    }
    return undefined
  }

  /**
   * Completes PAGE_FAULT and counts it against the queue (isolation). `field`: the
   * descriptor offset of the address that faulted, whose exact bytes are the record's
   * fault_addr when it is 2**53 or more (no number holds it).
   */
  #fault (e: Entry, va: number, field: number, write: boolean, code: number, done: number, report = true): void {
    const addr = exactFaultAddr(e.desc, field, va)
    if (report) this.iommu.reportFault(e.ctx, addr, write, code, this.id, false)
    const info = (write ? FaultInfo.WRITE : 0) | (code === Xlate.NO_MAPPING ? FaultInfo.NO_MAPPING : 0)
    this.#complete(e, Status.PAGE_FAULT, 0, info, done, addr, 0)
  }

  #startBatch (e: Entry, jobs: DeviceJob[], pageRequests = 0): void {
    const count = readU32(e.desc, DESC.SIZE)
    const src = readAddr(e.desc, DESC.SRC)
    e.access = this.iommu.beginAccess(e.ctx)
    const sg: SgList = { addrs: [], lens: [] }
    const done = this.iommu.holdInto(this.iotlb, e.access, src, count * DESC_SIZE, false, sg)
    const code = this.iommu.holdFault
    if (code < 0) {
      this.#releaseAccess(e)
      // The array is read like any source: BLOCK_ON_FAULT asks for its pages first.
      if ((e.desc[DESC.FLAGS] & Flag.BLOCK_ON_FAULT) !== 0 && code !== Xlate.NO_MAPPING && pageRequests < MAX_PAGE_REQUESTS) {
        this.#batchPageRequest(e, src + done, code, pageRequests + 1).catch(() => this.#complete(e, Status.ABORTED))
        return
      }
      return this.#fault(e, src + done, DESC.SRC, false, code, 0)
    }
    // The device reads the whole array once, into its own memory.
    const members = new Uint8Array(count * DESC_SIZE)
    let off = 0
    for (let i = 0; i < sg.addrs.length; i++) {
      copyOut(members, off, this.mem.bytes, sg.addrs[i], sg.lens[i])
      off += sg.lens[i]
    }
    this.#releaseAccess(e)
    e.state = 'running'
    e.children = count
    const port = e.port
    for (let i = 0; i < count; i++) {
      const desc = members.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE)
      writeU32(desc, DESC.PASID, port.pasid)
      const child = this.#newEntry(e.queue, port, desc, -1, undefined, e, e.t0)
      this.#start(child, jobs)
    }
  }

  async #batchPageRequest (e: Entry, va: number, code: number, pageRequests: number): Promise<void> {
    const served = await this.iommu.pageRequest(e.ctx, va, false)
    this.iommu.reportFault(e.ctx, va, false, code, this.id, served)
    if (e.aborted || this.#closed) return this.#complete(e, Status.ABORTED)
    if (!served) return this.#fault(e, va, DESC.SRC, false, code, 0, false)
    const jobs: DeviceJob[] = []
    this.#startBatch(e, jobs, pageRequests)
    if (jobs.length > 0) this.#submitJobs(jobs)
  }

  // --- completion ---

  #onEngine (id: number, r: EngineResult): void {
    const e = this.#jobs[id]
    if (e === undefined) return
    this.#unrun(e)
    this.#finish(e, r)
  }

  /** The job is done with its frames (a notifier waiting on its access may go on); #finishAll completes it. */
  #finish (e: Entry, r: EngineResult): void {
    this.#releaseAccess(e)
    e.engine = r
    this.#finished[this.#finishedCount++] = e
    if (!this.#finishScheduled) {
      this.#finishScheduled = true
      // Not from inside a notifier's wait: records and new work wait for the current change.
      queueMicrotask(this.#finishTask)
    }
  }

  /** The entry's job left the engines (done, or aborted before they took it): its slot is free. */
  #unrun (e: Entry): void {
    this.#jobs[e.job] = undefined
    this.#freeJobs.push(e.job)
    e.job = -1
    this.#running--
    this.#runningBytes -= e.jobBytes
    e.jobBytes = 0
  }

  #finishAll (): void {
    this.#finishScheduled = false
    // one clock read for the latencies of the whole batch
    this.#finishNow = performance.now()
    // the other array: completions that arrive meanwhile wait for the next task
    const done = this.#finished
    const n = this.#finishedCount
    this.#finished = this.#finishedSpare
    this.#finishedCount = 0
    try {
      for (let i = 0; i < n; i++) {
        const e = done[i] as Entry
        done[i] = undefined
        const r = e.engine as EngineResult
        e.engine = undefined
        const d = e.desc
        if (r.status === Status.PAGE_FAULT && e.dstFaultCode < 0) {
          const va = exactFaultAddr(d, DESC.DST, readAddr(d, DESC.DST) + r.value)
          this.iommu.reportFault(e.ctx, va, true, e.dstFaultCode, this.id, false)
          const info = FaultInfo.WRITE | (e.dstFaultCode === Xlate.NO_MAPPING ? FaultInfo.NO_MAPPING : 0)
          this.#complete(e, Status.PAGE_FAULT, r.result, info, r.bytesCompleted, va, 0)
        } else if (e.srcFault !== undefined && r.status === Status.SUCCESS && !(d[DESC.OPCODE] === Opcode.COMPARE && r.result === 1)) {
          const f = e.srcFault
          this.iommu.reportFault(e.ctx, f.addr, false, f.info !== 0 ? Xlate.NO_MAPPING : Xlate.NOT_PRESENT, this.id, false)
          this.#complete(e, Status.PAGE_FAULT, 0, f.info, f.done, f.addr, r.value)
        } else {
          const bytes = d[DESC.OPCODE] === Opcode.FILL ? readU32(d, DESC.SIZE) : r.bytesCompleted
          this.#complete(e, r.status, r.result, 0, bytes, 0, r.value)
        }
      }
    } finally {
      this.#finishNow = -1
      this.#finishedSpare = done
    }
    this.#pump()
  }

  /** The one completion of an entry: record to memory if asked, the port, the batch, drains. */
  #complete (e: Entry, status: number, result = 0, faultInfo = 0, bytesCompleted = 0, faultAddr: number | bigint = 0, value = 0): void {
    if (e.state === 'done') return
    if (e.aborted && status !== Status.ABORTED) {
      status = Status.ABORTED
      result = faultInfo = faultAddr = value = 0
    }
    e.state = 'done'
    this.#releaseAccess(e)
    const d = e.desc
    const flags = d[DESC.FLAGS]
    const opcode = d[DESC.OPCODE]
    const tagLo = readU32(d, DESC.TAG)
    const tagHi = readU32(d, DESC.TAG + 4)
    const q = e.queue
    const parent = e.parent
    const token = e.token
    const port = e.port
    const write = recordAddr(d)
    const writeExact = write !== 0 ? exactFaultAddr(d, DESC.COMPLETION_ADDR, write) : 0
    // The ring slot (and so `d`) is free once the entry is retired; retiring may also
    // complete a DRAIN, so the shared record is filled only after it.
    this.#retire(e)
    if (status === Status.PAGE_FAULT && q.recordFault(Date.now(), this.config.isolateStrategy.faults, this.config.isolateStrategy.windowMs)) {
      q.setState(QueueState.ISOLATED, `more than ${this.config.isolateStrategy.faults} faults in ${this.config.isolateStrategy.windowMs} ms`)
    }
    if (status === Status.SUCCESS) q.counters.bytes += bytesCompleted
    if (status === Status.ABORTED) q.counters.aborted++
    if (this.observer !== undefined) {
      const now = this.#finishNow >= 0 ? this.#finishNow : performance.now()
      this.observer(q, port, status, opcode, bytesCompleted, (now - e.t0) * 1e6)
    }
    // Through a DataView: writeU32 and writeU64 (with its range checks) were calls
    // V8 did not inline, six per completion.
    const record = this.#record
    const rv = this.#recordView
    record[CR.RESULT] = result
    record[CR.FAULT_INFO] = faultInfo
    record[CR.RESERVED] = 0
    rv.setUint32(CR.BYTES_COMPLETED, bytesCompleted, true)
    if (typeof faultAddr === 'bigint') {
      writeU64(record, CR.FAULT_ADDR, faultAddr)
    } else {
      // `>>> 0`: the low word (a floating-point `% 2**32` cost five times as much)
      rv.setUint32(CR.FAULT_ADDR, faultAddr >>> 0, true)
      rv.setUint32(CR.FAULT_ADDR + 4, Math.floor(faultAddr / TWO_32), true)
    }
    rv.setUint32(CR.TAG, tagLo, true)
    rv.setUint32(CR.TAG + 4, tagHi, true)
    rv.setUint32(CR.VALUE, value >>> 0, true)
    rv.setUint32(CR.VALUE + 4, Math.floor(value / TWO_32), true)
    record[CR.STATUS] = status
    if (write !== 0 && this.#writeRecord(e.ctx, write, writeExact, record, token, port, flags, parent, status)) return
    this.#deliver(record, token, port, flags, parent, status)
  }

  /** The port (or the submitter's callback) hears of a completion; a batch hears of its member. */
  #deliver (record: Uint8Array, token: unknown, port: QueuePort, flags: number, parent: Entry | undefined, status: number): void {
    if (typeof token === 'function') (token as CompletionCallback)(record)
    else if (!port.closed) port.listener.completion(record, flags)
    if (parent !== undefined) {
      if (status !== Status.SUCCESS) parent.failedChildren++
      if (--parent.children === 0) {
        const failed = parent.failedChildren
        this.#complete(parent, failed === 0 ? Status.SUCCESS : Status.BATCH_FAILED, 0, 0, 0, 0, failed)
      }
    }
  }

  #retire (e: Entry): void {
    const q = e.queue
    if (e.parent === undefined) {
      q.retire(e)
      q.counters.completed++
    }
    const list = e.cList
    if (list !== undefined) {
      if (e.cPrev !== undefined) e.cPrev.cNext = e.cNext
      else list.oldest = e.cNext
      if (e.cNext !== undefined) e.cNext.cPrev = e.cPrev
      else list.newest = e.cPrev
      e.cPrev = e.cNext = undefined
      e.cList = undefined
      if (list.oldest === undefined && this.#byCtx.size > KEEP_EMPTY_CTX_LISTS) {
        this.#byCtx.delete(e.ctx)
        if (this.#lastCtxList === list) {
          this.#lastCtxList = undefined
          this.#lastCtx = -1
        }
      }
    }
    this.#outstanding--
    if (this.#drains.length > 0) this.#checkDrains(e.ctx)
    if (this.#outstanding === 0) for (const w of this.#idleWaiters.splice(0)) w()
    // A completion off the engines' path (after a page request, a record that waited for
    // one, a reset) may be what a FENCE behind it waits for: the arbiter must look again.
    // Inside the arbiter, or a batch of engine completions that ends in it, it will.
    if (!this.#pumping && this.#finishNow < 0) this.kick()
  }

  /** A DRAIN completes once nothing accepted before it under its PASID is outstanding. */
  #checkDrains (ctx: number): void {
    for (let i = 0; i < this.#drains.length; i++) {
      const dr = this.#drains[i]
      if (dr.ctx !== ctx) continue
      if (dr.aborted || !this.#anyEarlier(dr)) {
        this.#drains.splice(i, 1)
        this.#complete(dr, dr.aborted ? Status.ABORTED : Status.SUCCESS)
        return
      }
    }
  }

  /**
   * Whether anything accepted before the DRAIN `dr` under its PASID is outstanding. A
   * member of a BATCH was accepted with its batch: what came before the batch, and the
   * members before it, are earlier; the batch itself is not, for it waits on the DRAIN.
   * The context list is in creation order, and members are created when their batch
   * starts, after later descriptors may have been accepted, so the order is decided by
   * sequence numbers, not by place in the list. The walk stops at the first earlier
   * entry, which is usually the oldest.
   */
  #anyEarlier (dr: Entry): boolean {
    const parent = dr.parent
    const at = parent !== undefined ? parent.seq : dr.seq
    for (let x = dr.cList?.oldest; x !== undefined; x = x.cNext) {
      if (x === dr || x === parent) continue
      const xAt = x.parent !== undefined ? x.parent.seq : x.seq
      if (xAt < at || (parent !== undefined && x.parent === parent && x.seq < dr.seq)) return true
    }
    return false
  }

  /**
   * Body first, status byte last (PROTOCOL.md section 2). Answers true when the record
   * waits for a page request: the port hears of it after that, not from the caller.
   */
  #writeRecord (ctx: number, va: number, vaExact: number | bigint, record: Uint8Array, token: unknown, port: QueuePort, flags: number, parent: Entry | undefined, status: number): boolean {
    if (this.#putRecord(ctx, va, record)) return false
    const code = this.iotlb.translate(ctx, va, true)
    if (code === Xlate.NO_MAPPING) {
      this.iommu.reportFault(ctx, vaExact, true, code, this.id, false)
      return false
    }
    const served = this.iommu.pageRequest(ctx, va, true)
    // delivered later: the shared record will hold other completions by then
    record = record.slice()
    const after = (ok: boolean): void => {
      if (!ok || !this.#putRecord(ctx, va, record)) this.iommu.reportFault(ctx, va, true, code, this.id, ok)
      this.#deliver(record, token, port, flags, parent, status)
    }
    served.then(after, () => after(false)).catch(() => {})
    return true
  }

  /** `va` is CR_ALIGN-aligned (recordAddr), so the record lies within one page. */
  #putRecord (ctx: number, va: number, record: Uint8Array): boolean {
    const frame = this.iotlb.translate(ctx, va, true)
    if (frame < 0) return false
    const at = frame * PAGE_SIZE + (va % PAGE_SIZE)
    const bytes = this.mem.bytes
    bytes[at + CR.STATUS] = 0
    bytes.set(record.subarray(1), at + 1)
    bytes[at + CR.STATUS] = record[CR.STATUS]
    return true
  }

  // --- resets, releases, isolation ---

  /** Aborts everything of the queue that has not completed; `release` frees it for reuse. */
  #abortQueue (q: HwQueue): void {
    this.#markAborted(e => e.queue === q)
    for (const e of q.takeAllPending()) this.#complete(e, Status.ABORTED)
    for (const dr of [...this.#drains]) if (dr.aborted) this.#checkDrains(dr.ctx)
    this.#stalled.splice(0, this.#stalled.length, ...this.#stalled.filter(j => {
      const e = this.#jobs[j.id]
      if (e === undefined || e.queue !== q) return true
      this.#unrun(e)
      this.#complete(e, Status.ABORTED)
      return false
    }))
  }

  /** Device reset: every descriptor in flight completes ABORTED; the queues come back running. */
  reset (reason = 'device reset'): void {
    for (const q of this.queues) q.setState(QueueState.RESETTING, reason)
    for (const q of this.queues) this.#abortQueue(q)
    this.iotlb.flushAll()
    for (const q of this.queues) {
      q.faultTimes.length = 0
      q.setState(QueueState.RUNNING, 'reset complete')
    }
  }

  /** A queue's release: its work is aborted, its ports closed, and it is free again. */
  releaseQueue (q: HwQueue, reason = 'queue released'): void {
    q.setState(QueueState.RELEASED, reason)
    this.#abortQueue(q)
    for (const port of [...q.ports]) port.close()
    if (q.mode !== 'shared') q.allocated = false
    q.faultTimes.length = 0
    q.state = QueueState.RUNNING
    q.stateReason = ''
  }

  /** Aborts the work one port submitted (its process exits, or it leaves a shared queue). */
  abortPort (port: QueuePort): void {
    const q = port.queue
    this.#markAborted(e => e.port === port)
    for (const e of q.takePending(port)) this.#complete(e, Status.ABORTED)
    for (const dr of [...this.#drains]) if (dr.aborted) this.#checkDrains(dr.ctx)
  }

  /** Flags every outstanding entry (batch members and descriptors awaiting page requests too). */
  #markAborted (match: (e: Entry) => boolean): void {
    for (const list of this.#byCtx.values()) {
      for (let e = list.oldest; e !== undefined; e = e.cNext) if (match(e)) e.aborted = true
    }
  }

  isolate (q: HwQueue, reason: string): void {
    q.setState(QueueState.ISOLATED, reason)
  }

  /** Fault injection (admin): counts `n` faults against the queue, as if descriptors had faulted. */
  injectFaults (q: HwQueue, n: number): void {
    const { faults, windowMs } = this.config.isolateStrategy
    for (let i = 0; i < n; i++) {
      if (q.recordFault(Date.now(), faults, windowMs)) q.setState(QueueState.ISOLATED, `more than ${faults} faults in ${windowMs} ms (injected)`)
    }
  }

  clearIsolation (q: HwQueue): boolean {
    if (q.state !== QueueState.ISOLATED) return false
    q.faultTimes.length = 0
    q.setState(QueueState.RUNNING, 'isolation cleared')
    this.#pump()
    return true
  }

  /** Resolves when nothing accepted is outstanding. */
  async drain (): Promise<void> {
    if (this.#outstanding === 0) return
    await new Promise<void>(resolve => this.#idleWaiters.push(resolve))
  }

  /** Stops accepting, drains, then stops the engines. */
  async close (): Promise<void> {
    if (this.#closed) return
    for (const q of this.queues) q.setState(QueueState.RELEASED, 'device shutting down')
    await this.drain()
    this.#closed = true
    await this.pool.close()
  }
}
