/**
 * One engine: a worker thread that sleeps on its submission ring's doorbell word, drains
 * every published entry, runs each through runOp on a view of physical memory, and
 * appends its result to the completion ring, notifying once per drained batch (and
 * halfway through a batch that runs long enough for that to matter, and every
 * notifyAfterMs of a long one). Ring layout and protocol: engine-pool.ts.
 * The loop is synchronous by design: an engine never waits for the main thread, so the
 * main thread may block on it (waitJob).
 */
import { parentPort, workerData } from 'node:worker_threads'
import { closeSync, openSync, readSync } from 'node:fs'
import { availableParallelism, getPriority, setPriority } from 'node:os'
import { Status } from './descriptor.ts'
import { runOp, type EngineJob, type EngineResult, type Sg } from './engine-ops.ts'
import { CE, CQ, RING_HEADER_BYTES, SE, SQ, WorkerState } from './engine-pool.ts'
import { ContentionScore } from './contention.ts'

interface EngineWorkerData {
  mem: SharedArrayBuffer
  sq: SharedArrayBuffer
  cq: SharedArrayBuffer
  index: number
  /** how long this engine keeps polling its ring after its last job (0: sleeps at once) */
  pollMs: number
  /** the other engines' submission rings, whose SLEEPING words say whether they run */
  peers: SharedArrayBuffer[]
  /** poll whatever else the machine runs (EnginePoolOptions.pollContended) */
  pollContended: boolean
  /** how much lower than the thread that started it this engine runs (EnginePoolOptions.nice) */
  nice: number
  /** EnginePoolOptions.notifyAfterMs */
  notifyAfterMs: number
}

const TWO_32 = 2 ** 32
/** an Sg this thread refills for each job */
interface SgArrays { addrs: number[], lens: number[] }
/**
 * A batch that has run this long also announces what is done once it is half through, so
 * that the main thread refills the ring while this engine still has the other half to
 * run. Announced only at its end, a batch of 64 SHA256 jobs of 4 KiB left the engine
 * asleep for the main thread's whole turnaround, a fifth to a quarter of its time
 * (eleventh session, bench/RESULTS.md). Short batches (descriptors of a few bytes) end
 * before it: for them a second announce is only a second wake of the main thread.
 */
const HALF_ANNOUNCE_AFTER_MS = 0.04
/**
 * An engine sleeps at most this long before it looks at its ring again. The publish that
 * finds it asleep wakes it, and nothing else should be needed; but once, 2.7 million
 * jobs into a benchmark run (bench/RESULTS.md, ninth session), an engine stayed asleep
 * with 128 jobs published to it and its SLEEPING word already taken back to 0 by the
 * publish, whose notify never reached it
 * (glibc 2.36 here; its condition variables, under V8's Atomics.wait, had such a bug,
 * sourceware 25847). A lost wake-up now costs this long, not the device; LOST_WAKES
 * counts them.
 */
const SLEEP_SLICE_MS = 100
/** how often a polling engine looks at how many threads the machine has runnable */
const CONTENTION_CHECK_MS = 0.2
/** how long it sleeps instead of polling once its checks found it contended (contention.ts) */
const CONTENTION_BACKOFF_MS = 20

/**
 * /proc/loadavg, opened once, or -1 where there is none: there an engine cannot tell
 * whether polling takes a core from anyone, and does not poll.
 */
function openLoadavg (): number {
  try {
    return openSync('/proc/loadavg', 'r')
  } catch {
    return -1
  }
}

const loadavgBuf = Buffer.alloc(128)
/** The machine's runnable threads now, this one included: loadavg's "running/total", one pread. */
function runnableThreads (fd: number): number {
  const n = readSync(fd, loadavgBuf, 0, loadavgBuf.length, 0)
  let spaces = 0
  let v = 0
  for (let i = 0; i < n; i++) {
    const c = loadavgBuf[i]
    if (spaces === 3) {
      if (c < 0x30 || c > 0x39) return v
      v = v * 10 + c - 0x30
    } else if (c === 0x20) {
      spaces++
    }
  }
  return v
}

/**
 * Lowers this thread's priority by `delta` (its nice value up, at most 19), and answers
 * the nice value it runs at; undefined where the platform does not say. On Linux,
 * os.setPriority of pid 0 is the calling thread alone.
 */
function lowerPriority (delta: number): number | undefined {
  try {
    const now = getPriority()
    if (delta > 0) setPriority(Math.min(19, now + delta))
    return getPriority()
  } catch {
    return undefined
  }
}

function main (data: EngineWorkerData): void {
  const nice = lowerPriority(data.nice)
  const mem = new Uint8Array(data.mem)
  const sqh = new Int32Array(data.sq, 0, RING_HEADER_BYTES / 4)
  const sqd = new Uint32Array(data.sq, RING_HEADER_BYTES)
  const sqMask = sqd.length - 1
  const cqh = new Int32Array(data.cq, 0, RING_HEADER_BYTES / 4)
  const cqd = new Uint32Array(data.cq, RING_HEADER_BYTES)
  const cqMask = cqd.length / CE.WORDS - 1

  const word = (p: number): number => sqd[p & sqMask]
  let p = 0
  // One job decoded at a time, into the same objects: runOp is synchronous and keeps none
  // of them, and a fresh set per job was most of this thread's garbage at 4 KiB.
  const args = new Uint8Array(16)
  const av = new DataView(args.buffer)
  const src: SgArrays = { addrs: [], lens: [] }
  const dst: SgArrays = { addrs: [], lens: [] }
  const key: SgArrays = { addrs: [], lens: [] }
  const iv: SgArrays = { addrs: [], lens: [] }
  const job: EngineJob = { opcode: 0, flags: 0, size: 0, dstSize: 0, args, src, dst, key: undefined, iv: undefined }
  const readSg = (sg: SgArrays, n: number): Sg => {
    const { addrs, lens } = sg
    // a length store runs through V8's runtime even when nothing changes, and most jobs
    // have as many segments as the one before
    if (addrs.length !== n) {
      addrs.length = n
      lens.length = n
    }
    for (let i = 0; i < n; i++) {
      addrs[i] = word(p) + word(p + 1) * TWO_32
      lens[i] = word(p + 2)
      p += SE.SEG_WORDS
    }
    return sg
  }

  const pollMs = data.pollMs
  const notifyAfterMs = data.notifyAfterMs
  /** when this engine last finished a batch: it polls until pollMs after it */
  let lastWork = -Infinity
  const peers = data.peers.map(sq => new Int32Array(sq, 0, RING_HEADER_BYTES / 4))
  /**
   * Polling pays only while it takes no core from anyone: with every other engine asleep,
   * the main thread and this one are all that run. With another engine ciphering 1 MiB
   * jobs, a polling engine made three runnable threads on two cores, and the main thread,
   * slowed, left the engines without work (AES-256-GCM at 1 MiB fell from 80% to 70%).
   */
  const peersAsleep = (): boolean => {
    for (let i = 0; i < peers.length; i++) if (Atomics.load(peers[i], SQ.SLEEPING) !== 1) return false
    return true
  }
  /**
   * Nor from anyone else: a load generator on the same two cores as the service (issue
   * 4's benchmark, a tenant's load test) lost its core to the polling engine, and the
   * mediated path fell from 73-87% to 43-58% of the bare route. More runnable threads
   * than cores in most of its recent checks, and it sleeps instead, polling again no
   * sooner than the backoff.
   */
  const pollContended = data.pollContended
  const loadavg = pollMs > 0 && !pollContended ? openLoadavg() : -1
  const cores = availableParallelism()
  let checkedAt = -Infinity
  const contention = new ContentionScore()
  let backoffUntil = -Infinity
  const mayPoll = (now: number): boolean => {
    if (now - lastWork >= pollMs || !peersAsleep()) return false
    if (pollContended) return true
    if (loadavg < 0 || now < backoffUntil) return false
    if (now - checkedAt < CONTENTION_CHECK_MS) return true
    checkedAt = now
    if (!contention.check(runnableThreads(loadavg), cores)) return true
    backoffUntil = now + CONTENTION_BACKOFF_MS
    return false
  }
  let head = Atomics.load(sqh, SQ.HEAD)
  let ctail = Atomics.load(cqh, CQ.TAIL)
  /** when this engine last announced, across batches */
  let lastAnnounce = -Infinity
  Atomics.store(sqh, SQ.STATE, WorkerState.RUNNING)
  parentPort?.postMessage({ type: 'ready', nice })
  try {
    for (;;) {
      // read the doorbell before the tail: a publish after this read also bumps it,
      // so the wait below cannot miss it
      const bell = Atomics.load(sqh, SQ.DOORBELL)
      const tail = Atomics.load(sqh, SQ.TAIL)
      if (tail === head) {
        if (Atomics.load(sqh, SQ.STOP) !== 0) return
        // A polling engine picks up the next publish without the futex wake that a
        // sleeping one costs the main thread (bench/RESULTS.md, ninth session).
        if (pollMs > 0 && mayPoll(performance.now())) continue
        Atomics.store(sqh, SQ.SLEEPING, 1)
        const woke = Atomics.wait(sqh, SQ.DOORBELL, bell, SLEEP_SLICE_MS)
        Atomics.store(sqh, SQ.SLEEPING, 0)
        if (woke === 'timed-out' && Atomics.load(sqh, SQ.TAIL) !== head) Atomics.add(sqh, SQ.LOST_WAKES, 1)
        continue
      }
      let announced = performance.now()
      const started = announced
      // the word halfway through the batch; the tail once this batch has announced
      let half = (head + ((tail - head) >>> 1)) | 0
      while (head !== tail) {
        const words = word(head + SE.WORDS)
        const id = word(head + SE.ID_LO) + word(head + SE.ID_HI) * TWO_32
        const opFlags = word(head + SE.OP_FLAGS)
        for (let k = 0; k < 4; k++) av.setUint32(4 * k, word(head + SE.ARGS + k), true)
        const nsrc = word(head + SE.NSRC)
        const ndst = word(head + SE.NDST)
        const nkey = word(head + SE.NKEY)
        const niv = word(head + SE.NIV)
        p = head + SE.HEADER_WORDS
        job.opcode = opFlags & 0xFF
        job.flags = (opFlags >>> 8) & 0xFF
        job.size = word(head + SE.SIZE)
        job.dstSize = word(head + SE.DST_SIZE)
        readSg(src, nsrc)
        readSg(dst, ndst)
        job.key = nkey > 0 ? readSg(key, nkey) : undefined
        job.iv = niv > 0 ? readSg(iv, niv) : undefined
        let r: EngineResult
        try {
          r = runOp(mem, job)
        } catch (e) {
          // a malformed job is the submitter's bug; it still completes exactly once
          r = { status: Status.ABORTED, result: 0, bytesCompleted: 0, value: 0 }
          parentPort?.postMessage({ type: 'error', id, message: `engine ${data.index}: ${(e as Error).message}` })
        }
        const at = (ctail & cqMask) * CE.WORDS
        // `>>> 0`: the low word of a non-negative safe integer, without a floating-point `%`
        cqd[at + CE.ID_LO] = id >>> 0
        cqd[at + CE.ID_HI] = Math.floor(id / TWO_32)
        cqd[at + CE.STATUS_RESULT] = (r.status & 0xFF) | ((r.result & 0xFF) << 8)
        cqd[at + CE.BYTES_COMPLETED] = r.bytesCompleted
        cqd[at + CE.VALUE_LO] = r.value >>> 0
        cqd[at + CE.VALUE_HI] = Math.floor(r.value / TWO_32)
        ctail = (ctail + 1) | 0
        Atomics.store(cqh, CQ.TAIL, ctail)
        head = (head + words) | 0
        Atomics.store(sqh, SQ.HEAD, head)
        if (head !== tail) {
          const now = performance.now()
          const halfway = ((head - half) | 0) >= 0 && now - started > HALF_ANNOUNCE_AFTER_MS
          if (halfway || now - announced > notifyAfterMs) {
            Atomics.notify(cqh, CQ.TAIL)
            announced = now
            lastAnnounce = now
            half = tail
          }
        }
      }
      lastWork = performance.now()
      // A batch that announced halfway, with more work already published behind it, leaves
      // its end to that work's announce: the main thread is refilling, and a wake-up costs
      // it 10-14 us and this thread the eventfd write behind it (about 10 us) on this
      // project's machines. SHA256 at 4 KiB went from 50-53% of the bare hash to 61-68%,
      // its wake-ups from 8.5-9.2 k a second to 6.2-6.3 k (thirteenth session). A batch
      // with nothing behind it, or short enough not to have announced, announces its end as
      // before (the doorbell's single tenant lost 6 points when short batches skipped it),
      // and notifyAfterMs bounds how long completions go unannounced.
      // (lastAnnounce < started: this batch has not announced)
      if (lastAnnounce < started || Atomics.load(sqh, SQ.TAIL) === head || lastWork - lastAnnounce > notifyAfterMs) {
        Atomics.notify(cqh, CQ.TAIL)
        lastAnnounce = lastWork
      }
    }
  } finally {
    if (loadavg >= 0) closeSync(loadavg)
    Atomics.store(sqh, SQ.STATE, WorkerState.EXITED)
    Atomics.notify(cqh, CQ.TAIL)
  }
}

main(workerData as EngineWorkerData)
