/**
 * Issue 3's benchmark. (1) NOOP and 64-byte MEMMOVE descriptors per second through the
 * device (ring acceptance, arbiter, translation, engine ring, completion) in batches of
 * 1, 32 and 256, against the bare shared-memory ring handoff to the same number of
 * workers (EnginePool with empty jobs). (2) SHA256, DEFLATE level 1 and AES-256-GCM
 * through the engines on 4 KiB, 64 KiB and 1 MiB buffers, against the same computation
 * run bare in the same number of worker threads.
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
const SECONDS = 0.6

function config (): DeviceConfig {
  return {
    ...structuredClone(DEFAULT_DEVICES[0]),
    engines: ENGINES,
    queues: [{ mode: 'dedicated', depth: 4096, priority: 1 }]
  }
}

/** Closed loop: keep `window` descriptors outstanding, `batch` per doorbell write. */
async function deviceRate (opcode: number, batch: number): Promise<number> {
  const k = new Kernel({ physMemBytes: 64 * 2 ** 20 })
  const dev = new AccelDevice(config(), k.iommu)
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
    writeDescriptor(descs, i * DESC_SIZE, makeDescriptor({ opcode, src: buf.value, dst: buf.value + 8 * P + (i % 32) * 64, size: opcode === Opcode.NOOP ? 0 : 64 }))
  }
  const window = Math.max(batch * 4, 256)
  let done = 0
  let wake: (() => void) | undefined
  const port = q.attach(pasid.value, pasid.value, {
    completion: () => {
      done++
      if (wake !== undefined) { const w = wake; wake = undefined; w() }
    }
  })
  let submitted = 0
  const t0 = performance.now()
  while (performance.now() - t0 < SECONDS * 1000) {
    while (submitted - done + batch <= window) submitted += port.submit(descs, 0, batch)
    await new Promise<void>(resolve => { wake = resolve })
  }
  const secs = (performance.now() - t0) / 1000
  await dev.close()
  return done / secs
}

/** The bare ring handoff: empty jobs through the same rings to the same number of workers. */
async function bareRate (batch: number): Promise<number> {
  const k = new Kernel({ physMemBytes: 16 * 2 ** 20 })
  let done = 0
  let wake: (() => void) | undefined
  const pool = new EnginePool({
    mem: k.mem,
    workers: ENGINES,
    onComplete: () => {
      done++
      if (wake !== undefined) { const w = wake; wake = undefined; w() }
    }
  })
  await pool.ready()
  const args = new Uint8Array(16)
  const empty = { addrs: [], lens: [] }
  let id = 1
  const window = Math.max(batch * 4, 256)
  let submitted = 0
  const t0 = performance.now()
  while (performance.now() - t0 < SECONDS * 1000) {
    while (submitted - done + batch <= window) {
      const jobs: PoolJob[] = []
      for (let i = 0; i < batch; i++) jobs.push({ id: id++, opcode: Opcode.NOOP, flags: 0, size: 0, dstSize: 0, args, src: empty, dst: empty })
      submitted += pool.submit(jobs)
    }
    await new Promise<void>(resolve => { wake = resolve })
  }
  const secs = (performance.now() - t0) / 1000
  await pool.close()
  return done / secs
}

/** A client pipelines small work: up to 4 MiB of buffers in flight, between 8 and 128 descriptors. */
function slotsFor (size: number): number {
  return Math.max(8, Math.min(128, Math.floor(4 * 2 ** 20 / size)))
}

/** Bytes per second of `op` on `size`-byte buffers through the device's engines. */
async function engineThroughput (op: 'sha256' | 'deflate' | 'aes', size: number): Promise<number> {
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
  let done = 0
  let wake: (() => void) | undefined
  const port = q.attach(pasid.value, pasid.value, {
    completion: () => {
      done++
      if (wake !== undefined) { const w = wake; wake = undefined; w() }
    }
  })
  let submitted = 0
  const t0 = performance.now()
  while (performance.now() - t0 < SECONDS * 1000) {
    while (submitted - done < slots) submitted += port.submit(descs, ((submitted % slots) * DESC_SIZE), 1)
    await new Promise<void>(resolve => { wake = resolve })
  }
  const secs = (performance.now() - t0) / 1000
  await dev.close()
  return done * size / secs
}

async function bareThroughput (op: string, size: number): Promise<number> {
  const here = fileURLToPath(import.meta.url)
  const entry = new URL('./bare-worker' + extname(here), import.meta.url)
  // each worker its share of the distinct buffers the device cycles through
  const workerData = { op, size, seconds: SECONDS, buffers: Math.ceil(slotsFor(size) / ENGINES) }
  const results = await Promise.all(Array.from({ length: ENGINES }, async () => await new Promise<{ ops: number, seconds: number }>((resolve, reject) => {
    const w = extname(here) === '.ts'
      ? new Worker(`import('tsx/esm/api').then(a => { a.register(); return import(${JSON.stringify(entry.href)}) })`, { eval: true, workerData })
      : new Worker(entry, { workerData })
    w.once('message', resolve)
    w.once('error', reject)
  })))
  return results.reduce((s, r) => s + r.ops * size / r.seconds, 0)
}

export async function benchDevice (): Promise<string[]> {
  const out: string[] = []
  for (const [name, opcode] of [['NOOP', Opcode.NOOP], ['MEMMOVE 64 B', Opcode.MEMMOVE]] as const) {
    for (const batch of [1, 32, 256]) {
      const r = await paired(3, async () => [await deviceRate(opcode, batch), await bareRate(batch)])
      out.push(`| ${name}, batch ${batch}, ${ENGINES} engines | ${fmt(r.num)} desc/s vs bare ring ${fmt(r.den)}/s | ${(r.ratio * 100).toFixed(0)}% |`)
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
