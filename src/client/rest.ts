/**
 * The REST client: typed calls for the resources of the API, problem+json errors thrown
 * as WarpError with their stable code, binary bodies for memory and the mediated submit.
 */
import http from 'node:http'
import https from 'node:https'
import type { Static, TSchema } from '@sinclair/typebox'
import type { Mapping, MmapBody, MprotectBody } from '../schemas/mappings.ts'
import type { ProcessView } from '../schemas/processes.ts'
import type { FileView } from '../schemas/files.ts'
import type { Quotas, Tenant } from '../schemas/tenants.ts'
import { CR_SIZE, DESC_SIZE, makeDescriptor, readCompletion, writeDescriptor, type Completion } from '../hw/descriptor.ts'
import { Doorbell, type DescriptorInit } from './doorbell.ts'

export type { Static, TSchema }

export class WarpError extends Error {
  readonly status: number
  readonly code: string
  readonly problem: Record<string, unknown>
  constructor (status: number, problem: Record<string, unknown>) {
    super(`${status} ${String(problem.code ?? '')}: ${String(problem.detail ?? problem.title ?? '')}`)
    this.status = status
    this.code = String(problem.code ?? `HTTP_${status}`)
    this.problem = problem
  }
}

export interface QueueView {
  qid: string
  device: string
  pid: number
  kind: 'dedicated' | 'shared' | 'sync_only'
  pasid?: number
  depth?: number
  doorbell?: string
  submit: string
  state: string
  flags?: string[]
}

/**
 * Requests go through node:http over keep-alive sockets, not fetch: the mediated submit
 * ran 2-4 times as many requests a second this way from the same thread (fetch's
 * streams cost more than the request itself). Idle sockets do not hold the process open.
 */
const agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) }

interface Answer { status: number, type: string, body: Buffer }

async function send (url: URL, method: string, headers: Record<string, string | number>, payload: Uint8Array | string | undefined): Promise<Answer> {
  const secure = url.protocol === 'https:'
  return await new Promise((resolve, reject) => {
    const req = (secure ? https : http).request(url, { method, headers, agent: secure ? agents.https : agents.http }, res => {
      const parts: Buffer[] = []
      res.on('data', (chunk: Buffer) => parts.push(chunk))
      res.on('error', reject)
      res.on('end', () => resolve({
        status: res.statusCode ?? 0,
        type: res.headers['content-type'] ?? '',
        body: parts.length === 1 ? parts[0] : Buffer.concat(parts)
      }))
    })
    req.on('error', reject)
    req.end(payload)
  })
}

export function hexAddr (a: number): string {
  return '0x' + a.toString(16)
}

export class WarpClient {
  readonly baseUrl: string
  readonly token: string

  constructor (baseUrl: string, token: string) {
    this.baseUrl = baseUrl.replace(/\/$/, '')
    this.token = token
  }

  async request<T> (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const h: Record<string, string | number> = { authorization: `Bearer ${this.token}`, ...headers }
    let payload: Uint8Array | string | undefined
    if (body instanceof Uint8Array) {
      payload = body
      h['content-type'] = 'application/octet-stream'
    } else if (body !== undefined) {
      payload = JSON.stringify(body)
      h['content-type'] = 'application/json'
    }
    if (payload !== undefined) h['content-length'] = Buffer.byteLength(payload)
    const res = await send(new URL(this.baseUrl + path), method, h, payload)
    const type = res.type
    if (res.status < 200 || res.status > 299) {
      const problem = type.includes('json') ? JSON.parse(res.body.toString()) as Record<string, unknown> : { detail: res.body.toString() }
      throw new WarpError(res.status, problem)
    }
    if (res.status === 204) return undefined as T
    // a copy: the body may share Node's buffer pool, and callers may take its .buffer
    if (type.startsWith('application/octet-stream')) return new Uint8Array(res.body) as T
    return JSON.parse(res.body.toString()) as T
  }

  // admin
  async createTenant (name: string, quotas?: Partial<Quotas>, weight?: number): Promise<Tenant & { token: string }> {
    return await this.request('POST', '/v1/admin/tenants', { name, quotas, weight })
  }

  // processes
  async createProcess (): Promise<ProcessView> { return await this.request('POST', '/v1/processes', {}) }
  async fork (pid: number): Promise<ProcessView> { return await this.request('POST', `/v1/processes/${pid}/fork`, {}) }
  async exit (pid: number): Promise<void> { await this.request('DELETE', `/v1/processes/${pid}`) }

  // memory
  async mmap (pid: number, body: MmapBody): Promise<Mapping> {
    return await this.request('POST', `/v1/processes/${pid}/mappings`, body)
  }

  async munmap (pid: number, addr: number, length?: number): Promise<void> {
    await this.request('DELETE', `/v1/processes/${pid}/mappings/${hexAddr(addr)}${length !== undefined ? `?length=${length}` : ''}`)
  }

  async mprotect (pid: number, addr: number, body: MprotectBody): Promise<void> {
    await this.request('PATCH', `/v1/processes/${pid}/mappings/${hexAddr(addr)}`, body)
  }

  async store (pid: number, addr: number, data: Uint8Array): Promise<void> {
    await this.request('PUT', `/v1/processes/${pid}/memory/${hexAddr(addr)}`, data)
  }

  async load (pid: number, addr: number, length: number): Promise<Uint8Array> {
    return await this.request('GET', `/v1/processes/${pid}/memory/${hexAddr(addr)}?length=${length}`)
  }

  async createFile (size: number): Promise<FileView> { return await this.request('POST', '/v1/files', { size }) }

  // devices and queues
  async devices (): Promise<unknown> { return await this.request('GET', '/v1/devices') }
  async bind (pid: number, device: string): Promise<{ device: string, pasid: number }> {
    return await this.request('POST', `/v1/processes/${pid}/bindings`, { device })
  }

  async createQueue (device: string, pid: number, kind?: QueueView['kind']): Promise<QueueView> {
    return await this.request('POST', `/v1/devices/${device}/queues`, kind === undefined ? { pid } : { pid, kind })
  }

  async releaseQueue (qid: string): Promise<void> { await this.request('DELETE', `/v1/queues/${qid}`) }

  /** The kernel-mediated submit (PROTOCOL.md section 6): completions in order. */
  async submit (qid: string, descs: DescriptorInit[]): Promise<Completion[]> {
    const body = new Uint8Array(descs.length * DESC_SIZE)
    descs.forEach((d, i) => writeDescriptor(body, i * DESC_SIZE, makeDescriptor({ tag: BigInt(i), ...d })))
    const out = await this.request<Uint8Array>('POST', `/v1/queues/${qid}/submit`, body, { accept: 'application/octet-stream' })
    const r: Completion[] = []
    for (let i = 0; i < out.length; i += CR_SIZE) r.push(readCompletion(out, i))
    return r
  }

  /** Opens the queue's doorbell (WebSocket) for direct submission. */
  async doorbell (qid: string, opts: { pid?: number } = {}): Promise<Doorbell> {
    const url = this.baseUrl.replace(/^http/, 'ws') + `/v1/queues/${qid}/doorbell${opts.pid !== undefined ? `?pid=${opts.pid}` : ''}`
    return await Doorbell.open(url, { token: this.token })
  }
}
