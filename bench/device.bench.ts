/**
 * Issue 3's benchmark. (1) NOOP and 64-byte MEMMOVE descriptors per second through the
 * device (ring acceptance, arbiter, translation, engine ring, completion) in batches of
 * 1, 32 and 256, against the bare shared-memory ring handoff to the same number of
 * workers (EnginePool with empty jobs). (2) SHA256, DEFLATE level 1 and AES-256-GCM
 * through the engines on 4 KiB, 64 KiB and 1 MiB buffers, against the same computation
 * run bare in the same number of worker threads. The cases are exported for drivers
 * that run one of them alone (bench/RESULTS.md describes those runs).
 */
import { Worker } from 'node:worker_threads'
import { extname } from 'node:path'
import { fileURLToPath } from 'node:url'
import crypto from 'node:crypto'
import { AccelDevice } from '../src/hw/accel-device.ts'
import { DEFAULT_DEVICES, type DeviceConfig } from '../src/hw/device-config.ts'
import { DESC_SIZE, Opcode, makeDescriptor, writeDescriptor } from '../src/hw/descriptor.ts'
import { EnginePool, type PoolJob } from '../src/hw/engine-pool.ts'
import { Kernel } from '../src/kernel/kernel.ts'
import { Prot } from '../src/kernel/vma.ts'
import { fmt, paired } from './harness.ts'

const P = 4096
const ENGINES = 2
const SECONDS = 1
/**
 * Every case, device and bare alike, runs this long before it is measured. Each case
 * starts a fresh device and fresh worker threads. Throughput in 200 ms windows from the
 * start (ninth session, bench/RESULTS.md): the bare workers run at their rate from the
 * first window; the device reaches its own after 0.6-0.8 s at 4 KiB, and AES-256-GCM at
 * 1 MiB only after about 1.5 s (1.1, 3.5, 3.2, 3.7 ... 4.5 GB/s). Measured from cold, as
 * until the eighth session (0.6 s, no warm-up), the ratios were mostly start-up.
 */
const WARM_SECONDS = 1.5

/**
 * A closed loop: `fill` tops up the work in flight, `complete` counts each completion.
 * Answers completions per second over SECONDS, after WARM_SECONDS unmeasured.
 */
class ClosedLoop {
  done = 0
  #wake: (() => void) | undefined
  readonly complete = (): void => {
    this.done++
    if (this.#wake !== undefined) { const w = this.#wake; this.#wake = undefined; w() }
  }

  async run (fill: () => void): Promise<number> {
    const t0 = performance.now()
    let from = -1
    let base = 0
    for (;;) {
      const now = performance.now()
      if (from < 0 && now - t0 >= WARM_SECONDS * 1000) {
        from = now
        base = this.done
      }
      if (from >= 0 && now - from >= SECONDS * 1000) return (this.done - base) / ((now - from) / 1000)
      fill()
      await new Promise<void>(resolve => { this.#wake = resolve })
    }
  }

  /** Completions per second in each `windowMs` from the start, cold, for `totalMs`. */
  async windows (fill: () => void, totalMs: number, windowMs: number): Promise<number[]> {
    const out: number[] = []
    let from = performance.now()
    const end = from + totalMs
    let base = this.done
    for (;;) {
      const now = performance.now()
      if (now - from >= windowMs) {
        out.push((this.done - base) / ((now - from) / 1000))
        from = now
        base = this.done
      }
      if (now >= end) return out
      fill()
      await new Promise<void>(resolve => { this.#wake = resolve })
    }
  }
}

function config (inlineBytes = DEFAULT_DEVICES[0].inlineBytes): DeviceConfig {
  return {
    ...structuredClone(DEFAULT_DEVICES[0]),
    inlineBytes,
    engines: ENGINES,
    queues: [{ mode: 'dedicated', depth: 4096, priority: 1 }],
    // set to compare: 0 turns the engines' polling off, as the service's variable does
    pollUs: Number(process.env.WARPD_ENGINE_POLL_US ?? DEFAULT_DEVICES[0].pollUs)
  }
}

/** Closed loop: keep `window` descriptors outstanding, `batch` per doorbell write. */
export async function deviceRate (opcode: number, batch: number, inlineBytes?: number, size = 64): Promise<number> {
  const k = new Kernel({ physMemBytes: 64 * 2 ** 20 })
  const dev = new AccelDevice(config(inlineBytes), k.iommu)
  await dev.pool.ready()
  const p = k.createProcess('bench')
  const pasid = k.bindPasid(p)
  if (!pasid.ok) throw new Error(pasid.message)
  const buf = p.mm.mmap({ length: 16 * P, prot: Prot.READ | Prot.WRITE, shared: false })
  if (!buf.ok) throw new Error(buf.message)
  p.mm.store(buf.value, new Uint8Array(16 * P))
  const q = dev.allocQueue('dedicated')
  if (q === undefined) throw new Error('no queue')
  const descs = new Uint8Array(batch * DESC_SIZE)
  for (let i = 0; i < batch; i++) {
    writeDescriptor(descs, i * DESC_SIZE, makeDescriptor({ opcode, src: buf.value, dst: buf.value + 8 * P + ((i * size) % (8 * P - size)), size: opcode === Opcode.NOOP ? 0 : size }))
  }
  const window = Math.max(batch * 4, 256)
  const loop = new ClosedLoop()
  const port = q.attach(pasid.value, pasid.value, { completion: loop.complete })
  let submitted = 0
  const rate = await loop.run(() => {
    while (submitted - loop.done + batch <= window) submitted += port.submit(descs, 0, batch)
  })
  await dev.close()
  return rate
}

/**
 * The bare ring handoff: empty jobs through the same rings to the same number of workers,
 * polling as the device's engines do, so that the ratio is the device's own work.
 */
export async function bareRate (batch: number): Promise<number> {
  const k = new Kernel({ physMemBytes: 16 * 2 ** 20 })
  const loop = new ClosedLoop()
  // job ids are slots, reused the last freed first, as the device numbers its jobs
  const free: number[] = []
  let slots = 0
  const pool = new EnginePool({
    mem: k.mem,
    workers: ENGINES,
    pollUs: config().pollUs,
    onComplete: (id) => {
      free.push(id)
      loop.complete()
    }
  })
  await pool.ready()
  const args = new Uint8Array(16)
  const empty = { addrs: [], lens: [] }
  const window = Math.max(batch * 4, 256)
  let submitted = 0
  const rate = await loop.run(() => {
    while (submitted - loop.done + batch <= window) {
      const jobs: PoolJob[] = []
      for (let i = 0; i < batch; i++) jobs.push({ id: free.pop() ?? slots++, opcode: Opcode.NOOP, flags: 0, size: 0, dstSize: 0, args, src: empty, dst: empty })
      const n = pool.submit(jobs)
      for (let i = n; i < jobs.length; i++) free.push(jobs[i].id)
      submitted += n
    }
  })
  await pool.close()
  return rate
}

/** A client pipelines small work: up to 4 MiB of buffers in flight, between 8 and 128 descriptors. */
function slotsFor (size: number): number {
  return Math.max(8, Math.min(128, Math.floor(4 * 2 ** 20 / size)))
}

type EngineOp = 'sha256' | 'deflate' | 'aes'

/**
 * A device, and a process whose `slotsFor(size)` buffers `op` works on; `fill` keeps every
 * slot's descriptor in flight, `loop` hears each completion.
 */
async function engineRig (op: EngineOp, size: number, loop: ClosedLoop): Promise<{ fill: () => void, close: () => Promise<void> }> {
  const k = new Kernel({ physMemBytes: 256 * 2 ** 20 })
  const dev = new AccelDevice(config(), k.iommu)
  await dev.pool.ready()
  const p = k.createProcess('bench')
  const pasid = k.bindPasid(p)
  if (!pasid.ok) throw new Error(pasid.message)
  const slots = slotsFor(size)
  const span = size + 2 * P
  const r = p.mm.mmap({ length: slots * 2 * span + P, prot: Prot.READ | Prot.WRITE, shared: false })
  if (!r.ok) throw new Error(r.message)
  const base = r.value
  p.mm.store(base, crypto.randomBytes(slots * 2 * span))
  const keyAt = base + slots * 2 * span
  p.mm.store(keyAt, crypto.randomBytes(64))
  const q = dev.allocQueue('dedicated')
  if (q === undefined) throw new Error('no queue')
  const descs = new Uint8Array(slots * DESC_SIZE)
  for (let i = 0; i < slots; i++) {
    const src = base + i * 2 * span
    const dst = src + span
    const opArgs = new Uint8Array(16)
    let opcode: number = Opcode.SHA256
    if (op === 'deflate') { opcode = Opcode.DEFLATE; opArgs[0] = 1 }
    if (op === 'aes') {
      opcode = Opcode.ENCRYPT
      Buffer.from(opArgs.buffer).writeBigUInt64LE(BigInt(keyAt), 0)
      Buffer.from(opArgs.buffer).writeBigUInt64LE(BigInt(keyAt + 32), 8)
    }
    writeDescriptor(descs, i * DESC_SIZE, makeDescriptor({ opcode, src, dst, size, dstSize: span, opArgs }))
  }
  const port = q.attach(pasid.value, pasid.value, { completion: loop.complete })
  let submitted = 0
  return {
    fill: () => {
      // As a client does: the slots freed since the last fill in one write, up to where
      // the buffers wrap. A write a descriptor cost the main thread 1.31 us a SHA256 job
      // of 4 KiB against 1.21 us (fifteenth session, four runs each).
      while (submitted - loop.done < slots) {
        const at = submitted % slots
        const n = port.submit(descs, at * DESC_SIZE, Math.min(slots - (submitted - loop.done), slots - at))
        if (n === 0) break
        submitted += n
      }
    },
    close: async () => await dev.close()
  }
}

/** Bytes per second of `op` on `size`-byte buffers through the device's engines. */
export async function engineThroughput (op: EngineOp, size: number): Promise<number> {
  const loop = new ClosedLoop()
  const rig = await engineRig(op, size, loop)
  const rate = await loop.run(rig.fill)
  await rig.close()
  return rate * size
}

interface BareResult { ops: number, seconds: number, windows?: number[] }

/** The bare workers' results: timed after WARM_SECONDS, or from cold in windows of `windowMs`. */
async function bareWorkers (op: string, size: number, seconds: number, windowMs?: number): Promise<BareResult[]> {
  const here = fileURLToPath(import.meta.url)
  const entry = new URL('./bare-worker' + extname(here), import.meta.url)
  // each worker its share of the distinct buffers the device cycles through
  const workerData = { op, size, seconds, warmSeconds: windowMs === undefined ? WARM_SECONDS : 0, windowMs, buffers: Math.ceil(slotsFor(size) / ENGINES) }
  return await Promise.all(Array.from({ length: ENGINES }, async () => await new Promise<BareResult>((resolve, reject) => {
    const w = extname(here) === '.ts'
      ? new Worker(`import('tsx/esm/api').then(a => { a.register(); return import(${JSON.stringify(entry.href)}) })`, { eval: true, workerData })
      : new Worker(entry, { workerData })
    w.once('message', resolve)
    w.once('error', reject)
  })))
}

export async function bareThroughput (op: string, size: number): Promise<number> {
  const results = await bareWorkers(op, size, SECONDS)
  return results.reduce((s, r) => s + r.ops * size / r.seconds, 0)
}

const RAMP_MS = 4000
const RAMP_WINDOW_MS = 200

/**
 * `npm run bench -- ramp`: bytes per second in 200 ms windows from a cold start, device
 * and bare, for the cases whose warm-up WARM_SECONDS has to cover (bench/RESULTS.md).
 */
export async function benchRamp (): Promise<string[]> {
  const out: string[] = []
  const mb = (xs: number[]): string => xs.map(x => (x / 1e6).toFixed(0)).join(' ')
  for (const [op, size] of [['sha256', 4096], ['aes', 4096], ['deflate', 4096], ['aes', 2 ** 20]] as const) {
    const loop = new ClosedLoop()
    const rig = await engineRig(op, size, loop)
    const device = (await loop.windows(rig.fill, RAMP_MS, RAMP_WINDOW_MS)).map(x => x * size)
    await rig.close()
    const workers = await bareWorkers(op, size, RAMP_MS / 1000, RAMP_WINDOW_MS)
    const n = Math.min(...workers.map(w => w.windows?.length ?? 0))
    const bare = Array.from({ length: n }, (_, i) => workers.reduce((s, w) => s + (w.windows?.[i] ?? 0), 0))
    out.push(`| ${op} ${size >= 2 ** 20 ? '1 MiB' : `${size / 1024} KiB`}, MB/s a window | device: ${mb(device)} | bare: ${mb(bare)} |`)
  }
  return out
}

export async function benchDevice (): Promise<string[]> {
  const out: string[] = []
  // The device runs these on its front end (inlineBytes); the rows with inlineBytes 0 hand
  // them to the engines through the rings the bare denominator measures, as every job went
  // until the sixteenth session.
  for (const [name, opcode] of [['NOOP', Opcode.NOOP], ['MEMMOVE 64 B', Opcode.MEMMOVE]] as const) {
    for (const [batch, inlineBytes] of [[1, undefined], [32, undefined], [256, undefined], [32, 0]] as const) {
      const r = await paired(3, async () => [await deviceRate(opcode, batch, inlineBytes), await bareRate(batch)])
      const how = inlineBytes === 0 ? 'through the engines (inlineBytes 0)' : `${ENGINES} engines`
      out.push(`| ${name}, batch ${batch}, ${how} | ${fmt(r.num)} desc/s vs bare ring ${fmt(r.den)}/s | ${(r.ratio * 100).toFixed(0)}% |`)
    }
  }
  for (const op of ['sha256', 'deflate', 'aes'] as const) {
    for (const size of [4096, 65536, 2 ** 20]) {
      const r = await paired(3, async () => [await engineThroughput(op, size), await bareThroughput(op, size)])
      out.push(`| ${op} ${size >= 2 ** 20 ? '1 MiB' : `${size / 1024} KiB`}, ${ENGINES} engines | ${fmt(r.num)}B/s vs bare ${fmt(r.den)}B/s | ${(r.ratio * 100).toFixed(0)}% |`)
    }
  }
  return out
}
