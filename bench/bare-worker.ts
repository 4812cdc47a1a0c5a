/**
 * The denominator of the engine benchmarks: the same computation as an engine does, run
 * bare (no rings, no translation) in a worker thread, on ordinary Buffers. It cycles
 * through as many distinct inputs and outputs as it is given (its share of the buffers
 * the device benchmark keeps in flight): one buffer hashed or compressed over and over
 * stays in cache and trains the branch predictors on its bytes, which made the bare
 * DEFLATE at 4 KiB run 1.4-1.6x as fast as on the device's inputs (bench/RESULTS.md).
 * It runs `warmSeconds` before it is timed, as the device's side does.
 */
import { parentPort, workerData } from 'node:worker_threads'
import crypto from 'node:crypto'
import zlib from 'node:zlib'
import { MAX_RUN_BYTES } from '../src/hw/engine-ops.ts'

const { op, size, seconds, warmSeconds, windowMs, buffers } = workerData as { op: string, size: number, seconds: number, warmSeconds: number, windowMs?: number, buffers: number }
const inputs = Array.from({ length: buffers }, () => crypto.randomBytes(size))
const outputs = Array.from({ length: buffers }, () => Buffer.alloc(size + 1024))
const key = crypto.randomBytes(32)
const iv = crypto.randomBytes(12)
const run = (i: number): void => {
  const input = inputs[i % buffers]
  const out = outputs[i % buffers]
  // the one-shot hash, as the engines use for a source in one segment
  if (op === 'sha256') crypto.hash('sha256', input, 'buffer').copy(out)
  else if (op === 'deflate') zlib.deflateRawSync(input, { level: 1 }).copy(out)
  else {
    // in the engines' runs, whose outputs are copied out while still in the cache
    const c = crypto.createCipheriv('aes-256-gcm', key, iv)
    for (let o = 0; o < size; o += MAX_RUN_BYTES) c.update(input.subarray(o, Math.min(size, o + MAX_RUN_BYTES))).copy(out, o)
    c.final()
    c.getAuthTag().copy(out, size)
  }
}
let ops = 0
const warmUntil = performance.now() + warmSeconds * 1000
while (performance.now() < warmUntil) run(ops++)
ops = 0
const t0 = performance.now()
// with windowMs: bytes per second in each window from the start (the ramp)
const windows: number[] = []
let from = t0
let base = 0
while (performance.now() - t0 < seconds * 1000) {
  run(ops)
  ops++
  if (windowMs !== undefined) {
    const now = performance.now()
    if (now - from >= windowMs) {
      windows.push((ops - base) * size / ((now - from) / 1000))
      from = now
      base = ops
    }
  }
}
parentPort?.postMessage({ ops, seconds: (performance.now() - t0) / 1000, windows })
