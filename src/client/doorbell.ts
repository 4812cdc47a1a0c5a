/**
 * The doorbell client (PROTOCOL.md section 5): submit descriptors straight to a hardware
 * queue and get a promise per descriptor that resolves with its completion. Submissions
 * made in the same turn of the event loop go out as one SUBMIT frame; a descriptor
 * answered RETRY is sent again after a short back-off, so callers never see RETRY.
 */
import WebSocket from 'ws'
import {
  CR_SIZE, DESC, DESC_SIZE, Flag, Status, makeDescriptor, readCompletion, writeDescriptor,
  type Completion, type Descriptor
} from '../hw/descriptor.ts'
import { Frame as FRAME, frame, type Hello } from '../doorbell-protocol.ts'

export { FRAME, type Hello }

export type DescriptorInit = Partial<Omit<Descriptor, 'tag'>> & { opcode: number }

export class DoorbellError extends Error {
  readonly code: string
  readonly addr: number | undefined
  constructor (code: string, message: string, addr?: number) {
    super(message)
    this.code = code
    this.addr = addr
  }
}

interface Waiter {
  resolve: (c: Completion) => void
  reject: (e: Error) => void
  desc: Uint8Array
  retries: number
}

export interface DoorbellOptions {
  token: string
  /** give up on a descriptor answered RETRY this many times (default 1000) */
  maxRetries?: number
  /** keep RETRY answers instead of resubmitting */
  noRetry?: boolean
}

export class Doorbell {
  readonly ws: WebSocket
  hello: Hello | undefined
  onStatus: ((state: number, reason: string) => void) | undefined
  /** completions of descriptors this client did not submit with submit() (raw frames) */
  onCompletion: ((c: Completion) => void) | undefined
  readonly #waiters = new Map<bigint, Waiter>()
  readonly #loads = new Map<number, { resolve: (b: Buffer) => void, reject: (e: Error) => void }>()
  #queued: Uint8Array[] = []
  #flushScheduled = false
  #nextTag = 1n
  #nextReq = 1
  readonly #opts: DoorbellOptions
  readonly #ready: Promise<Hello>
  #closedError: Error | undefined

  private constructor (url: string, opts: DoorbellOptions) {
    this.#opts = opts
    this.ws = new WebSocket(url, { headers: { authorization: `Bearer ${opts.token}` } })
    this.ws.binaryType = 'nodebuffer'
    this.#ready = new Promise((resolve, reject) => {
      this.ws.once('error', reject)
      this.ws.once('unexpected-response', (req, res) => {
        // A refused upgrade leaves the connection open unless we end it.
        req.destroy()
        reject(new DoorbellError(`HTTP_${res.statusCode ?? 0}`, `doorbell refused: HTTP ${res.statusCode ?? 0}`))
      })
      this.ws.on('message', (data: Buffer) => {
        if (data[0] === FRAME.HELLO && this.hello === undefined) {
          this.hello = JSON.parse(data.subarray(8).toString()) as Hello
          resolve(this.hello)
          return
        }
        this.#onFrame(data)
      })
    })
    this.ws.on('close', (code, reason) => {
      this.#closedError = new DoorbellError('CLOSED', `doorbell closed: ${code} ${reason.toString()}`)
      for (const w of this.#waiters.values()) w.reject(this.#closedError)
      this.#waiters.clear()
      for (const l of this.#loads.values()) l.reject(this.#closedError)
      this.#loads.clear()
    })
  }

  /** Opens the doorbell at `url` (ws://host/v1/queues/{qid}/doorbell) and waits for HELLO. */
  static async open (url: string, opts: DoorbellOptions): Promise<Doorbell> {
    const d = new Doorbell(url, opts)
    await d.#ready
    return d
  }

  /**
   * Submits one descriptor; resolves with its completion (SUCCESS or any error status
   * but RETRY, which is retried). NOTIFY is set so the completion comes back here.
   */
  async submit (init: DescriptorInit): Promise<Completion> {
    if (this.#closedError !== undefined) throw this.#closedError
    const tag = this.#nextTag++
    const desc = new Uint8Array(DESC_SIZE)
    writeDescriptor(desc, 0, makeDescriptor({ ...init, flags: (init.flags ?? 0) | Flag.NOTIFY, tag }))
    return await new Promise<Completion>((resolve, reject) => {
      this.#waiters.set(tag, { resolve, reject, desc, retries: 0 })
      this.#enqueue(desc)
    })
  }

  /** Submits many at once; resolves in the same order. */
  async submitAll (inits: DescriptorInit[]): Promise<Completion[]> {
    return await Promise.all(inits.map(async d => await this.submit(d)))
  }

  #enqueue (desc: Uint8Array): void {
    this.#queued.push(desc)
    if (!this.#flushScheduled) {
      this.#flushScheduled = true
      queueMicrotask(() => this.#flush())
    }
  }

  #flush (): void {
    this.#flushScheduled = false
    const max = Math.max(1, Math.floor(((this.hello?.maxFrameBytes ?? 1 << 20) - 8) / DESC_SIZE))
    while (this.#queued.length > 0) {
      const batch = this.#queued.splice(0, max)
      const f = frame(FRAME.SUBMIT, batch.length, batch.length * DESC_SIZE)
      batch.forEach((d, i) => f.set(d, 8 + i * DESC_SIZE))
      this.ws.send(f)
    }
  }

  /** Sends raw frame bytes (for tests and tools that build frames themselves). */
  sendRaw (frame: Uint8Array): void {
    this.ws.send(frame)
  }

  /** The process's own CPU store; rejects with the faulting address on STORE_FAULT. */
  async store (addr: number, data: Uint8Array): Promise<void> {
    const id = this.#nextReq++
    const f = frame(FRAME.STORE, id, 8 + data.length)
    f.writeBigUInt64LE(BigInt(addr), 8)
    f.set(data, 16)
    this.ws.send(f)
    // A STORE is not acknowledged: a LOAD of one byte after it proves it was processed.
    await new Promise<void>((resolve, reject) => {
      this.#loads.set(id, { resolve: () => resolve(), reject })
      this.#loadFrame(id, addr, 0)
    })
  }

  async load (addr: number, length: number): Promise<Buffer> {
    const id = this.#nextReq++
    return await new Promise<Buffer>((resolve, reject) => {
      this.#loads.set(id, { resolve, reject })
      this.#loadFrame(id, addr, length)
    })
  }

  #loadFrame (id: number, addr: number, length: number): void {
    const f = frame(FRAME.LOAD, id, 12)
    f.writeBigUInt64LE(BigInt(addr), 8)
    f.writeUInt32LE(length, 16)
    this.ws.send(f)
  }

  #onFrame (data: Buffer): void {
    const value = data.readUInt32LE(4)
    switch (data[0]) {
      case FRAME.COMPLETIONS:
        for (let i = 0; i < value; i++) this.#onCompletion(readCompletion(data, 8 + i * CR_SIZE))
        return
      case FRAME.LOAD_DATA: {
        const l = this.#loads.get(value)
        if (l === undefined) return
        this.#loads.delete(value)
        if (data[8] === Status.SUCCESS) l.resolve(data.subarray(16))
        else l.reject(new DoorbellError('PAGE_FAULT', 'load faulted', Number(data.readBigUInt64LE(16))))
        return
      }
      case FRAME.STORE_FAULT: {
        const l = this.#loads.get(value)
        const addr = Number(data.readBigUInt64LE(8))
        if (l !== undefined) {
          this.#loads.delete(value)
          l.reject(new DoorbellError('STORE_FAULT', `store faulted at 0x${addr.toString(16)}`, addr))
        }
        return
      }
      case FRAME.STATUS:
        this.onStatus?.(value, (JSON.parse(data.subarray(8).toString()) as { reason: string }).reason)
        return
      case FRAME.PROTOCOL_ERROR:
        this.#closedError = new DoorbellError('PROTOCOL_ERROR', data.subarray(8).toString())
    }
  }

  #onCompletion (c: Completion): void {
    const w = this.#waiters.get(c.tag)
    if (w === undefined) {
      this.onCompletion?.(c)
      return
    }
    if (c.status === Status.RETRY && this.#opts.noRetry !== true && w.retries < (this.#opts.maxRetries ?? 1000)) {
      w.retries++
      // Back off a little more each time the ring is still full.
      setTimeout(() => this.#enqueue(w.desc), Math.min(50, w.retries))
      return
    }
    this.#waiters.delete(c.tag)
    w.resolve(c)
  }

  get inflight (): number { return this.#waiters.size }

  async close (): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return
    await new Promise<void>(resolve => {
      this.ws.once('close', () => resolve())
      this.ws.close(1000)
    })
  }
}

export { DESC, Status }
