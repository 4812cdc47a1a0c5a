/**
 * The REST client: typed calls for the resources of the API, problem+json errors thrown
 * as WarpError with their stable code, binary bodies for memory and the mediated submit.
 */
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
    const init: RequestInit = { method, headers: { authorization: `Bearer ${this.token}`, ...headers } }
    if (body instanceof Uint8Array) {
      init.body = body
      ;(init.headers as Record<string, string>)['content-type'] = 'application/octet-stream'
    } else if (body !== undefined) {
      init.body = JSON.stringify(body)
      ;(init.headers as Record<string, string>)['content-type'] = 'application/json'
    }
    const res = await fetch(this.baseUrl + path, init)
    const type = res.headers.get('content-type') ?? ''
    if (!res.ok) {
      const problem = type.includes('json') ? await res.json() as Record<string, unknown> : { detail: await res.text() }
      throw new WarpError(res.status, problem)
    }
    if (res.status === 204) return undefined as T
    if (type.startsWith('application/octet-stream')) return new Uint8Array(await res.arrayBuffer()) as T
    return await res.json() as T
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
