/**
 * A hardware work queue and the ports that submit to it (the analogue of an idxd WQ,
 * drivers/dma/idxd/device.c, and of the doorbell page a UACCE queue maps). A dedicated
 * queue serves one PASID; a shared queue many, each port carrying its own PASID (as
 * ENQCMD stamps it from a CPU register, never from the descriptor bytes); a kernel queue
 * serves the kernel's mediated submissions under an IOVA domain.
 *
 * The ring holds descriptors from acceptance to completion: a full ring answers RETRY,
 * a queue that is not running answers QUEUE_DISABLED, both at once and never in memory.
 */
import { DESC, DESC_SIZE, Flag, Opcode, Status, readU32, writeU32 } from './descriptor.ts'
import type { EngineResult } from './engine-ops.ts'
import type { DeviceAccess } from './iommu.ts'
import type { QueueMode } from './device-config.ts'

const DESC_WORDS = DESC_SIZE / 4
/** the descriptor's PASID field, in 32-bit words (it is word-aligned) */
const PASID_WORD = DESC.PASID / 4
/** an Int32Array store writes little-endian bytes here, as the descriptor's fields are */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

/**
 * The least a descriptor counts against an arbiter quantum, in bytes of work: what one
 * costs the device's front end whatever its size. A NOOP, or a 64-byte MEMMOVE, counts
 * this much; a quantum of 64 KiB is then 128 of them.
 */
const ARBITER_MIN_COST = 512

/**
 * What a descriptor counts against the quantum of the arbiter's visit that starts it:
 * its bytes, at least ARBITER_MIN_COST (a BATCH, that much a member). The size of a NOOP
 * or DRAIN, which read nothing, is not looked at.
 */
function arbiterCost (d: Uint8Array): number {
  const op = d[DESC.OPCODE]
  if (op === Opcode.NOOP || op === Opcode.DRAIN) return ARBITER_MIN_COST
  const size = readU32(d, DESC.SIZE)
  if (op === Opcode.BATCH) return size * ARBITER_MIN_COST
  return size > ARBITER_MIN_COST ? size : ARBITER_MIN_COST
}

/**
 * One round-robin visit, the device arbiter's to a queue (weight: its priority) and a
 * shared queue's to a PASID (weight: the port's): it serves `weight` descriptors, and
 * goes on while what it served is under `weight` quanta of work.
 */
export interface Visit {
  /** descriptors of its weight still owed */
  credit: number
  /** bytes of work (arbiterCost) served */
  spent: number
}

export function beginVisit (v: Visit, weight: number): void {
  v.credit = weight
  v.spent = 0
}

export function visitOver (v: Visit, weight: number, quantum: number): boolean {
  return v.credit <= 0 && v.spent >= weight * quantum
}

/** Counts a descriptor of arbiterCost `cost` as served in the visit; answers whether the visit is over. */
export function served (v: Visit, cost: number, weight: number, quantum: number): boolean {
  v.credit--
  v.spent += cost
  return visitOver(v, weight, quantum)
}

/** the shortest run of ring slots copied natively: a view for it costs what 2-3 descriptors' stores do */
const RUN_COPY_MIN = 4

/** where a doorbell write off a word boundary is aligned before its copy (grown as needed) */
let staging = new Int32Array(64 * DESC_WORDS)
let stagingBytes = new Uint8Array(staging.buffer)

/** PROTOCOL.md section 5, the STATUS frame's values. */
export const QueueState = {
  RUNNING: 1,
  ISOLATED: 2,
  RESETTING: 3,
  RELEASED: 4
} as const
export type QueueState = typeof QueueState[keyof typeof QueueState]

/**
 * A per-descriptor token that is a function is the submitter's own completion callback
 * (the kernel's mediated path waits with one); it is called even after the port closed.
 */
export type CompletionCallback = (record: Uint8Array) => void

export interface PortListener {
  /** A completion of a descriptor this port submitted; `record` is only valid during the call. */
  completion: (record: Uint8Array, flags: number) => void
  /** The queue or its device changed state. */
  status?: (state: QueueState, reason: string) => void
}

/** One accepted descriptor, from acceptance to its one completion. */
export interface Entry {
  id: number
  queue: HwQueue
  port: QueuePort
  ctx: number
  /** the device's own copy of the 64 bytes (a ring slot, or a batch member's buffer) */
  desc: Uint8Array
  slot: number
  /** device-wide acceptance order */
  seq: number
  token: unknown
  parent: Entry | undefined
  children: number
  failedChildren: number
  aborted: boolean
  access: DeviceAccess | undefined
  /** a source fault found while translating: the engine ran the prefix before it */
  srcFault: { addr: number, info: number, done: number } | undefined
  /** the dst region's translated length fell short: its fault code */
  dstFaultCode: number
  t0: number
  state: 'queued' | 'translating' | 'running' | 'done'
  /** its engine job's id while it runs (the device's job slot), else -1 */
  job: number
  /** the source bytes of that job, counted against the device's budget while it runs */
  jobBytes: number
  /** the engine's answer, between the engine and the completion */
  engine: EngineResult | undefined
  /**
   * Intrusive links, oldest first: the queue's outstanding entries (q), and the device's
   * outstanding entries of one context (c). Sets here grew and shrank with every burst,
   * rehashing as they went; a link costs two stores.
   */
  qPrev: Entry | undefined
  qNext: Entry | undefined
  cPrev: Entry | undefined
  cNext: Entry | undefined
  /** the device's list of this context's outstanding entries, while it is on it */
  cList: CtxList | undefined
}

/** A context's outstanding entries, oldest first, linked through Entry.cPrev/cNext. */
export interface CtxList {
  oldest: Entry | undefined
  newest: Entry | undefined
}

/** A submitter's handle on a queue: what the kernel hands out when it binds a queue. */
export class QueuePort {
  readonly queue: HwQueue
  readonly ctx: number
  /** stamped into every descriptor: the PASID, or 0 under an IOVA domain */
  readonly pasid: number
  listener: PortListener
  /** per-PASID weight on a shared queue */
  weight: number
  closed = false
  /** why the last submit stopped short: RETRY or QUEUE_DISABLED */
  lastRefusal = 0

  constructor (queue: HwQueue, ctx: number, pasid: number, listener: PortListener, weight = 1) {
    this.queue = queue
    this.ctx = ctx
    this.pasid = pasid
    this.listener = listener
    this.weight = weight
  }

  /**
   * The doorbell write: descriptors `count` x 64 bytes at `buf[off]`, accepted in order
   * until the ring is full. Answers how many were accepted; the rest are refused with
   * `lastRefusal`.
   */
  submit (buf: Uint8Array, off: number, count: number, tokens?: readonly unknown[]): number {
    return this.queue.submit(this, buf, off, count, tokens)
  }

  /** Detaches the listener; the descriptors in flight still complete (records land in memory). */
  close (): void {
    if (this.closed) return
    this.closed = true
    this.queue.ports.delete(this)
  }
}

/** A FIFO of entries per submitting context, for the shared queue's deficit round robin. */
interface Lane extends Visit {
  ctx: number
  items: Entry[]
  head: number
  weight: number
  /** in the round-robin order (it has entries waiting) */
  queued: boolean
}

/**
 * Up to this many contexts keep their lane (its object and its array) while they have
 * nothing waiting: a tenant whose doorbell writes drain between round trips would
 * otherwise make a new lane, and add it to the map, for every write.
 */
const KEEP_IDLE_LANES = 64

export interface QueueCounters {
  submitted: number
  completed: number
  retries: number
  disabled: number
  faults: number
  aborted: number
  bytes: number
}

export interface QueueHost {
  /** `now`: performance.now() at the doorbell write, read once for all its descriptors */
  accept: (q: HwQueue, port: QueuePort, desc: Uint8Array, slot: number, token: unknown, now: number) => void
  /** `written`: how many descriptors the doorbell write just accepted */
  kick: (written: number) => void
}

export class HwQueue implements Visit {
  readonly index: number
  readonly mode: QueueMode
  readonly depth: number
  readonly priority: number
  readonly host: QueueHost
  state: QueueState = QueueState.RUNNING
  stateReason = ''
  /** dedicated and kernel queues are handed to one owner at a time */
  allocated = false
  readonly ports = new Set<QueuePort>()
  /** accepted and not yet completed: a list through Entry.qPrev/qNext, oldest first */
  #oldest: Entry | undefined
  #newest: Entry | undefined
  #occupancy = 0
  readonly ring: Uint8Array
  readonly #ring32: Int32Array
  /** a view of each ring slot, made once */
  readonly #slots: Uint8Array[]
  /**
   * Free ring slots, a bitmap (bit set: free); a write takes the lowest free slots, in
   * order. The slots in use stay at the bottom of the ring, in cache (a FIFO rotating
   * through the whole ring cost more in cache misses), and a write's slots are runs of
   * consecutive slots, copied whole. A stack of freed slots reused the last freed first
   * and kept any shuffle for ever: once two engines' completions interleaved, the
   * device benchmark's writes were runs of one slot, copied word by word.
   */
  readonly #freeBits: Int32Array
  /** the lowest word of #freeBits that may have a bit set */
  #freeLow = 0
  #freeCount = 0
  /** the slots the last write took, in order */
  readonly #taken: Int32Array
  readonly #lanes = new Map<number, Lane>()
  /** the lane the last enqueue used: a doorbell write's descriptors share one */
  #lastLane: Lane | undefined
  readonly #order: Lane[] = []
  #cursor = 0
  #pending = 0
  /** the device arbiter's visit to this queue (Visit) */
  credit = 0
  spent = 0
  /** the device's arbiter quantum (DeviceConfig.arbiterQuantum), which its PASIDs share by weight too */
  readonly quantum: number
  /**
   * The arbiterCost of the entry the last take answered, for the device arbiter's own
   * count: read once, where the descriptor's bytes were read twice.
   */
  takenCost = 0
  /** on the device's list of queues with work (the arbiter's to set and clear) */
  busy = false
  readonly faultTimes: number[] = []
  readonly counters: QueueCounters = { submitted: 0, completed: 0, retries: 0, disabled: 0, faults: 0, aborted: 0, bytes: 0 }

  constructor (index: number, mode: QueueMode, depth: number, priority: number, host: QueueHost, quantum = 0) {
    this.index = index
    this.quantum = quantum
    this.mode = mode
    this.depth = depth
    this.priority = priority
    this.host = host
    this.ring = new Uint8Array(depth * DESC_SIZE)
    this.#ring32 = new Int32Array(this.ring.buffer)
    this.#slots = Array.from({ length: depth }, (_, i) => this.ring.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE))
    this.#freeBits = new Int32Array((depth + 31) >>> 5)
    for (let i = 0; i < depth; i++) this.#freeBits[i >>> 5] |= 1 << (i & 31)
    this.#freeCount = depth
    this.#taken = new Int32Array(depth)
  }

  get occupancy (): number { return this.#occupancy }
  get pending (): number { return this.#pending }

  attach (ctx: number, pasid: number, listener: PortListener, weight = 1): QueuePort {
    const port = new QueuePort(this, ctx, pasid, listener, weight)
    this.ports.add(port)
    return port
  }

  submit (port: QueuePort, buf: Uint8Array, off: number, count: number, tokens?: readonly unknown[]): number {
    if (this.state !== QueueState.RUNNING || port.closed) {
      port.lastRefusal = Status.QUEUE_DISABLED
      this.counters.disabled += count
      return 0
    }
    const n = Math.min(count, this.#freeCount)
    const taken = this.#taken
    if (n > 0) {
      this.#takeSlots(n)
      this.#copyDescriptors(buf, off, n)
    }
    const now = n > 0 ? performance.now() : 0
    const pasid = port.pasid
    const ring32 = this.#ring32
    for (let i = 0; i < n; i++) {
      const slot = taken[i]
      const desc = this.#slots[slot]
      // The device stamps the PASID: whatever the tenant wrote there is overwritten. One
      // word store where the host is little-endian (3 ns a descriptor against 6 ns for
      // four byte stores, a microbenchmark of the twelfth session).
      if (LITTLE_ENDIAN) {
        ring32[slot * DESC_WORDS + PASID_WORD] = pasid
      } else {
        writeU32(desc, DESC.PASID, pasid)
      }
      this.host.accept(this, port, desc, slot, tokens?.[i], now)
    }
    this.counters.submitted += n
    if (n < count) {
      port.lastRefusal = Status.RETRY
      this.counters.retries += count - n
    }
    if (n > 0) this.host.kick(n)
    return n
  }

  /** Takes the `n` lowest free slots (n <= #freeCount) into #taken, in order. */
  #takeSlots (n: number): void {
    const bits = this.#freeBits
    const taken = this.#taken
    let w = this.#freeLow
    let b = bits[w]
    for (let i = 0; i < n; i++) {
      while (b === 0) {
        bits[w] = 0
        b = bits[++w]
      }
      // the lowest set bit, and the word without it
      const low = b & -b
      taken[i] = (w << 5) | (31 - Math.clz32(low))
      b ^= low
    }
    bits[w] = b
    this.#freeLow = w
    this.#freeCount -= n
  }

  /**
   * Copies descriptors i < n from `buf` at `off` into the slots #taken[i], 16 words each
   * (64 byte stores each were a tenth of the device's main-thread time). A source off a
   * 4-byte boundary is first copied whole, natively, to an aligned staging buffer.
   */
  #copyDescriptors (buf: Uint8Array, off: number, n: number): void {
    const slots = this.#taken
    const at = buf.byteOffset + off
    let words: Int32Array
    if ((at & 3) === 0) {
      words = new Int32Array(buf.buffer, at, n * DESC_WORDS)
    } else {
      if (staging.length < n * DESC_WORDS) {
        staging = new Int32Array(n * DESC_WORDS)
        stagingBytes = new Uint8Array(staging.buffer)
      }
      stagingBytes.set(new Uint8Array(buf.buffer, at, n * DESC_SIZE))
      words = staging
    }
    const ring = this.#ring32
    // A write takes the lowest free slots, so its slots are a few runs (a slot still busy
    // below the others splits one): a run of RUN_COPY_MIN or more is one native copy,
    // where 16 word stores a descriptor cost 20 ns against 2.
    for (let i = 0; i < n;) {
      const first = slots[i]
      let run = 1
      while (i + run < n && slots[i + run] === first + run) run++
      if (run >= RUN_COPY_MIN) {
        ring.set(words.subarray(i * DESC_WORDS, (i + run) * DESC_WORDS), first * DESC_WORDS)
      } else {
        for (let j = i; j < i + run; j++) {
          const to = slots[j] * DESC_WORDS
          const from = j * DESC_WORDS
          for (let k = 0; k < DESC_WORDS; k++) ring[to + k] = words[from + k]
        }
      }
      i += run
    }
  }

  /** Called by the device for each accepted entry. */
  enqueue (e: Entry): void {
    e.qPrev = this.#newest
    e.qNext = undefined
    if (this.#newest !== undefined) this.#newest.qNext = e
    else this.#oldest = e
    this.#newest = e
    this.#occupancy++
    let lane = this.#lastLane
    if (lane === undefined || lane.ctx !== e.ctx) lane = this.#lanes.get(e.ctx)
    if (lane === undefined) {
      lane = { ctx: e.ctx, items: [], head: 0, credit: 0, spent: 0, weight: e.port.weight, queued: false }
      this.#lanes.set(e.ctx, lane)
    }
    this.#lastLane = lane
    lane.weight = e.port.weight
    if (!lane.queued) {
      lane.queued = true
      beginVisit(lane, lane.weight)
      this.#order.push(lane)
    }
    lane.items.push(e)
    this.#pending++
  }

  /** An enqueued entry completed: it leaves the outstanding list and frees its ring slot. */
  retire (e: Entry): void {
    if (e.qPrev !== undefined) e.qPrev.qNext = e.qNext
    else this.#oldest = e.qNext
    if (e.qNext !== undefined) e.qNext.qPrev = e.qPrev
    else this.#newest = e.qPrev
    e.qPrev = e.qNext = undefined
    this.#occupancy--
    if (e.slot >= 0) {
      const w = e.slot >>> 5
      this.#freeBits[w] |= 1 << (e.slot & 31)
      this.#freeCount++
      if (w < this.#freeLow) this.#freeLow = w
    }
  }

  /**
   * The next entry to start, by round robin over the submitting contexts: a visit serves
   * `weight` descriptors, and goes on while what it served is under `weight` quanta of
   * work (the device's arbiter does the same over its queues, where it explains why).
   * A FENCE entry waits until every earlier entry of this queue has completed; the lane
   * behind it waits with it.
   */
  take (): Entry | undefined {
    if (this.#pending === 0) return undefined
    const order = this.#order
    for (let scanned = 0, n = order.length; scanned < 2 * n; scanned++) {
      if (this.#cursor >= order.length) this.#cursor = 0
      const lane = order[this.#cursor]
      if (visitOver(lane, lane.weight, this.quantum)) {
        beginVisit(lane, lane.weight)
        this.#cursor++
        continue
      }
      const e = lane.items[lane.head]
      if ((e.desc[DESC.FLAGS] & Flag.FENCE) !== 0 && this.#oldest !== e) {
        this.#cursor++
        continue
      }
      lane.items[lane.head++] = undefined as unknown as Entry
      this.#pending--
      const cost = arbiterCost(e.desc)
      this.takenCost = cost
      if (lane.head === lane.items.length) {
        // Drained: out of the order at once, so no later take visits it empty.
        this.#idle(lane, this.#cursor)
      } else {
        if (lane.head > 64 && lane.head * 2 > lane.items.length) {
          lane.items = lane.items.slice(lane.head)
          lane.head = 0
        }
        // The visit over: the next one begins now, and the next lane's turn, so the next
        // take starts where it takes rather than stepping past this one first.
        if (served(lane, cost, lane.weight, this.quantum)) {
          beginVisit(lane, lane.weight)
          this.#cursor++
        }
      }
      return e
    }
    return undefined
  }

  /** The lane at `at` in the order has nothing waiting: it leaves; kept for reuse unless there are many. */
  #idle (lane: Lane, at: number): void {
    this.#order.splice(at, 1)
    lane.queued = false
    lane.items.length = 0
    lane.head = 0
    if (this.#lanes.size > KEEP_IDLE_LANES) {
      this.#lanes.delete(lane.ctx)
      if (this.#lastLane === lane) this.#lastLane = undefined
    }
  }

  /**
   * Takes out the entries `port` submitted that have not started, in order; the others
   * stay where they wait. (Taking all and enqueueing the others again linked them into
   * the outstanding list a second time: the occupancy never came back down, and a FENCE
   * behind them waited for ever.)
   */
  takePending (port: QueuePort): Entry[] {
    const out: Entry[] = []
    const order = this.#order
    for (let k = order.length - 1; k >= 0; k--) {
      const lane = order[k]
      let kept = lane.head
      for (let i = lane.head; i < lane.items.length; i++) {
        const e = lane.items[i]
        if (e.port === port) out.push(e)
        else lane.items[kept++] = e
      }
      lane.items.length = kept
      if (kept === lane.head) {
        this.#idle(lane, k)
        if (k < this.#cursor) this.#cursor--
      }
    }
    this.#pending -= out.length
    // lanes were walked last first; the entries of each lane are in order
    out.sort((a, b) => a.seq - b.seq)
    return out
  }

  /** Removes and answers every entry not yet started (for a reset or a release). */
  takeAllPending (): Entry[] {
    const out: Entry[] = []
    for (const lane of this.#order) {
      for (let i = lane.head; i < lane.items.length; i++) out.push(lane.items[i])
      lane.queued = false
    }
    this.#order.length = 0
    this.#lanes.clear()
    this.#lastLane = undefined
    this.#pending = 0
    return out
  }

  setState (state: QueueState, reason: string): void {
    this.state = state
    this.stateReason = reason
    for (const port of this.ports) port.listener.status?.(state, reason)
  }

  /** More than `max` faults within `windowMs`: true when this fault isolates the queue. */
  recordFault (now: number, max: number, windowMs: number): boolean {
    this.counters.faults++
    this.faultTimes.push(now)
    while (this.faultTimes.length > 0 && this.faultTimes[0] <= now - windowMs) this.faultTimes.shift()
    if (this.faultTimes.length > max + 1) this.faultTimes.shift()
    return this.state === QueueState.RUNNING && this.faultTimes.length > max
  }
}
