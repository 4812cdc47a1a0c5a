/**
 * The doorbell (PROTOCOL.md section 5): a WebSocket per SVA queue through which a
 * tenant bound to a PASID submits straight to the hardware queue (the seed's R3). Each
 * SUBMIT frame goes to the QueuePort the kernel handed out when it created and bound the
 * queue: the hardware stamps the PASID, translates through the process's own page
 * tables, and no kernel code runs per descriptor. STORE and LOAD are the process's own
 * CPU accesses. A malformed frame gets PROTOCOL_ERROR and a close, and touches nothing.
 *
 * Flow control: completions are gathered into one COMPLETIONS frame per turn of the
 * event loop; a client that does not read (ws bufferedAmount above the high mark) is no
 * longer read from until it catches up, so the server's memory stays bounded.
 */
import type { FastifyInstance } from 'fastify'
import websocket, { type WebsocketPluginOptions } from '@fastify/websocket'
import { WebSocket, type RawData } from 'ws'
import { CR, CR_SIZE, DESC, DESC_SIZE, Flag, Status } from '../src/hw/descriptor.ts'
import { QueueState, type PortListener } from '../src/hw/hw-queue.ts'
import { Errors, fromErrno } from '../src/errors.ts'
import { Errno, err } from '../src/hw/errno.ts'
import type { Queue } from '../src/kernel/uacce.ts'
import type { Tenant } from '../src/schemas/tenants.ts'
import { FRAME_HEADER, Frame, PROTOCOL_VERSION, frame, type Hello } from '../src/doorbell-protocol.ts'

/** the largest frame a client may send: a SUBMIT of 16384 descriptors, or a STORE of 1 MiB */
export const MAX_FRAME_BYTES = FRAME_HEADER + 1024 * 1024
const MAX_LOAD = MAX_FRAME_BYTES - FRAME_HEADER - 8
/** stop reading a client once this much is waiting to be sent to it; resume under LOW */
const HIGH_WATER = 4 * 1024 * 1024
const LOW_WATER = 1024 * 1024
const HEARTBEAT_MS = 30000
const CLOSE_TIMEOUT_MS = 5000

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL: 1002,
  POLICY: 1008,
  TOO_BIG: 1009
} as const

function protocolErrorFrame (reason: string): Buffer {
  const text = Buffer.from(reason)
  const f = frame(Frame.PROTOCOL_ERROR, 0, text.length)
  text.copy(f, FRAME_HEADER)
  return f
}

/**
 * ws refuses a frame over its maxPayload at the frame's header, before reading its body,
 * and closes with 1009 itself: close(1009) with no reason, then 'error'. PROTOCOL.md
 * still owes the client a PROTOCOL_ERROR before that close, and only here can it go out
 * ahead of the close frame. Our own closes always give a reason.
 */
class DoorbellSocket extends WebSocket {
  close (code?: number, data?: string | Buffer): void {
    if (code === CloseCode.TOO_BIG && data === undefined && this.readyState === WebSocket.OPEN) {
      const reason = `frame over maxFrameBytes ${MAX_FRAME_BYTES}`
      this.send(protocolErrorFrame(reason))
      data = reason
    }
    super.close(code, data)
  }
}

/**
 * The channels with completions gathered this turn, flushed together by one immediate: an
 * immediate per channel was 16 callbacks a turn with 16 tenants.
 */
const toFlush: Channel[] = []
let flushScheduled = false
function flushAll (): void {
  flushScheduled = false
  // records gathered while these go out (none are expected) wait for the next immediate
  const list = toFlush.splice(0)
  for (let i = 0; i < list.length; i++) list[i].flush()
}

/** One open doorbell: the mapping of a queue's doorbell page into a client. */
class Channel {
  readonly ws: WebSocket
  readonly queue: Queue
  /** the COMPLETIONS frame being gathered, header space first */
  #out: Buffer | undefined
  #pendingCount = 0
  /** on toFlush, its records to go out at the end of the turn */
  #flushQueued = false
  #paused = false
  closed = false
  /** made once: a closure per frame sent was garbage per frame */
  readonly #onSent = (): void => this.#maybeResume()

  constructor (ws: WebSocket, queue: Queue) {
    this.ws = ws
    this.queue = queue
  }

  readonly listener: PortListener = {
    completion: (record, flags) => {
      if ((flags & Flag.NOTIFY) === 0 || this.closed) return
      const at = this.#reserve()
      ;(this.#out as Buffer).set(record, at)
    },
    status: (state, reason) => {
      if (this.closed) return
      this.flush()
      const json = Buffer.from(JSON.stringify({ reason }))
      const f = frame(Frame.STATUS, state, json.length)
      json.copy(f, FRAME_HEADER)
      this.#send(f)
      if (state === QueueState.RELEASED) this.close(CloseCode.NORMAL, 'queue released')
    }
  }

  /**
   * The offset of a slot for one more record in the COMPLETIONS frame being gathered
   * (#out): records are written straight into the frame that will be sent, never copied
   * twice, and without a view each.
   */
  #reserve (): number {
    const at = FRAME_HEADER + this.#pendingCount * CR_SIZE
    const out = this.#out
    if (out === undefined || out.length < at + CR_SIZE) {
      const grown = Buffer.allocUnsafe(Math.max(FRAME_HEADER + 64 * CR_SIZE, 2 * (out?.length ?? 0)))
      out?.copy(grown, 0, 0, at)
      this.#out = grown
    }
    this.#pendingCount++
    if (!this.#flushQueued) {
      this.#flushQueued = true
      toFlush.push(this)
      if (!flushScheduled) {
        flushScheduled = true
        setImmediate(flushAll)
      }
    }
    return at
  }

  /** Sends the gathered records as one COMPLETIONS frame (none: nothing). */
  flush (): void {
    this.#flushQueued = false
    const out = this.#out
    const n = this.#pendingCount
    if (n === 0 || out === undefined || this.closed) return
    const f = out.subarray(0, FRAME_HEADER + n * CR_SIZE)
    f[0] = Frame.COMPLETIONS
    f[1] = f[2] = f[3] = 0
    f.writeUInt32LE(n, 4)
    // ws may still hold the sent frame: the next records go into a new one
    this.#out = undefined
    this.#pendingCount = 0
    this.#send(f)
  }

  #send (f: Buffer): void {
    if (this.closed) return
    this.ws.send(f, { binary: true }, this.#onSent)
    if (!this.#paused && this.ws.bufferedAmount > HIGH_WATER) {
      // The client is not reading: stop reading its submissions until it catches up.
      this.#paused = true
      this.ws.pause()
    }
  }

  #maybeResume (): void {
    if (this.#paused && !this.closed && this.ws.bufferedAmount < LOW_WATER) {
      this.#paused = false
      this.ws.resume()
    }
  }

  hello (): void {
    const q = this.queue
    const hw = q.hw
    const hello: Partial<Hello> = {
      queue: q.qid,
      pasid: q.process.pasid,
      depth: hw?.depth,
      maxTransferSize: q.device.dev.limits.maxTransferSize,
      maxBatchSize: q.device.dev.limits.maxBatchSize,
      maxFrameBytes: MAX_FRAME_BYTES,
      device: q.device.dev.id
    }
    const json = Buffer.from(JSON.stringify(hello))
    const f = frame(Frame.HELLO, PROTOCOL_VERSION, json.length)
    json.copy(f, FRAME_HEADER)
    this.#send(f)
  }

  protocolError (reason: string, code: number = CloseCode.PROTOCOL): void {
    if (this.closed) return
    this.#send(protocolErrorFrame(reason))
    this.close(code, reason.slice(0, 120))
  }

  /** Frames are handled in the order received: a STORE is visible to a later SUBMIT. */
  onMessage (data: RawData, isBinary: boolean): void {
    if (this.closed) return
    if (!isBinary || !Buffer.isBuffer(data)) return this.protocolError('frames are binary', CloseCode.POLICY)
    const len = data.length
    if (len > MAX_FRAME_BYTES) return this.protocolError(`frame of ${len} bytes is over maxFrameBytes ${MAX_FRAME_BYTES}`, CloseCode.TOO_BIG)
    if (len < FRAME_HEADER) return this.protocolError(`frame of ${len} bytes is shorter than its 8-byte header`)
    if (data[1] !== 0 || data[2] !== 0 || data[3] !== 0) return this.protocolError('reserved header bytes 1-3 must be 0')
    const value = data.readUInt32LE(4)
    const body = len - FRAME_HEADER
    switch (data[0]) {
      case Frame.SUBMIT: {
        if (value === 0) return this.protocolError('SUBMIT with a count of 0')
        if (body !== value * DESC_SIZE) return this.protocolError(`SUBMIT count ${value} does not match a body of ${body} bytes`)
        return this.#submit(data, value)
      }
      case Frame.STORE: {
        if (body < 8) return this.protocolError('STORE needs an 8-byte address')
        return this.#store(data, value)
      }
      case Frame.LOAD: {
        if (body !== 12) return this.protocolError('LOAD needs an 8-byte address and a 4-byte length')
        return this.#load(data, value)
      }
      default:
        return this.protocolError(`unknown frame type 0x${data[0].toString(16)}`)
    }
  }

  #submit (data: Buffer, count: number): void {
    const port = this.queue.port
    if (port === undefined) return this.protocolError('this queue has no doorbell', CloseCode.POLICY)
    const accepted = this.queue.released ? 0 : port.submit(data, FRAME_HEADER, count)
    if (accepted === count) return
    // RETRY and QUEUE_DISABLED are answered at once, on the channel, never in memory.
    const refusal = this.queue.released ? Status.QUEUE_DISABLED : port.lastRefusal
    for (let i = accepted; i < count; i++) {
      const at = this.#reserve()
      const out = this.#out as Buffer
      out.fill(0, at, at + CR_SIZE)
      out[at + CR.STATUS] = refusal
      const desc = FRAME_HEADER + i * DESC_SIZE
      data.copy(out, at + CR.TAG, desc + DESC.TAG, desc + DESC.TAG + 8)
    }
  }

  #store (data: Buffer, id: number): void {
    const raw = data.readBigUInt64LE(FRAME_HEADER)
    const addr = Number(raw)
    const bytes = data.subarray(FRAME_HEADER + 8)
    if (bytes.length === 0) return // touches nothing, wherever it points
    // 2**53 and up no process maps; Number() would round it, so it faults as written
    if (!Number.isSafeInteger(addr)) return this.#storeFault(id, raw)
    const r = this.queue.process.mm.store(addr, bytes)
    if (!r.ok) this.#storeFault(id, BigInt(r.addr ?? addr))
  }

  #storeFault (id: number, at: bigint): void {
    const f = frame(Frame.STORE_FAULT, id, 8)
    f.writeBigUInt64LE(at, FRAME_HEADER)
    this.#send(f)
  }

  #load (data: Buffer, id: number): void {
    const raw = data.readBigUInt64LE(FRAME_HEADER)
    const addr = Number(raw)
    const length = data.readUInt32LE(FRAME_HEADER + 8)
    if (length > MAX_LOAD) return this.protocolError(`LOAD of ${length} bytes is over ${MAX_LOAD}`)
    if (!Number.isSafeInteger(addr) && length > 0) return this.#loadFault(id, raw)
    const r = length === 0 ? { ok: true as const, value: new Uint8Array(0) } : this.queue.process.mm.load(addr, length)
    if (!r.ok) return this.#loadFault(id, BigInt(r.addr ?? addr))
    const f = frame(Frame.LOAD_DATA, id, 8 + length)
    f.fill(0, FRAME_HEADER, FRAME_HEADER + 8)
    f[FRAME_HEADER] = Status.SUCCESS
    f.set(r.value, FRAME_HEADER + 8)
    this.#send(f)
  }

  #loadFault (id: number, at: bigint): void {
    const f = frame(Frame.LOAD_DATA, id, 16)
    f.fill(0, FRAME_HEADER, FRAME_HEADER + 8)
    f[FRAME_HEADER] = Status.PAGE_FAULT
    f.writeBigUInt64LE(at, FRAME_HEADER + 8)
    this.#send(f)
  }

  /** Unmapping the doorbell: the queue and its work go on, records still land in memory. */
  close (code: number, reason: string): void {
    if (this.closed) return
    this.flush()
    this.closed = true
    if (this.queue.doorbell === this) this.queue.doorbell = undefined
    if (this.queue.port !== undefined && this.queue.port.listener === this.listener) {
      this.queue.port.listener = { completion: () => {} }
    }
    this.ws.close(code, reason)
  }

  /** Shutdown: the last completions out, then 1001. */
  flushAndClose (): void {
    this.flush()
    // Reading again: the client's answer to our close frame must get through.
    this.ws.resume()
    this.close(CloseCode.GOING_AWAY, 'server shutting down')
  }
}

export default async function doorbellRoutes (fastify: FastifyInstance): Promise<void> {
  const channels = new Set<Channel>()
  await fastify.register(websocket, {
    // ws's own cap sits above ours so an oversized frame still gets its PROTOCOL_ERROR
    options: {
      // ws's typings want the module's namespace object; a subclass is what ws documents
      WebSocket: DoorbellSocket as unknown as NonNullable<WebsocketPluginOptions['options']>['WebSocket'],
      maxPayload: MAX_FRAME_BYTES + 64 * 1024,
      // Only our protocol name is ever selected: ws's default would echo the first
      // offered, which for a browser sending only `bearer.<token>` is the token.
      handleProtocols: (protocols: Set<string>) => protocols.has('warpdrive.v1') ? 'warpdrive.v1' : false
    },
    preClose: async function () {
      // Drain: stop reading, let every descriptor in flight complete, flush, then 1001.
      for (const ch of channels) ch.ws.pause()
      await Promise.all([...fastify.uacce.devices.values()].map(async d => await d.dev.drain()))
      for (const ch of channels) ch.flushAndClose()
      // A client that never answers the close frame is cut off rather than holding shutdown.
      const cutoff = setTimeout(() => { for (const c of fastify.websocketServer.clients) c.terminate() }, CLOSE_TIMEOUT_MS)
      await new Promise<void>(resolve => fastify.websocketServer.close(() => resolve()))
      clearTimeout(cutoff)
    }
  })

  fastify.route<{ Params: { qid: string }, Querystring: { pid?: string } }>({
    method: 'GET',
    url: '/v1/queues/:qid/doorbell',
    schema: {
      tags: ['queues'],
      summary: 'The doorbell of a queue bound to a PASID (WebSocket, PROTOCOL.md section 5)',
      params: { type: 'object', properties: { qid: { type: 'string' } }, required: ['qid'] },
      querystring: {
        type: 'object',
        properties: { pid: { type: 'string', pattern: '^[0-9]+$', description: 'the process mapping the doorbell; only the queue\'s own' } },
        additionalProperties: false
      }
    },
    preHandler: async (request) => {
      const tenant = request.tenant as Tenant
      const q = fastify.uacce.queues.get(request.params.qid)
      if (q === undefined || q.tenant !== tenant.id) throw new Errors.NotFound(`no queue ${request.params.qid}`)
      if (q.port === undefined) throw fromErrno(err(Errno.EOPNOTSUPP, `queue ${q.qid} is sync_only: it has no doorbell, submit through /v1/queues/${q.qid}/submit`))
      const pid = request.query.pid
      if (pid !== undefined && Number(pid) !== q.process.pid) {
        // A fork child has no doorbell and may not map its parent's.
        throw new Errors.Forbidden(`process ${pid} does not own queue ${q.qid}`)
      }
      if (q.doorbell !== undefined) throw fromErrno(err(Errno.EEXIST, `the doorbell of ${q.qid} is already mapped`))
    },
    handler: async () => { throw new Errors.BadRequest('the doorbell is a WebSocket: send an Upgrade request') },
    wsHandler: (socket, request) => {
      const q = fastify.uacce.queues.get(request.params.qid)
      if (q === undefined || q.port === undefined || q.doorbell !== undefined) {
        socket.close(CloseCode.POLICY, 'queue is gone or already mapped')
        return
      }
      const ch = new Channel(socket, q)
      q.doorbell = ch
      q.port.listener = ch.listener
      channels.add(ch)
      // Attached synchronously, before any await: no frame can arrive unheard.
      socket.on('message', (data, isBinary) => {
        try {
          ch.onMessage(data, isBinary)
        } catch (e) {
          request.log.error({ err: e }, 'doorbell frame handler failed')
          ch.protocolError('internal error handling the frame', CloseCode.POLICY)
        }
      })
      let alive = true
      socket.on('pong', () => { alive = true })
      const heartbeat = setInterval(() => {
        if (!alive) return socket.terminate()
        alive = false
        socket.ping()
      }, HEARTBEAT_MS)
      heartbeat.unref()
      socket.on('close', () => {
        clearInterval(heartbeat)
        channels.delete(ch)
        ch.close(CloseCode.NORMAL, 'closed')
      })
      socket.on('error', () => {})
      ch.hello()
    }
  })
}
