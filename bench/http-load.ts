/**
 * An HTTP load generator for the benchmarks: plain JavaScript in a worker thread, keeping
 * `concurrency` POSTs in flight over keep-alive sockets on 127.0.0.1, so that the server's
 * event loop is what is measured and not the client's. The doorbell section used to
 * time the mediated path through the SDK's fetch in the server's own thread: 17.6 k
 * descriptors a second in the sixth session's full run, where this measured 158 k.
 */
import { Worker } from 'node:worker_threads'

const CLIENT = `
const http = require('node:http')
const { parentPort, workerData } = require('node:worker_threads')
const { port, path, headers, body, seconds, concurrency, answerBytes } = workerData
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency })
const payload = Buffer.from(body)
let done = 0
let bad = 0
const end = Date.now() + seconds * 1000
function one () {
  return new Promise(resolve => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent, headers: { ...headers, 'content-length': payload.length } }, res => {
      let n = 0
      res.on('data', c => { n += c.length })
      res.on('end', () => { if (res.statusCode === 200 && n === answerBytes) done++; else bad++; resolve() })
    })
    req.on('error', () => { bad++; resolve() })
    req.end(payload)
  })
}
async function loop () { while (Date.now() < end) await one() }
const t0 = performance.now()
Promise.all(Array.from({ length: concurrency }, loop)).then(() => {
  agent.destroy()
  parentPort.postMessage({ done, bad, seconds: (performance.now() - t0) / 1000 })
})
`

export interface HttpLoad {
  port: number
  path: string
  headers: Record<string, string>
  body: Buffer
  /** The size of a good answer: anything else counts as a failed request. */
  answerBytes: number
  seconds: number
  concurrency: number
}

/** Requests per second answered 200 with `answerBytes`; throws if any request failed. */
export async function httpLoad (o: HttpLoad): Promise<number> {
  const w = new Worker(CLIENT, { eval: true, workerData: o })
  const r = await new Promise<{ done: number, bad: number, seconds: number }>((resolve, reject) => {
    w.once('message', resolve)
    w.once('error', reject)
  })
  await w.terminate()
  if (r.bad > 0) throw new Error(`${r.bad} requests to ${o.path} failed`)
  return r.done / r.seconds
}
