import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { availableParallelism, getPriority } from 'node:os'
import { Worker } from 'node:worker_threads'
import { createHash, randomBytes } from 'node:crypto'
import zlib from 'node:zlib'
import { OP_ARGS_SIZE, Opcode, Status } from '../../src/hw/descriptor.ts'
import { crc32Js, type EngineResult, type Sg } from '../../src/hw/engine-ops.ts'
import { ENGINE_NICE, EnginePool, entryWords, type PoolJob } from '../../src/hw/engine-pool.ts'
import { PAGE_SIZE, PhysMem } from '../../src/hw/phys-mem.ts'

const mem = new PhysMem(32 << 20)
const M = mem.bytes
const args = new Uint8Array(OP_ARGS_SIZE)
const EMPTY: Sg = { addrs: [], lens: [] }

function frame (): number {
  const r = mem.alloc()
  if (!r.ok) throw new Error('out of frames')
  return r.value
}

/** `pages` frames, every other one of a fresh run, so the list never merges. */
function scattered (pages: number): number[] {
  const out: number[] = []
  for (let i = 0; i < pages; i++) {
    out.push(frame())
    frame()
  }
  return out
}

function sgOf (frames: number[], off: number, len: number): Sg {
  const addrs: number[] = []
  const lens: number[] = []
  let at = off
  while (len > 0) {
    const p = frames[Math.floor(at / PAGE_SIZE)] * PAGE_SIZE + (at % PAGE_SIZE)
    const n = Math.min(len, PAGE_SIZE - (at % PAGE_SIZE))
    addrs.push(p)
    lens.push(n)
    at += n
    len -= n
  }
  return { addrs, lens }
}

function readSg (sg: Sg): Buffer {
  return Buffer.concat(Array.from(sg.addrs, (a, i) => M.subarray(a, a + sg.lens[i])))
}

function crcJob (id: number, sg: Sg, size: number): PoolJob {
  return { id, opcode: Opcode.CRC32, flags: 0, size, dstSize: 0, args, src: sg, dst: EMPTY }
}

// Shared input: 64 scattered pages of random bytes.
const inFrames = scattered(64)
const input = randomBytes(64 * PAGE_SIZE)
for (let i = 0; i < 64; i++) M.set(input.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), inFrames[i] * PAGE_SIZE)

// One pool for most tests (worker start-up under tsx dominates the run time): a ring and a
// window small enough to cut submits short, and positions that start just below the int32
// wrap so every test runs across it. Each test installs its own completion handler.
let onDone: (id: number, r: EngineResult) => void = () => {}
const shared = new EnginePool({
  mem,
  workers: 2,
  ringBytes: 32768,
  maxInflight: 256,
  ringStart: 2 ** 31 - 300,
  onComplete: (id, r) => { onDone(id, r) }
})
t.teardown(() => shared.close())

t.test('waitJob blocks while jobs are in flight, even before the workers are up', async t => {
  const delivered: number[] = []
  onDone = (id) => { delivered.push(id) }
  const pool = shared
  // slow jobs ahead of the one waited for, on the same worker
  const big = sgOf(inFrames, 0, 64 * PAGE_SIZE)
  const outFrames = scattered(70)
  const jobs: PoolJob[] = []
  for (let k = 0; k < 6; k++) {
    jobs.push({ id: k, opcode: Opcode.DEFLATE, flags: 0, size: 64 * PAGE_SIZE, dstSize: 70 * PAGE_SIZE, args: Uint8Array.of(9, ...new Uint8Array(15)), src: big, dst: sgOf(outFrames, 0, 70 * PAGE_SIZE) })
  }
  jobs.push(crcJob(100, sgOf(inFrames, 5, 10), 10))
  t.equal(pool.submit(0, jobs), jobs.length)
  t.same(delivered, [])
  const r = pool.waitJob(100)
  t.equal(r?.status, Status.SUCCESS)
  t.equal(r?.value, crc32Js(input.subarray(5, 15)))
  t.same(delivered, [0, 1, 2, 3, 4, 5, 100])
  const z = zlib.deflateRawSync(input, { level: 9 })
  t.ok(readSg(sgOf(outFrames, 0, z.length)).equals(z), 'the DEFLATE output is zlib\'s')
  t.equal(pool.waitJob(12345), undefined, 'unknown id')
  // a quick job behind a long one in the same batch is announced without waiting for it
  const quick = [{ ...jobs[0], id: 300 }, crcJob(301, sgOf(inFrames, 0, 10), 10), { ...jobs[0], id: 302 }, { ...jobs[0], id: 303 }]
  t.equal(pool.submit(0, quick), 4)
  const t0 = performance.now()
  t.equal(pool.waitJob(301)?.status, Status.SUCCESS)
  const waited = performance.now() - t0
  t.ok(pool.has(303), `job 301 came back before the batch ended (${waited.toFixed(1)} ms)`)
  t.equal(pool.waitJob(303)?.status, Status.SUCCESS)
  // a timeout that expires returns undefined and leaves the job in flight
  t.equal(pool.submit(0, { ...jobs[0], id: 200 }), 1)
  t.equal(pool.waitJob(200, 0), undefined)
  t.ok(pool.has(200))
  t.equal(pool.waitJob(200)?.value, z.length)
})

t.test('thousands of mixed jobs across 2 workers, each completed once and right', async t => {
  const N = 4000
  const outFrames = scattered(N / 2) // each MEMMOVE and SHA256 job writes to a page of its own
  const want = new Map<number, (r: EngineResult) => boolean>()
  const jobs: PoolJob[] = []
  for (let id = 0; id < N; id++) {
    const off = (id * 97) % (60 * PAGE_SIZE)
    const size = 1 + ((id * 7919) % (3 * PAGE_SIZE))
    const slice = input.subarray(off, off + size)
    const kind = id % 4
    const dstPage = outFrames[Math.floor(id / 2)]
    if (kind === 0 || kind === 3) {
      const crc = crc32Js(slice)
      jobs.push(crcJob(id, sgOf(inFrames, off, size), size))
      want.set(id, r => r.status === Status.SUCCESS && r.value === crc && r.bytesCompleted === size)
    } else if (kind === 1) {
      const n = Math.min(size, PAGE_SIZE - 8)
      const dst: Sg = { addrs: [dstPage * PAGE_SIZE + 8], lens: [n] }
      jobs.push({ id, opcode: Opcode.MEMMOVE, flags: 0, size: n, dstSize: 0, args, src: sgOf(inFrames, off, n), dst })
      want.set(id, r => r.status === Status.SUCCESS && readSg(dst).equals(slice.subarray(0, n)))
    } else {
      const digest = createHash('sha256').update(slice).digest()
      const dst: Sg = { addrs: [dstPage * PAGE_SIZE + 100], lens: [32] }
      jobs.push({ id, opcode: Opcode.SHA256, flags: 0, size, dstSize: 0, args, src: sgOf(inFrames, off, size), dst })
      want.set(id, r => r.status === Status.SUCCESS && readSg(dst).equals(digest))
    }
  }
  const seen = new Map<number, EngineResult>()
  const dupes: number[] = []
  let resolveAll: () => void
  const all = new Promise<void>(resolve => { resolveAll = resolve })
  onDone = (id, r) => {
    if (seen.has(id)) dupes.push(id)
    seen.set(id, r)
    if (seen.size === N) resolveAll()
  }
  const pool = shared
  const before = pool.stats()
  await pool.ready()
  let next = 0
  const pump = (): void => {
    while (next < N) {
      const n = pool.submit(jobs.slice(next, next + 200))
      if (n === 0) return
      next += n
    }
  }
  pool.onSpace = pump
  pump()
  t.ok(next < N, 'the window cut the first submits short')
  await all
  t.same(dupes, [], 'no job completed twice')
  t.equal(seen.size, N)
  let wrong = 0
  for (const [id, r] of seen) if (!want.get(id)!(r)) wrong++
  t.equal(wrong, 0, 'every result checks out against node:crypto and zlib')
  const s = pool.stats()
  t.equal(s.submitted - before.submitted, N)
  t.equal(s.completed - before.completed, N)
  t.equal(s.inflight, 0)
  t.equal(s.errors, before.errors)
  const share = s.workers.map((w, i) => w.completed - before.workers[i].completed)
  t.ok(share.every(n => n > 0), `both workers took a share (${share})`)
  const batches = s.batches - before.batches
  t.ok(batches < N / 10, `jobs went in batches (${batches} doorbells)`)
  pool.onSpace = undefined
})

t.test('one batch of 256, one doorbell; per-worker order; ids past 2**32; wrapped positions', async t => {
  const got: number[] = []
  onDone = (id) => { got.push(id) }
  const pool = shared
  const before = pool.stats()
  const base = 2 ** 40
  const jobs = Array.from({ length: 256 }, (_, k) => crcJob(base + k, sgOf(inFrames, k * 13, 3000), 3000))
  t.equal(pool.submit(1, jobs), 256)
  t.equal(pool.stats().workers[1].batches - before.workers[1].batches, 1)
  t.equal(pool.stats().workers[0].batches - before.workers[0].batches, 0)
  t.equal(pool.inflight, 256)
  t.ok(pool.has(base + 255))
  const r = pool.waitJob(base + 255)
  t.equal(r?.status, Status.SUCCESS)
  t.equal(r?.value, crc32Js(input.subarray(255 * 13, 255 * 13 + 3000)))
  t.same(got, jobs.map(j => j.id), 'delivered in ring order, before waitJob returned')
  t.notOk(pool.has(base + 255))
  t.equal(pool.waitJob(base + 255), undefined, 'not in flight any more')
  // many more rounds through the wrap
  for (let round = 0; round < 8; round++) {
    const more = Array.from({ length: 200 }, (_, k) => crcJob(round * 1000 + k, sgOf(inFrames, k, 100), 100))
    t.equal(pool.submit(0, more), 200)
    t.equal(pool.waitJob(round * 1000 + 199)?.status, Status.SUCCESS)
  }
  t.equal(got.length, 256 + 1600)
})

t.test('an engine that throws completes the job ABORTED and keeps going', async t => {
  const errors: string[] = []
  const results = new Map<number, number>()
  onDone = (id, r) => { results.set(id, r.status) }
  const pool = shared
  const before = pool.stats().errors
  pool.onError = (m) => { errors.push(m) }
  t.equal(pool.submit(1, [
    crcJob(1, { addrs: [M.length - 4], lens: [8] }, 8),
    crcJob(2, sgOf(inFrames, 0, 8), 8)
  ]), 2)
  t.equal(pool.waitJob(2)?.status, Status.SUCCESS)
  t.equal(results.get(1), Status.ABORTED)
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(pool.stats().errors - before, 1)
  t.match(errors[0], /outside physical memory/)
  pool.onError = undefined
})

t.test('submit refuses what it cannot take, and bad jobs', async t => {
  const pool = new EnginePool({ mem, workers: 1, ringBytes: 4096, maxInflight: 10 })
  const small = (id: number): PoolJob => crcJob(id, sgOf(inFrames, 0, 10), 10)
  t.equal(pool.submit(Array.from({ length: 20 }, (_, k) => small(k))), 10, 'maxInflight caps a worker')
  t.equal(pool.submit(small(50)), 0)
  t.throws(() => pool.submit(small(3)), /already in flight/)
  t.throws(() => pool.submit(0, [small(40), small(41), small(40)]), /already in flight/, 'a duplicate within the batch')
  t.notOk(pool.has(40), 'a refused batch queues nothing')
  t.throws(() => pool.submit(small(-1)), RangeError)
  t.throws(() => pool.submit(5, [small(60)]), RangeError, 'no such worker')
  const huge = crcJob(70, sgOf(scattered(400), 0, 400 * PAGE_SIZE), 400 * PAGE_SIZE)
  t.ok(entryWords(huge) * 4 > 4096)
  t.throws(() => pool.submit(huge), /ring bytes/)
  t.equal(pool.waitJob(9)?.status, Status.SUCCESS)
  // adjacent physical segments are merged into one
  const [f] = [frame()]
  frame()
  const merged = { addrs: [f * PAGE_SIZE, f * PAGE_SIZE + 100, f * PAGE_SIZE + 300], lens: [100, 200, 50] }
  t.equal(entryWords(crcJob(1, merged, 350)), entryWords(crcJob(1, { addrs: [0], lens: [1] }, 1)))
  t.equal(pool.submit(crcJob(80, merged, 350)), 1)
  t.equal(pool.waitJob(80)?.value, crc32Js(M.subarray(f * PAGE_SIZE, f * PAGE_SIZE + 350)))
  // A list of adjacent segments takes one segment's words: the ring is filled by what
  // the jobs take once merged, not by their unmerged length, and a job whose unmerged
  // length alone exceeds the ring is still taken.
  const ones = (n: number): Sg => ({ addrs: Array.from({ length: n }, (_, i) => f * PAGE_SIZE + i), lens: new Array<number>(n).fill(1) })
  const values3 = new Map<number, number>()
  const pool3 = new EnginePool({ mem, workers: 1, ringBytes: 4096, maxInflight: 1000, onComplete: (id, r) => { values3.set(id, r.value) } })
  const oneWords = entryWords(crcJob(0, ones(100), 100))
  t.equal(oneWords, 14 + 3)
  t.equal(pool3.submit(crcJob(0, ones(400), 400)), 1, '400 unmerged segments are 1214 words, merged 17')
  t.equal(pool3.waitJob(0)?.value, crc32Js(M.subarray(f * PAGE_SIZE, f * PAGE_SIZE + 400)))
  const m = pool3.submit(Array.from({ length: 100 }, (_, k) => crcJob(k + 1, ones(100), 100)))
  t.ok(m >= Math.floor(1024 / oneWords) - 1, `the ring took ${m} jobs of ${oneWords} words (not of ${14 + 300})`)
  // and each of them ran over the bytes its entry names: an entry sized wrong in the ring
  // misplaces every entry after it
  pool3.waitJob(m)
  const crc100 = crc32Js(M.subarray(f * PAGE_SIZE, f * PAGE_SIZE + 100))
  t.ok(Array.from({ length: m }, (_, k) => k + 1).every(id => values3.get(id) === crc100), 'every job taken computed its CRC')
  // the ring holds about 1000 words: 40-word jobs fill it before maxInflight
  const pool2 = new EnginePool({ mem, workers: 1, ringBytes: 4096, maxInflight: 1000 })
  const pages = sgOf(inFrames, 0, 9 * PAGE_SIZE)
  const wide = (id: number): PoolJob => crcJob(id, pages, 9 * PAGE_SIZE)
  const words = entryWords(wide(0))
  const n = pool2.submit(Array.from({ length: 100 }, (_, k) => wide(k)))
  t.equal(n, Math.floor(1024 / words), `the ring took ${n} jobs of ${words} words`)
  await Promise.all([pool.close(), pool2.close(), pool3.close()])
  t.throws(() => pool.submit(small(90)), /closed/)
})

t.test('a killed engine aborts its jobs; the others go on', async t => {
  const results = new Map<number, number>()
  const pool = new EnginePool({ mem, workers: 2, onComplete: (id, r) => { results.set(id, r.status) } })
  pool.onError = () => {}
  await pool.ready()
  const big = sgOf(inFrames, 0, 64 * PAGE_SIZE)
  const out = sgOf(scattered(70), 0, 70 * PAGE_SIZE)
  const slow: PoolJob[] = Array.from({ length: 100 }, (_, k) => ({
    id: k, opcode: Opcode.DEFLATE, flags: 0, size: 64 * PAGE_SIZE, dstSize: 70 * PAGE_SIZE, args: Uint8Array.of(9, ...new Uint8Array(15)), src: big, dst: out
  }))
  t.equal(pool.submit(0, slow), 100)
  await pool.killWorker(0)
  t.equal(results.size, 100, 'every job completed')
  t.ok([...results.values()].every(s => s === Status.SUCCESS || s === Status.ABORTED))
  t.ok([...results.values()].includes(Status.ABORTED))
  t.notOk(pool.stats().workers[0].alive)
  t.equal(pool.submit(0, crcJob(100, big, 10)), 0, 'a dead engine takes nothing')
  t.equal(pool.submit(crcJob(101, big, 10)), 1, 'the pool routes around it')
  t.equal(pool.waitJob(101)?.status, Status.SUCCESS)
  await pool.close()
})

t.test('close drains in-flight work, then ends the workers', async t => {
  let done = 0
  onDone = () => { done++ }
  const pool = shared
  t.equal(pool.submit(Array.from({ length: 400 }, (_, k) => crcJob(k, sgOf(inFrames, k, 5000), 5000))), 400)
  t.ok(pool.inflight > 0)
  await Promise.all([pool.close(), pool.close()])
  t.equal(done, 400)
  t.equal(pool.inflight, 0)
  t.equal(pool.stats().completed, pool.stats().submitted)
  t.throws(() => pool.submit(crcJob(1, sgOf(inFrames, 0, 1), 1)), /closed/)
  const idle = new EnginePool({ mem, workers: 1 })
  await idle.close()
  t.pass('an idle pool closes')
})

t.test('a pool never holds the process open once idle, closed or not', async t => {
  const url = new URL('../../src/hw/engine-pool.ts', import.meta.url).href
  const code = `
    import { EnginePool } from ${JSON.stringify(url)}
    const pool = new EnginePool({ mem: new SharedArrayBuffer(1 << 16), workers: 2 })
    await pool.ready()
    const r = await new Promise(resolve => {
      pool.onComplete = (id, r) => resolve(r)
      pool.submit({ id: 1, opcode: 4, flags: 0, size: 9, dstSize: 0, args: new Uint8Array(16), src: { addrs: [4096], lens: [9] }, dst: { addrs: [], lens: [] } })
    })
    console.log(JSON.stringify(r))`
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--import=tsx', '--input-type=module', '-e', code], { timeout: 20000 }, (e, stdout) => {
      if (e !== null) reject(e)
      else resolve(stdout)
    })
  })
  t.same(JSON.parse(out), { status: Status.SUCCESS, result: 0, bytesCompleted: 9, value: crc32Js(new Uint8Array(9)) })
})

t.test('a polling engine takes short work, and is published to without a wake while it polls', async t => {
  let done = 0
  // a window far longer than the test: every publish below finds engine 0 polling
  const pool = new EnginePool({ mem, workers: 2, pollUs: 60_000_000, pollContended: true, onComplete: (_id, r) => { if (r.status === Status.SUCCESS) done++ } })
  t.teardown(() => pool.close())
  await pool.ready()
  const small = (from: number, n: number): PoolJob[] => Array.from({ length: n }, (_, k) => crcJob(from + k, sgOf(inFrames, k, 100), 100))
  // engine 0 polls only while every other engine sleeps: let engine 1 settle first
  await until(() => pool.sleeping(1))
  t.equal(pool.submit(small(0, 8)), 8)
  t.equal(pool.waitJob(7)?.status, Status.SUCCESS)
  let s = pool.stats()
  t.same(s.workers.map(w => w.submitted), [8, 0], 'short work stays on the polling engine')
  const wakes = s.wakes
  for (let round = 1; round <= 5; round++) {
    t.equal(pool.submit(small(round * 100, 8)), 8)
    t.equal(pool.waitJob(round * 100 + 7)?.status, Status.SUCCESS)
  }
  s = pool.stats()
  t.equal(s.wakes, wakes, 'no futex wake while engine 0 polls')
  t.notOk(pool.sleeping(0))
  // under POLL_LANE_LOAD (256 KiB): 50 jobs of 4000 bytes (and 512 a job) all go to
  // engine 0, where spreading by load would split them 25 and 25
  const heavy = (from: number, n: number): PoolJob[] => Array.from({ length: n }, (_, k) => crcJob(from + k, sgOf(inFrames, k, 4000), 4000))
  t.equal(pool.submit(heavy(10_000, 50)), 50)
  s = pool.stats()
  t.same(s.workers.map(w => w.submitted), [48 + 50, 0], 'engine 0 takes its share first')
  // past it, before any of them completes: the rest of the engines share the work
  t.equal(pool.submit(heavy(20_000, 120)), 120)
  t.ok(pool.stats().workers[1].submitted > 0, 'heavy work spreads to engine 1')
  await until(() => done === 48 + 170)
  // small jobs (1 KiB and under) stay on it past POLL_LANE_LOAD, up to 1 MiB of load: one
  // engine keeps up with them, and a second would only cost wakes. 600 of 100 bytes are
  // 367 KiB of load, which spreading by load would have split.
  const before = pool.stats().workers.map(w => w.submitted)
  t.equal(pool.submit(small(30_000, 600)), 600)
  t.same(pool.stats().workers.map((w, i) => w.submitted - before[i]), [600, 0], 'small jobs stay on the polling engine')
  await until(() => done === 48 + 170 + 600)
  await pool.close()
  t.equal(done, 48 + 170 + 600, 'every job completed SUCCESS')
})

/** Waits, up to 10 s, for `cond`; engines change state on their own threads. */
async function until (cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !cond(); i++) await new Promise(resolve => setTimeout(resolve, 5))
}

t.test('the polling engine sleeps instead while another engine runs, so it never takes a core from the main thread', async t => {
  const pool = new EnginePool({ mem, workers: 2, pollUs: 60_000_000, pollContended: true })
  t.teardown(() => pool.close())
  await pool.ready()
  await until(() => pool.sleeping(1))
  // tens of milliseconds of hashing on engine 1, one short job on engine 0
  const sg = sgOf(inFrames, 0, 64 * PAGE_SIZE)
  const long = Array.from({ length: 300 }, (_, k) => ({ id: 1000 + k, opcode: Opcode.SHA256, flags: 0, size: 64 * PAGE_SIZE, dstSize: 0, args, src: sg, dst: sgOf(scattered(1), 0, 32) }))
  t.equal(pool.submit(1, long), 300)
  t.equal(pool.submit(0, crcJob(1, sgOf(inFrames, 0, 100), 100)), 1)
  t.equal(pool.waitJob(1)?.status, Status.SUCCESS)
  await until(() => pool.sleeping(0) || pool.stats().workers[1].inflight === 0)
  t.ok(pool.sleeping(0), 'engine 0 went to sleep at once')
  t.ok(pool.stats().workers[1].inflight > 0, 'while engine 1 was still running')
  t.equal(pool.waitJob(1299)?.status, Status.SUCCESS)
})

t.test('a polling engine sleeps instead while the machine has more runnable threads than cores', { skip: !existsSync('/proc/loadavg') && 'no /proc/loadavg' }, async t => {
  const pool = new EnginePool({ mem, workers: 1, pollUs: 60_000_000 })
  t.teardown(() => pool.close())
  await pool.ready()
  // a thread more than the machine has cores, each spinning until told to stop (or 20 s)
  const stop = new Int32Array(new SharedArrayBuffer(4))
  const spinners = Array.from({ length: availableParallelism() + 1 }, () => new Worker(
    'const { workerData } = require("node:worker_threads"); const t0 = Date.now(); while (Atomics.load(workerData, 0) === 0 && Date.now() - t0 < 20000);',
    { eval: true, workerData: stop }))
  t.teardown(async () => {
    Atomics.store(stop, 0, 1)
    await Promise.all(spinners.map(async w => await new Promise(resolve => w.once('exit', resolve))))
  })
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(pool.submit(crcJob(1, sgOf(inFrames, 0, 100), 100)), 1)
  t.equal(pool.waitJob(1)?.status, Status.SUCCESS)
  // polling would last a minute; contended, it gives up within a few checks
  await until(() => pool.sleeping(0))
  t.ok(pool.sleeping(0), 'asleep, though its window is a minute')
})

t.test('an engine that polls for a short window sleeps after it, and the next publish wakes it', async t => {
  const pool = new EnginePool({ mem, workers: 1, pollUs: 1000 })
  t.teardown(() => pool.close())
  await pool.ready()
  t.equal(pool.submit(crcJob(1, sgOf(inFrames, 0, 100), 100)), 1)
  t.equal(pool.waitJob(1)?.status, Status.SUCCESS)
  await until(() => pool.sleeping(0))
  t.ok(pool.sleeping(0), 'asleep once its window has passed')
  const wakes = pool.stats().wakes
  t.equal(pool.submit(crcJob(2, sgOf(inFrames, 0, 100), 100)), 1)
  t.equal(pool.stats().wakes, wakes + 1, 'the publish woke it')
  t.equal(pool.waitJob(2)?.status, Status.SUCCESS)
  t.throws(() => pool.sleeping(1), RangeError)
  t.throws(() => new EnginePool({ mem, workers: 1, pollUs: -1 }), RangeError)
})

t.test('without pollUs, work spreads by load from the first job', async t => {
  const pool = new EnginePool({ mem, workers: 2 })
  t.teardown(() => pool.close())
  await pool.ready()
  t.equal(pool.submit(Array.from({ length: 8 }, (_, k) => crcJob(k, sgOf(inFrames, k, 100), 100))), 8)
  t.same(pool.stats().workers.map(w => w.submitted), [4, 4])
  t.equal(pool.waitJob(7)?.status, Status.SUCCESS)
  t.equal(pool.waitJob(6)?.status, Status.SUCCESS)
})

t.test('a wake-up that never reaches a sleeping engine costs a sleep slice, not the job', async t => {
  const pool = new EnginePool({ mem, workers: 1 })
  t.teardown(() => pool.close())
  await pool.ready()
  await until(() => pool.sleeping(0))
  t.ok(pool.sleeping(0))
  // the publish takes SLEEPING from 1 to 0 and notifies; here the notify is lost, as it was once
  const notify = Atomics.notify
  Atomics.notify = () => 0
  try {
    t.equal(pool.submit(crcJob(1, sgOf(inFrames, 0, 100), 100)), 1)
  } finally {
    Atomics.notify = notify
  }
  t.equal(pool.stats().wakes, 1, 'the publish believed it woke the engine')
  const r = pool.waitJob(1, 10_000)
  t.equal(r?.status, Status.SUCCESS, 'the engine found the job when its sleep timed out')
  t.equal(r?.value, crc32Js(input.subarray(0, 100)))
  t.equal(pool.stats().lostWakes, 1)
})

t.test('a completion whose announce never reaches the main thread is delivered a watch period late', async t => {
  const got: number[] = []
  const results: number[] = []
  const pool = new EnginePool({ mem, workers: 1, onComplete: (id, r) => { got.push(id); results.push(r.value) } })
  t.teardown(() => pool.close())
  await pool.ready()
  const delivered = async (n: number): Promise<boolean> => {
    const end = performance.now() + 5000
    while (got.length < n && performance.now() < end) await new Promise(resolve => setTimeout(resolve, 5))
    return got.length >= n
  }
  type Wait = (a: Int32Array, i: number, v: number) => { async: boolean, value: unknown }
  const atomics = Atomics as unknown as { waitAsync: Wait }
  const real = atomics.waitAsync
  // The next wait the pool arms is registered, but its promise never settles: the
  // engine's notify reaches nobody, as a lost wake-up would. Later waits are real.
  let lose = 1
  atomics.waitAsync = (a, i, v) => {
    const r = real(a, i, v)
    return r.async && lose-- > 0 ? { async: true, value: new Promise(() => {}) } : r
  }
  try {
    // the wait armed before the patch hears this one; the pool's next wait is the lost one
    t.equal(pool.submit(crcJob(1, sgOf(inFrames, 0, 100), 100)), 1)
    t.ok(await delivered(1), 'delivered through the wait armed before the patch')
    t.equal(lose, 0, 'the pool waits again, on the wait that is lost')
    t.equal(pool.stats().lateDrains, 0)
    t.equal(pool.submit(crcJob(2, sgOf(inFrames, PAGE_SIZE, 100), 100)), 1)
    t.ok(await delivered(2), 'delivered with no wake-up at all')
    t.equal(pool.stats().lateDrains, 1, 'by the watch')
    // the watch left the lost wait for a fresh one: the next completion needs no watch
    t.equal(pool.submit(crcJob(3, sgOf(inFrames, 2 * PAGE_SIZE, 100), 100)), 1)
    t.ok(await delivered(3))
    t.equal(pool.stats().lateDrains, 1, 'heard through the fresh wait')
  } finally {
    atomics.waitAsync = real
  }
  t.same(got, [1, 2, 3], 'each once, in order')
  t.same(results, [0, 1, 2].map(k => crc32Js(input.subarray(k * PAGE_SIZE, k * PAGE_SIZE + 100))))
})

t.test('engines run below the priority of the thread that starts them', async t => {
  const base = getPriority()
  const want = Math.min(19, base + ENGINE_NICE)
  // the kernel's word for it, not the engines': field 19 of each thread's stat
  const hasTasks = existsSync('/proc/self/task')
  const threadsAt = (nice: number): number => readdirSync('/proc/self/task').filter(tid => {
    try {
      return Number(readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ')[16]) === nice
    } catch {
      return false // a thread that ended while this ran
    }
  }).length
  // other tests' engines may still be running here: count from what is there now
  const before = hasTasks ? threadsAt(want) : 0
  const pool = new EnginePool({ mem, workers: 2 })
  const level = new EnginePool({ mem, workers: 1, nice: 0 })
  t.teardown(async () => { await pool.close(); await level.close() })
  t.same(pool.stats().workers.map(w => w.nice), [null, null], 'unknown until the engine has started')
  await Promise.all([pool.ready(), level.ready()])
  t.same(pool.stats().workers.map(w => w.nice), [want, want], 'each engine reads back its own nice value')
  t.same(level.stats().workers.map(w => w.nice), [base], 'nice: 0 leaves it')
  t.equal(getPriority(), base, 'the main thread keeps its own')
  if (hasTasks && want !== base) t.equal(threadsAt(want) - before, 2, 'two more threads run at the lower priority')
  t.throws(() => new EnginePool({ mem, workers: 1, nice: -1 }), RangeError)
  t.throws(() => new EnginePool({ mem, workers: 1, nice: 1.5 }), RangeError)
})

t.test('a long batch announces its first half before it runs the second', async t => {
  // 64 SHA256 jobs of 256 KiB in one publish to one engine: some 20 ms of work, so that
  // the main thread hears of the first half while the engine still runs the second.
  // notifyAfterMs is set past the test, so the halfway announce is the only one mid-batch.
  const bursts: number[] = []
  let open = false
  const pool = new EnginePool({
    mem,
    workers: 1,
    notifyAfterMs: 60_000,
    onComplete: () => {
      // completions delivered together come from one drain, in one task
      if (!open) {
        open = true
        bursts.push(0)
        queueMicrotask(() => { open = false })
      }
      bursts[bursts.length - 1]++
    }
  })
  t.teardown(() => pool.close())
  await pool.ready()
  const digests = frame() * PAGE_SIZE
  const jobs: PoolJob[] = Array.from({ length: 64 }, (_, k) => ({
    id: k, opcode: Opcode.SHA256, flags: 0, size: 64 * PAGE_SIZE, dstSize: 32, args, src: sgOf(inFrames, 0, 64 * PAGE_SIZE), dst: { addrs: [digests + 32 * k], lens: [32] }
  }))
  t.equal(pool.submit(0, jobs), 64)
  t.equal(pool.stats().batches, 1, 'one publish')
  await until(() => pool.inflight === 0)
  t.equal(bursts.reduce((a, b) => a + b, 0), 64, 'every job completed')
  t.ok(bursts.length >= 2 && bursts[0] < 64, `heard of before the batch ended (deliveries: ${bursts.join(', ')})`)
  const want = createHash('sha256').update(input).digest()
  t.ok(jobs.every((_, k) => Buffer.from(M.subarray(digests + 32 * k, digests + 32 * k + 32)).equals(want)), 'the digests are right')
})

t.test('a batch that announced halfway leaves its end to the batch behind it, and the last batch still announces its end', async t => {
  // A long batch announces halfway; the main thread publishes more work on hearing it,
  // so the first batch's end goes unannounced and its last completions arrive with the
  // second batch's. The second batch, with nothing behind it, must announce its end:
  // were it skipped, only the pool's watch would deliver it (lateDrains).
  const got: number[] = []
  let second: PoolJob[] = []
  const digests = frame() * PAGE_SIZE
  const sha = (k: number): PoolJob => ({
    id: k, opcode: Opcode.SHA256, flags: 0, size: 64 * PAGE_SIZE, dstSize: 32, args, src: sgOf(inFrames, 0, 64 * PAGE_SIZE), dst: { addrs: [digests + 32 * k], lens: [32] }
  })
  const pool = new EnginePool({
    mem,
    workers: 1,
    notifyAfterMs: 60_000,
    onComplete: (id) => {
      got.push(id)
      if (second.length === 0) {
        second = Array.from({ length: 8 }, (_, k) => sha(64 + k))
        pool.submit(0, second)
      }
    }
  })
  t.teardown(() => pool.close())
  await pool.ready()
  t.equal(pool.submit(0, Array.from({ length: 64 }, (_, k) => sha(k))), 64)
  await until(() => got.length === 72)
  t.same(got, Array.from({ length: 72 }, (_, k) => k), 'each once, in order')
  t.equal(pool.stats().lateDrains, 0, 'every completion came with an announce, none through the watch')
  const want = createHash('sha256').update(input).digest()
  t.ok(got.every(k => Buffer.from(M.subarray(digests + 32 * k, digests + 32 * k + 32)).equals(want)), 'the digests are right')
})
