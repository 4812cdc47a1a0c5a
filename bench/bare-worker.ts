/**
 * The denominator of the engine benchmarks: the same computation as an engine does, run
 * bare (no rings, no translation) in a worker thread, on an ordinary Buffer.
 */
import { parentPort, workerData } from 'node:worker_threads'
import crypto from 'node:crypto'
import zlib from 'node:zlib'

const { op, size, seconds } = workerData as { op: string, size: number, seconds: number }
const input = crypto.randomBytes(size)
const key = crypto.randomBytes(32)
const iv = crypto.randomBytes(12)
const out = Buffer.alloc(size + 1024)
const run = (): void => {
  if (op === 'sha256') crypto.createHash('sha256').update(input).digest().copy(out)
  else if (op === 'deflate') zlib.deflateRawSync(input, { level: 1 }).copy(out)
  else {
    const c = crypto.createCipheriv('aes-256-gcm', key, iv)
    c.update(input).copy(out)
    c.final()
    c.getAuthTag().copy(out, size)
  }
}
let ops = 0
const t0 = performance.now()
while (performance.now() - t0 < seconds * 1000) {
  run()
  ops++
}
parentPort?.postMessage({ ops, seconds: (performance.now() - t0) / 1000 })
