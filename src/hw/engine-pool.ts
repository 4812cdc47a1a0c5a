/**
 * The device's engines: worker threads fed through shared-memory rings, the way a DSA or
 * QAT engine is fed through descriptor rings and answers through completion rings
 * (DESIGN.md "Performance shape": batches through rings, not one postMessage per job).
 *
 * Per worker, two SharedArrayBuffers besides physical memory:
 * - the submission ring: variable-length entries of 32-bit words (a header, then the
 *   src/dst/key/iv segments, adjacent physical segments merged). The main thread writes
 *   a whole batch, publishes the tail once, rings the doorbell word once.
 * - the completion ring: fixed 32-byte entries (job id + EngineResult) in submission
 *   order. The worker publishes each and notifies once per drained batch; the main thread
 *   hears it through Atomics.waitAsync (its event loop never blocks) or, in waitJob,
 *   through a synchronous Atomics.wait.
 *
 * Positions are free-running 32-bit counters (words for submissions, entries for
 * completions) over power-of-two rings, so `tail - head` is the occupancy even across
 * the 2**32 wrap. The completion ring never overflows because the main thread keeps at
 * most `maxInflight` jobs (its entry count) outstanding per worker.
 *
 * Backpressure: `submit` accepts a prefix of the jobs it is given and returns its length;
 * the caller keeps the rest and may retry from `onSpace`. A job id must be unique among
 * the jobs in flight (any non-negative safe integer).
 *
 * Liveness: an idle, started pool does not hold the process open (its workers are
 * unref'd, and a pending Atomics.waitAsync holds nothing); a worker is ref'd while it
 * starts and while it has jobs in flight, so awaiting ready() or a completion keeps the
 * process alive. A worker that dies completes its outstanding jobs with ABORTED, so
 * every job still completes exactly once.
 */
import { extname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { Status, readU32 } from './descriptor.ts'
import type { EngineJob, EngineResult, Sg } from './engine-ops.ts'
import type { PhysMem } from './phys-mem.ts'

// Ring layout, shared with engine-worker.ts. Words written by the worker and words written
// by the main thread sit on different 64-byte lines.
export const RING_HEADER_BYTES = 128
export const SQ = {
  /** worker: words consumed */
  HEAD: 0,
  /** worker: WorkerState */
  STATE: 1,
  /** worker sets 1 before it sleeps on DOORBELL; the publish that takes it back to 0 wakes it */
  SLEEPING: 2,
  /** worker: sleeps whose wake-up never came, ended by the sleep's timeout with work waiting */
  LOST_WAKES: 3,
  /** main: words published */
  TAIL: 16,
  /** main: bumped after every publish and on stop; the word the worker sleeps on */
  DOORBELL: 17,
  /** main: 1 asks the worker to exit once the ring is empty */
  STOP: 18
} as const
export const CQ = {
  /** worker: entries published */
  TAIL: 0,
  /** main: entries consumed (informational: maxInflight already bounds the ring) */
  HEAD: 16
} as const
export const WorkerState = { STARTING: 0, RUNNING: 1, EXITED: 2 } as const

/** Submission entry header, in words; then 3 words (addr lo, addr hi, len) per segment. */
export const SE = {
  WORDS: 0,
  ID_LO: 1,
  ID_HI: 2,
  OP_FLAGS: 3,
  SIZE: 4,
  DST_SIZE: 5,
  ARGS: 6,
  NSRC: 10,
  NDST: 11,
  NKEY: 12,
  NIV: 13,
  HEADER_WORDS: 14,
  SEG_WORDS: 3
} as const

/** Completion entry, in words. */
export const CE = {
  ID_LO: 0,
  ID_HI: 1,
  STATUS_RESULT: 2,
  BYTES_COMPLETED: 3,
  VALUE_LO: 4,
  VALUE_HI: 5,
  WORDS: 8
} as const

export const DEFAULT_RING_BYTES = 1 << 20
export const DEFAULT_MAX_INFLIGHT = 4096
const TWO_32 = 2 ** 32
/**
 * How much lower than the main thread the engines run, in nice steps (each about 1.25x
 * less CPU share). The main thread feeds every engine and answers every tenant, and
 * it ran second to them: on two cores with two engines busy it waited for a core for
 * 8-13% of the time, the engines ran dry while it did, and SHA256 at 4 KiB went from
 * 54% of the bare rate to 60%, AES-256-GCM from 48% to 70%, when they ran at 5
 * (eleventh session, bench/RESULTS.md). A device's engines take no host CPU from the
 * driver that feeds them; here they at least yield it.
 */
export const ENGINE_NICE = 5
/** the default of EnginePoolOptions.notifyAfterMs */
const NOTIFY_AFTER_MS = 1
/** load a job adds beyond its bytes, so many tiny jobs still spread */
const JOB_COST = 512
/** how long waitJob sleeps before checking the worker is still alive */
const WAIT_SLICE_MS = 100
/**
 * How often the pool looks for completions an engine published and nobody delivered: one
 * still there a whole period later means its wake-up (the engine's notify, which resolves
 * the main thread's Atomics.waitAsync) never arrived, and the pool delivers it itself.
 * The engines' own sleeps have such a guard since a wake-up was lost once (SLEEP_SLICE_MS
 * in engine-worker.ts); without one here, a lost one would hold a worker's completions,
 * and every descriptor behind them, until its next announce, and after a last batch
 * for ever.
 */
const COMPLETION_WATCH_MS = 100
/**
 * Load (bytes, plus JOB_COST a job) the polling engine takes before the pool spreads work
 * over the others: 256 KiB is about 56 SHA256 jobs of 4 KiB or 512 NOOPs, a few hundred
 * microseconds of work for one engine.
 */
const POLL_LANE_LOAD = 256 * 1024
/**
 * Jobs of at most this many bytes go to the polling engine up to SMALL_JOB_LANE_LOAD: such
 * a job costs an engine less than its descriptor costs the main thread, so one engine
 * keeps up with them and a second adds nothing but wakes. Spread at POLL_LANE_LOAD, 64-byte
 * MEMMOVEs from 16 tenants woke engine 1 for every burst to run some 50 of them (7,000
 * wakes in 3 s, tenth session).
 */
const SMALL_JOB_BYTES = 1024
/** the polling engine's load up to which it takes small jobs; past it they spread as others do */
const SMALL_JOB_LANE_LOAD = 1024 * 1024

/** An engine job and the id its completion answers with (`argsAt`: EngineJob). */
export type PoolJob = EngineJob & { id: number }
export type CompleteFn = (jobId: number, result: EngineResult) => void

export interface EnginePoolOptions {
  mem: PhysMem | SharedArrayBuffer
  workers: number
  /** submission ring data bytes per worker, a power of two >= 4096 (default 1 MiB) */
  ringBytes?: number
  /** jobs outstanding per worker; sizes the completion ring (rounded up to a power of two) */
  maxInflight?: number
  onComplete?: CompleteFn
  /** where the free-running ring positions start; tests set it near 2**31 to cross the wrap */
  ringStart?: number
  /**
   * Microseconds engine 0 keeps polling its ring after its last job before it sleeps
   * (default 0: every engine sleeps as soon as its ring is empty). With it, the pool gives
   * engine 0 the work first (up to POLL_LANE_LOAD); while it polls, a publish to it needs
   * no futex wake.
   */
  pollUs?: number
  /**
   * Poll even while the machine has more runnable threads than cores (default false:
   * the polling engine then sleeps instead). Tests of the polling itself set it, so that
   * the machine's other load cannot change what they see.
   */
  pollContended?: boolean
  /**
   * How far below the thread that creates the pool its engines run: each engine raises
   * its own nice value by this much (default ENGINE_NICE; 0 leaves it).
   */
  nice?: number
  /**
   * How long an engine runs a batch before it announces what it has done so far, and
   * then again each time (default NOTIFY_AFTER_MS), so that a waiter (waitJob, an mmu
   * notifier) is not held by later work. Tests set it long to see the halfway announce
   * alone.
   */
  notifyAfterMs?: number
}

export interface WorkerStats {
  submitted: number
  completed: number
  inflight: number
  /** submissions published: one doorbell each */
  batches: number
  /** publishes that found the engine asleep and paid a futex wake */
  wakes: number
  /** wake-ups that never reached the sleeping engine, which found its work when its sleep timed out */
  lostWakes: number
  /**
   * watches (COMPLETION_WATCH_MS) that found completions published a period earlier and
   * still undelivered, and delivered them: an announce that never reached the main
   * thread, or a main thread busy for that long
   */
  lateDrains: number
  /** jobs the engine threw on (a caller bug), completed ABORTED */
  errors: number
  alive: boolean
  /** the engine thread's nice value, as it read it back once started; null until then, or where the platform does not say */
  nice: number | null
}

export interface PoolStats {
  submitted: number
  completed: number
  inflight: number
  batches: number
  wakes: number
  lostWakes: number
  lateDrains: number
  errors: number
  workers: WorkerStats[]
}

/**
 * FIFO of the jobs a worker holds, in submission order (its completion order): a ring
 * over typed arrays, at most `maxInflight` long, so pushing and shifting allocate nothing.
 */
class Fifo {
  readonly ids: Float64Array
  readonly costs: Float64Array
  readonly #mask: number
  head = 0
  tail = 0
  constructor (capacity: number) {
    this.ids = new Float64Array(capacity)
    this.costs = new Float64Array(capacity)
    this.#mask = capacity - 1
  }

  get length (): number { return this.tail - this.head }
  push (id: number, cost: number): void {
    const at = this.tail++ & this.#mask
    this.ids[at] = id
    this.costs[at] = cost
  }

  /** the oldest job's id; its cost is `frontCost` until the shift */
  get front (): number { return this.ids[this.head & this.#mask] }
  get frontCost (): number { return this.costs[this.head & this.#mask] }
  shift (): void { this.head++ }
}

const EMPTY_KEY = -1
/** a job id taken by a submit still checking its batch */
const RESERVED = -2
/** IdMap's dense values are stored this much up, so that 0 is none and RESERVED is 1 */
const DENSE_BIAS = 1 - RESERVED
/**
 * Job ids below this are indexed directly (IdMap): room for the device's job slots (256
 * an engine, plus what page requests and batches start past that) on up to 64 engines;
 * 64 KiB per pool. Ids past it still work, through the hash table.
 */
const DENSE_IDS = 1 << 14

/**
 * Job id to lane index (or RESERVED). Ids under `denseIds` are looked up directly in a
 * typed array: the device numbers its jobs by slot, small and reused, and three probes of
 * the hash table per job (reserve, place, retire) stood at the top of a line-level
 * profile of 16 doorbell tenants (tenth session). Other ids go to open
 * addressing with linear probing over typed arrays; a Map there grew and shrank with every
 * burst of jobs (V8 shrinks a Map that falls under half full), rehashing each time.
 */
export class IdMap {
  #keys: Float64Array
  #vals: Int32Array
  #mask: number
  /** value + DENSE_BIAS per id under its length; 0 for none */
  readonly #dense: Int32Array
  size = 0

  constructor (capacity = 1024, denseIds = 0) {
    const cap = 2 ** Math.max(4, Math.ceil(Math.log2(capacity)))
    this.#keys = new Float64Array(cap).fill(EMPTY_KEY)
    this.#vals = new Int32Array(cap)
    this.#mask = cap - 1
    this.#dense = new Int32Array(denseIds)
  }

  /** whether `id` is a dense one: a whole number under the dense array's length */
  #isDense (id: number): boolean {
    return id >= 0 && id < this.#dense.length && (id | 0) === id
  }

  #home (id: number): number {
    // ToUint32 is the id modulo 2**32: low and high words of any safe integer
    return (Math.imul((id >>> 0) ^ Math.imul((id / TWO_32) >>> 0, 0x27d4eb2d), 0x9e3779b1) >>> 0) & this.#mask
  }

  #find (id: number): number {
    const keys = this.#keys
    for (let i = this.#home(id); ; i = (i + 1) & this.#mask) {
      const k = keys[i]
      if (k === id) return i
      if (k === EMPTY_KEY) return -1 - i
    }
  }

  /** the value, or -1 when absent */
  get (id: number): number {
    if (this.#isDense(id)) {
      const v = this.#dense[id]
      return v === 0 ? -1 : v - DENSE_BIAS
    }
    const i = this.#find(id)
    return i >= 0 ? this.#vals[i] : -1
  }

  has (id: number): boolean {
    return this.#isDense(id) ? this.#dense[id] !== 0 : this.#find(id) >= 0
  }

  /** `value` is RESERVED or more */
  set (id: number, value: number): void {
    if (this.#isDense(id)) {
      if (this.#dense[id] === 0) this.size++
      this.#dense[id] = value + DENSE_BIAS
      return
    }
    let i = this.#find(id)
    if (i < 0) {
      if ((this.size + 1) * 2 > this.#mask + 1) {
        this.#grow()
        i = this.#find(id)
      }
      i = -1 - i
      this.#keys[i] = id
      this.size++
    }
    this.#vals[i] = value
  }

  delete (id: number): boolean {
    if (this.#isDense(id)) {
      if (this.#dense[id] === 0) return false
      this.#dense[id] = 0
      this.size--
      return true
    }
    let i = this.#find(id)
    if (i < 0) return false
    this.size--
    // backward shift: close the gap so every later key stays reachable from its home
    const keys = this.#keys
    const mask = this.#mask
    for (let j = (i + 1) & mask; keys[j] !== EMPTY_KEY; j = (j + 1) & mask) {
      const h = this.#home(keys[j])
      const stays = i <= j ? (i < h && h <= j) : (i < h || h <= j)
      if (stays) continue
      keys[i] = keys[j]
      this.#vals[i] = this.#vals[j]
      i = j
    }
    keys[i] = EMPTY_KEY
    return true
  }

  #grow (): void {
    const keys = this.#keys
    const vals = this.#vals
    const cap = (this.#mask + 1) * 2
    this.#keys = new Float64Array(cap).fill(EMPTY_KEY)
    this.#vals = new Int32Array(cap)
    this.#mask = cap - 1
    this.size = 0
    for (let i = 0; i < keys.length; i++) if (keys[i] !== EMPTY_KEY) this.set(keys[i], vals[i])
  }
}

interface Lane {
  index: number
  worker: Worker
  sqh: Int32Array
  sqd: Uint32Array
  sqMask: number
  /** words written, published or not */
  sqTail: number
  sqPublished: number
  /** the worker's consumed position, as last read */
  sqHeadSeen: number
  cqh: Int32Array
  cqd: Uint32Array
  cqMask: number
  cqHead: number
  fifo: Fifo
  load: number
  /** appended to by the submit under way, to be published at its end */
  touched: boolean
  alive: boolean
  armed: boolean
  /** counts the waits armed: a wait superseded by a later one (the watch re-arms) is ignored */
  armGen: number
  /** the completion tail as the last watch saw it */
  watchTail: number
  lateDrains: number
  ready: boolean
  submitted: number
  completed: number
  batches: number
  wakes: number
  errors: number
  nice: number | null
}

function isPow2 (n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0
}

function mergedCount (sg: Sg | undefined): number {
  if (sg === undefined) return 0
  let n = 0
  let end = -1
  for (let i = 0; i < sg.lens.length; i++) {
    const l = sg.lens[i]
    if (l === 0) continue
    if (sg.addrs[i] !== end) n++
    end = sg.addrs[i] + l
  }
  return n
}

/**
 * Writes an Sg's segments at word `p` of ring `d` (mask `m`), adjacent ones merged, and
 * their count at word `countAt`; answers the word after them. (A module function, not a
 * closure per job: closures in the hot path cost an allocation each.)
 */
function appendSegs (d: Uint32Array, m: number, p: number, sg: Sg | undefined, countAt: number): number {
  let n = 0
  if (sg !== undefined) {
    let end = -1
    let lenAt = -1
    for (let i = 0; i < sg.lens.length; i++) {
      const l = sg.lens[i]
      if (l === 0) continue
      const addr = sg.addrs[i]
      if (addr === end) {
        d[lenAt & m] += l
      } else {
        // `>>> 0` is ToUint32, the low word of a non-negative safe integer: `% 2**32` on a
        // double is a floating-point remainder, about five times as slow (twelfth session)
        d[p & m] = addr >>> 0
        d[(p + 1) & m] = Math.floor(addr / TWO_32)
        d[(p + 2) & m] = l
        lenAt = p + 2
        p += SE.SEG_WORDS
        n++
      }
      end = addr + l
    }
  }
  d[countAt & m] = n
  return p
}

export function entryWords (job: EngineJob): number {
  return SE.HEADER_WORDS + SE.SEG_WORDS *
    (mergedCount(job.src) + mergedCount(job.dst) + mergedCount(job.key) + mergedCount(job.iv))
}

/**
 * entryWords or more, without its pass over the segments: the device's lists come merged
 * already (Iommu.holdInto, holdInPage), so this is nearly always exact, and a ring that
 * cannot take it is asked again with the exact count. The pass per job was 1.1% of the
 * main thread in the doorbell's 16-tenant MEMMOVE case (fourteenth session).
 */
function entryWordsBound (job: EngineJob): number {
  return SE.HEADER_WORDS + SE.SEG_WORDS *
    (job.src.lens.length + job.dst.lens.length + (job.key?.lens.length ?? 0) + (job.iv?.lens.length ?? 0))
}

/**
 * The worker entry is our sibling with our own extension: .js once compiled, .ts under
 * tsx. On Node 20, tsx's --import hooks register in the main thread only (its
 * isMainThread guard; workers inherit them from Node 22.22 on), so a .ts engine starts
 * from a two-line bootstrap that registers tsx's loader through its API, then imports it.
 */
function workerSpawner (): (data: unknown, name: string) => Worker {
  const here = fileURLToPath(import.meta.url)
  const ext = extname(here)
  const entry = new URL('./engine-worker' + ext, import.meta.url)
  if (ext !== '.ts') return (workerData, name) => new Worker(entry, { workerData, name })
  const api = import.meta.resolve('tsx/esm/api')
  const boot = `import(${JSON.stringify(api)}).then(m => { m.register(); return import(${JSON.stringify(entry.href)}) })`
  return (workerData, name) => new Worker(boot, { eval: true, workerData, name })
}

/**
 * Keeps the event loop alive until `p` settles. A worker stopped while still starting up
 * does not hold the loop until its 'exit' arrives (seen on Node 20), so a process
 * awaiting terminate() could otherwise end first.
 */
async function held<T> (p: Promise<T>): Promise<T> {
  const hold = setInterval(() => {}, 2 ** 31 - 1)
  try {
    return await p
  } finally {
    clearInterval(hold)
  }
}

// Node 20 has Atomics.waitAsync; the ES2023 lib this project compiles against does not declare it.
type AsyncWait = (a: Int32Array, i: number, v: number) =>
  { async: false, value: 'not-equal' | 'timed-out' } | { async: true, value: Promise<'ok' | 'timed-out'> }

export class EnginePool {
  onComplete: CompleteFn
  /** called after completions free room, when a submit since the last call was cut short */
  onSpace?: () => void
  /** called when an engine reports a job it threw on, or a worker dies */
  onError?: (message: string, jobId?: number) => void
  readonly workers: number
  readonly maxInflight: number
  readonly ringBytes: number
  readonly #lanes: Lane[] = []
  /** the polling engine's lane, when the pool has one */
  readonly #poller: Lane | undefined
  readonly #where = new IdMap(1024, DENSE_IDS)
  /** entry words of the jobs of the submit under way */
  #words: number[] = []
  #rr = 0
  #short = false
  #closing: Promise<void> | undefined
  #closed = false
  #idle: (() => void) | undefined
  readonly #ready: Promise<void>
  /** COMPLETION_WATCH_MS; unref'd, so it never holds the process open */
  readonly #watch: NodeJS.Timeout

  constructor (opts: EnginePoolOptions) {
    const mem = opts.mem instanceof SharedArrayBuffer ? opts.mem : opts.mem.sab
    if (!Number.isSafeInteger(opts.workers) || opts.workers < 1) throw new RangeError('workers must be >= 1')
    this.ringBytes = opts.ringBytes ?? DEFAULT_RING_BYTES
    if (!isPow2(this.ringBytes) || this.ringBytes < 4096) throw new RangeError('ringBytes must be a power of two >= 4096')
    const want = opts.maxInflight ?? DEFAULT_MAX_INFLIGHT
    if (!Number.isSafeInteger(want) || want < 1) throw new RangeError('maxInflight must be >= 1')
    this.maxInflight = want
    const cqEntries = 2 ** Math.ceil(Math.log2(want))
    this.workers = opts.workers
    this.onComplete = opts.onComplete ?? (() => {})
    const start = (opts.ringStart ?? 0) | 0
    const pollUs = opts.pollUs ?? 0
    if (!Number.isFinite(pollUs) || pollUs < 0) throw new RangeError('pollUs must be >= 0')
    const nice = opts.nice ?? ENGINE_NICE
    if (!Number.isInteger(nice) || nice < 0) throw new RangeError('nice must be an integer >= 0')
    const notifyAfterMs = opts.notifyAfterMs ?? NOTIFY_AFTER_MS
    if (!(notifyAfterMs > 0)) throw new RangeError('notifyAfterMs must be > 0')
    const spawn = workerSpawner()
    const readies: Promise<void>[] = []
    const sqs = Array.from({ length: opts.workers }, () => new SharedArrayBuffer(RING_HEADER_BYTES + this.ringBytes))
    for (let i = 0; i < opts.workers; i++) {
      const sq = sqs[i]
      const cq = new SharedArrayBuffer(RING_HEADER_BYTES + cqEntries * CE.WORDS * 4)
      const sqh = new Int32Array(sq, 0, RING_HEADER_BYTES / 4)
      const cqh = new Int32Array(cq, 0, RING_HEADER_BYTES / 4)
      // before the worker exists, so it starts from the same positions
      sqh[SQ.HEAD] = sqh[SQ.TAIL] = cqh[CQ.TAIL] = cqh[CQ.HEAD] = start
      const pollMs = i === 0 ? pollUs / 1000 : 0
      const peers = pollMs > 0 ? sqs.filter((_, k) => k !== i) : []
      const worker = spawn({ mem, sq, cq, index: i, pollMs, peers, pollContended: opts.pollContended === true, nice, notifyAfterMs }, `engine-${i}`)
      const lane: Lane = {
        index: i,
        worker,
        sqh,
        sqd: new Uint32Array(sq, RING_HEADER_BYTES),
        sqMask: this.ringBytes / 4 - 1,
        sqTail: start,
        sqPublished: start,
        sqHeadSeen: start,
        cqh,
        cqd: new Uint32Array(cq, RING_HEADER_BYTES),
        cqMask: cqEntries - 1,
        cqHead: start,
        fifo: new Fifo(cqEntries),
        load: 0,
        touched: false,
        alive: true,
        armed: false,
        armGen: 0,
        watchTail: start,
        lateDrains: 0,
        ready: false,
        submitted: 0,
        completed: 0,
        batches: 0,
        wakes: 0,
        errors: 0,
        nice: null
      }
      this.#lanes.push(lane)
      readies.push(new Promise((resolve, reject) => {
        worker.on('message', (m: { type: string, id?: number, message?: string, nice?: number }) => {
          if (m.type === 'ready') {
            lane.nice = m.nice ?? null
            lane.ready = true
            this.#updateRef(lane)
            resolve()
          } else if (m.type === 'error') {
            lane.errors++
            this.onError?.(m.message ?? 'engine error', m.id)
          }
        })
        worker.on('error', (e) => {
          reject(e)
          this.#fail(lane, `engine ${i} failed: ${e.message}`)
        })
        worker.on('exit', (code) => {
          const msg = `engine ${i} exited with code ${code}`
          reject(new Error(msg))
          if (!this.#closed) this.#fail(lane, msg)
        })
      }))
      this.#arm(lane)
    }
    this.#poller = pollUs > 0 ? this.#lanes[0] : undefined
    this.#watch = setInterval(() => this.#watchLanes(), COMPLETION_WATCH_MS).unref()
    this.#ready = Promise.all(readies).then(() => {})
    // a worker that fails to start rejects ready(); that is reported there and through onError
    this.#ready.catch(() => {})
  }

  /** Resolves once every worker has loaded and entered its loop. Submitting earlier is fine. */
  ready (): Promise<void> {
    return this.#ready
  }

  get inflight (): number {
    return this.#where.size
  }

  /** Is the engine asleep, so that the next publish to it pays a futex wake? */
  sleeping (worker: number): boolean {
    const lane = this.#lanes[worker]
    if (lane === undefined) throw new RangeError(`no engine ${worker}`)
    return Atomics.load(lane.sqh, SQ.SLEEPING) === 1
  }

  /**
   * Is the polling engine (engine 0, with pollUs) awake, so that work published to it now
   * costs no futex wake? False without polling.
   */
  get pollerAwake (): boolean {
    const p = this.#poller
    return p !== undefined && p.alive && Atomics.load(p.sqh, SQ.SLEEPING) === 0
  }

  /** Is this job submitted and not yet delivered to onComplete? */
  has (jobId: number): boolean {
    return this.#where.has(jobId)
  }

  /**
   * Queues jobs, to one worker or (without `worker`) each to the least-loaded worker.
   * Returns how many were accepted: always a prefix of `jobs`. One doorbell per worker
   * touched. Throws for a duplicate id, a job larger than the ring, or a closed pool.
   */
  submit (jobs: PoolJob | readonly PoolJob[]): number
  submit (worker: number, jobs: PoolJob | readonly PoolJob[]): number
  submit (a: number | PoolJob | readonly PoolJob[], b?: PoolJob | readonly PoolJob[]): number {
    if (this.#closing !== undefined) throw new Error('engine pool is closed')
    const pinned = typeof a === 'number' ? a : undefined
    const arg = typeof a === 'number' ? b : a
    if (arg === undefined) return 0
    const jobs: readonly PoolJob[] = Array.isArray(arg) ? arg : [arg as PoolJob]
    if (pinned !== undefined && this.#lanes[pinned] === undefined) throw new RangeError(`no engine ${pinned}`)
    // every check before any job is queued, so a throw leaves nothing half-submitted; the
    // ids are reserved as they pass, which also finds a duplicate within the batch
    const words = this.#words
    for (let k = 0; k < jobs.length; k++) {
      const id = jobs[k].id
      let bad: Error | undefined
      if (!Number.isSafeInteger(id) || id < 0) bad = new RangeError(`bad job id ${id}`)
      else if (this.#where.has(id)) bad = new Error(`job ${id} is already in flight`)
      else {
        words[k] = entryWordsBound(jobs[k])
        if (words[k] > this.ringBytes / 4) words[k] = entryWords(jobs[k])
        if (words[k] > this.ringBytes / 4) bad = new RangeError(`job ${id} needs ${words[k] * 4} ring bytes, the ring has ${this.ringBytes}`)
      }
      if (bad !== undefined) {
        for (let i = 0; i < k; i++) this.#where.delete(jobs[i].id)
        throw bad
      }
      this.#where.set(id, RESERVED)
    }
    let accepted = 0
    for (let k = 0; k < jobs.length; k++) {
      const lane = pinned !== undefined
        ? this.#append(this.#lanes[pinned], jobs[k], words[k])
        : this.#appendLeastLoaded(jobs[k], words[k])
      if (lane === undefined) break
      lane.touched = true
      accepted++
    }
    for (let k = accepted; k < jobs.length; k++) this.#where.delete(jobs[k].id)
    for (const lane of this.#lanes) {
      if (!lane.touched) continue
      lane.touched = false
      this.#publish(lane)
    }
    if (accepted < jobs.length) this.#short = true
    return accepted
  }

  #appendLeastLoaded (job: PoolJob, words: number): Lane | undefined {
    const n = this.#lanes.length
    // The polling engine takes work while its queue is short: awake, it costs no wake;
    // asleep, one wake is cheaper than one for every engine. Past POLL_LANE_LOAD the
    // rest share it, so heavy work still spreads over all the engines.
    const poller = this.#poller
    if (poller !== undefined && poller.alive &&
      (poller.load < POLL_LANE_LOAD || (job.size <= SMALL_JOB_BYTES && poller.load < SMALL_JOB_LANE_LOAD)) &&
      this.#append(poller, job, words) !== undefined) return poller
    // least load first; the rotating start breaks ties round-robin
    const start = this.#rr
    this.#rr = (start + 1) % n
    let best: Lane | undefined
    for (let k = 0; k < n; k++) {
      const lane = this.#lanes[(start + k) % n]
      if (lane.alive && (best === undefined || lane.load < best.load)) best = lane
    }
    if (best === undefined) return undefined
    if (this.#append(best, job, words) !== undefined) return best
    // the least loaded is full: any other with room
    for (const lane of this.#lanes) {
      if (lane !== best && this.#append(lane, job, words) !== undefined) return lane
    }
    return undefined
  }

  #append (lane: Lane, job: PoolJob, words: number): Lane | undefined {
    if (!lane.alive || lane.fifo.length >= this.maxInflight) return undefined
    const cap = lane.sqMask + 1
    // The worker's head only moves on: the last one read is a safe bound until it is
    // not enough (Atomics.load is a call V8 does not inline; once per job showed).
    if (cap - ((lane.sqTail - lane.sqHeadSeen) >>> 0) < words) {
      lane.sqHeadSeen = Atomics.load(lane.sqh, SQ.HEAD)
      // `words` may be a bound (entryWordsBound): the exact count before refusing
      if (cap - ((lane.sqTail - lane.sqHeadSeen) >>> 0) < words) words = entryWords(job)
      if (cap - ((lane.sqTail - lane.sqHeadSeen) >>> 0) < words) return undefined
    }
    const d = lane.sqd
    const m = lane.sqMask
    const base = lane.sqTail
    let p = base + SE.HEADER_WORDS
    p = appendSegs(d, m, p, job.src, base + SE.NSRC)
    p = appendSegs(d, m, p, job.dst, base + SE.NDST)
    p = appendSegs(d, m, p, job.key, base + SE.NKEY)
    p = appendSegs(d, m, p, job.iv, base + SE.NIV)
    // what the segments took once merged, which the bound may exceed
    words = (p - base) | 0
    d[(base + SE.WORDS) & m] = words
    d[(base + SE.ID_LO) & m] = job.id >>> 0
    d[(base + SE.ID_HI) & m] = Math.floor(job.id / TWO_32)
    d[(base + SE.OP_FLAGS) & m] = (job.opcode & 0xFF) | ((job.flags & 0xFF) << 8)
    d[(base + SE.SIZE) & m] = job.size
    d[(base + SE.DST_SIZE) & m] = job.dstSize
    const argsAt = job.argsAt ?? 0
    for (let k = 0; k < 4; k++) d[(base + SE.ARGS + k) & m] = readU32(job.args, argsAt + 4 * k)
    lane.sqTail = (base + words) | 0
    const cost = job.size + JOB_COST
    lane.fifo.push(job.id, cost)
    lane.load += cost
    lane.submitted++
    this.#where.set(job.id, lane.index)
    if (lane.fifo.length === 1) this.#updateRef(lane)
    return lane
  }

  /**
   * A worker holds the process open while it starts (so awaiting ready() works) and while
   * it has jobs in flight (so awaiting a completion does); an idle one never does.
   */
  #updateRef (lane: Lane): void {
    if (lane.alive && (!lane.ready || lane.fifo.length > 0)) lane.worker.ref()
    else lane.worker.unref()
  }

  #publish (lane: Lane): void {
    if (lane.sqPublished === lane.sqTail) return
    lane.sqPublished = lane.sqTail
    Atomics.store(lane.sqh, SQ.TAIL, lane.sqTail)
    // The doorbell word always moves, so a worker about to sleep sees it changed and
    // does not; only one already asleep needs the (costly) futex wake, and only once:
    // whoever takes SLEEPING from 1 to 0 wakes it, later publishes before it runs don't.
    Atomics.add(lane.sqh, SQ.DOORBELL, 1)
    if (Atomics.compareExchange(lane.sqh, SQ.SLEEPING, 1, 0) === 1) {
      Atomics.notify(lane.sqh, SQ.DOORBELL)
      lane.wakes++
    }
    lane.batches++
  }

  /**
   * Delivers every completion the worker has published, in ring order. Re-entrant: a
   * callback may submit or wait. Returns the result of `want` if it went by.
   */
  #drain (lane: Lane, want = -1): EngineResult | undefined {
    let found: EngineResult | undefined
    let delivered = 0
    // The tail is read again only once what was seen is delivered (Atomics.load is a call
    // V8 does not inline). A callback's own drain may take entries past the tail seen,
    // hence the signed distance rather than equality.
    let tail = Atomics.load(lane.cqh, CQ.TAIL)
    for (;;) {
      if (((tail - lane.cqHead) | 0) <= 0) {
        tail = Atomics.load(lane.cqh, CQ.TAIL)
        if (((tail - lane.cqHead) | 0) <= 0) break
      }
      const head = lane.cqHead
      const d = lane.cqd
      const at = (head & lane.cqMask) * CE.WORDS
      const id = d[at + CE.ID_LO] + d[at + CE.ID_HI] * TWO_32
      const sr = d[at + CE.STATUS_RESULT]
      const r: EngineResult = {
        status: sr & 0xFF,
        result: (sr >>> 8) & 0xFF,
        bytesCompleted: d[at + CE.BYTES_COMPLETED],
        value: d[at + CE.VALUE_LO] + d[at + CE.VALUE_HI] * TWO_32
      }
      lane.cqHead = (head + 1) | 0
      this.#retire(lane, id)
      delivered++
      if (id === want) found = r
      this.#deliver(id, r)
    }
    if (delivered > 0) {
      Atomics.store(lane.cqh, CQ.HEAD, lane.cqHead)
      this.#afterDelivery()
    }
    return found
  }

  #retire (lane: Lane, id: number): void {
    const fifo = lane.fifo
    const fid = fifo.front
    if (fid !== id) throw new Error(`engine ${lane.index} completed job ${id}, expected ${fid}`)
    lane.load -= fifo.frontCost
    fifo.shift()
    this.#where.delete(id)
    lane.completed++
    if (lane.fifo.length === 0) this.#updateRef(lane)
  }

  #deliver (id: number, r: EngineResult): void {
    try {
      this.onComplete(id, r)
    } catch (e) {
      // the callback's bug must not stop the other deliveries; surface it uncaught
      queueMicrotask(() => { throw e })
    }
  }

  #afterDelivery (): void {
    if (this.#where.size === 0 && this.#idle !== undefined) this.#idle()
    if (this.#short && this.onSpace !== undefined && this.#closing === undefined) {
      this.#short = false
      this.onSpace()
    }
  }

  /** Sleeps until the worker publishes past what was delivered, without blocking the loop. */
  #arm (lane: Lane): void {
    while (!lane.armed && !this.#closed) {
      // looked up at each call, so that a test can lose a wake-up as a platform bug would
      const r = (Atomics as unknown as { waitAsync: AsyncWait }).waitAsync(lane.cqh, CQ.TAIL, lane.cqHead)
      if (r.async) {
        lane.armed = true
        const gen = ++lane.armGen
        r.value.then(() => {
          if (gen !== lane.armGen) return
          lane.armed = false
          this.#drain(lane)
          this.#arm(lane)
        }, () => {})
        return
      }
      this.#drain(lane)
    }
  }

  /**
   * Delivers what a worker published before the last watch and is still undelivered: its
   * announce never came. The lane waits again on a fresh Atomics.waitAsync, the old one
   * forgotten, should it ever settle.
   */
  #watchLanes (): void {
    for (const lane of this.#lanes) {
      if (!lane.alive || this.#closed) continue
      if (((lane.watchTail - lane.cqHead) | 0) > 0) {
        lane.lateDrains++
        lane.armed = false
        this.#drain(lane)
        this.#arm(lane)
      }
      lane.watchTail = Atomics.load(lane.cqh, CQ.TAIL)
    }
  }

  /**
   * Blocks the calling thread until `jobId` has completed, delivering every completion of
   * its worker on the way (onComplete included), and returns its result; undefined when
   * the job is not in flight, or when `timeoutMs` passes first. Workers never need the
   * main thread to finish a job, so this cannot deadlock against them.
   */
  waitJob (jobId: number, timeoutMs = Infinity): EngineResult | undefined {
    const lane = this.#lanes[this.#where.get(jobId)]
    if (lane === undefined) return undefined
    const deadline = performance.now() + timeoutMs
    for (;;) {
      const r = this.#drain(lane, jobId)
      if (r !== undefined) return r
      if (!this.#where.has(jobId)) return undefined // delivered by a re-entrant drain
      if (Atomics.load(lane.sqh, SQ.STATE) === WorkerState.EXITED) {
        // its exit event has not run yet (we hold the loop): finish its jobs now
        return this.#fail(lane, `engine ${lane.index} exited`, jobId)
      }
      const left = deadline - performance.now()
      if (left <= 0) return undefined
      Atomics.wait(lane.cqh, CQ.TAIL, lane.cqHead, Math.min(left, WAIT_SLICE_MS))
    }
  }

  /** A dead worker: deliver what it finished, then ABORTED for the rest, in order. */
  #fail (lane: Lane, message: string, want = -1): EngineResult | undefined {
    if (!lane.alive) return undefined
    lane.alive = false
    this.#updateRef(lane)
    let found = this.#drain(lane, want)
    this.onError?.(message)
    let aborted = 0
    while (lane.fifo.length > 0) {
      const id = lane.fifo.front
      this.#retire(lane, id)
      const r: EngineResult = { status: Status.ABORTED, result: 0, bytesCompleted: 0, value: 0 }
      if (id === want) found = r
      aborted++
      this.#deliver(id, r)
    }
    if (aborted > 0) this.#afterDelivery()
    return found
  }

  /**
   * Fault injection: kills engine `worker` the way a crash would. What it had published
   * is delivered; its other jobs complete ABORTED; later submits skip it.
   */
  async killWorker (worker: number): Promise<void> {
    const lane = this.#lanes[worker]
    if (lane === undefined) throw new RangeError(`no engine ${worker}`)
    await held(lane.worker.terminate())
    this.#fail(lane, `engine ${worker} killed`)
  }

  stats (): PoolStats {
    const workers = this.#lanes.map(l => ({
      submitted: l.submitted,
      completed: l.completed,
      inflight: l.fifo.length,
      batches: l.batches,
      wakes: l.wakes,
      lostWakes: Atomics.load(l.sqh, SQ.LOST_WAKES),
      lateDrains: l.lateDrains,
      errors: l.errors,
      alive: l.alive,
      nice: l.nice
    }))
    const sum = (k: 'submitted' | 'completed' | 'inflight' | 'batches' | 'wakes' | 'lostWakes' | 'lateDrains' | 'errors'): number =>
      workers.reduce((s, w) => s + w[k], 0)
    return {
      submitted: sum('submitted'),
      completed: sum('completed'),
      inflight: sum('inflight'),
      batches: sum('batches'),
      wakes: sum('wakes'),
      lostWakes: sum('lostWakes'),
      lateDrains: sum('lateDrains'),
      errors: sum('errors'),
      workers
    }
  }

  /**
   * Refuses new jobs, waits until every job in flight has been delivered, then stops the
   * workers. Idempotent.
   */
  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    if (this.#where.size > 0) {
      await new Promise<void>(resolve => { this.#idle = resolve })
    }
    this.#closed = true
    clearInterval(this.#watch)
    await held(Promise.all(this.#lanes.map(async lane => {
      Atomics.store(lane.sqh, SQ.STOP, 1)
      Atomics.add(lane.sqh, SQ.DOORBELL, 1)
      Atomics.notify(lane.sqh, SQ.DOORBELL)
      // let a pending waitAsync settle rather than linger
      Atomics.notify(lane.cqh, CQ.TAIL)
      await lane.worker.terminate()
    })))
  }
}
