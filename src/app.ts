/**
 * The whole service as one plugin, so tests build it without a socket and server.ts
 * owns the process (fastify/demo's split). Services are decorators; routes are thin
 * plugins registered from one table, each in the auth scope it needs.
 */
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyPluginAsync, type FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Config } from './config.ts'
import { devicesPlugin } from './devices.ts'
import { Errors, errorHandler, notFoundHandler, withExtras } from './errors.ts'
import type { DeviceConfig } from './hw/device-config.ts'
import { Kernel } from './kernel/kernel.ts'
import { metricsPlugin } from './metrics.ts'
import { Problem } from './schemas/common.ts'
import { RateLimiter, TenantRegistry, resolveAdminToken } from './tenants.ts'
import type { Tenant } from './schemas/tenants.ts'
import adminDeviceRoutes from '../routes/admin-devices.ts'
import adminRoutes from '../routes/admin.ts'
import bindingRoutes from '../routes/bindings.ts'
import doorbellRoutes from '../routes/doorbell.ts'
import deviceRoutes from '../routes/devices.ts'
import faultRoutes from '../routes/faults.ts'
import fileRoutes from '../routes/files.ts'
import healthRoutes from '../routes/health.ts'
import mappingRoutes from '../routes/mappings.ts'
import memoryRoutes from '../routes/memory.ts'
import metricsRoutes from '../routes/metrics.ts'
import processRoutes from '../routes/processes.ts'
import queueRoutes from '../routes/queues.ts'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    kernel: Kernel
    tenants: TenantRegistry
    rateLimiter: RateLimiter
    /** what /readyz answers from */
    lifecycle: Lifecycle
  }
  interface FastifyRequest {
    /** set by the tenant scope's auth hook; null elsewhere */
    tenant: Tenant | null
  }
}

export interface Lifecycle {
  state: 'starting' | 'ready' | 'closing'
  /**
   * Start-up work that readiness waits for (the devices' engines), pushed by plugins
   * while they load. The app listens without waiting for it: /healthz answers, /readyz
   * stays 'starting' until every gate has resolved.
   */
  gates: Array<Promise<unknown>>
  /** settles once the gates have: the state is then 'ready', or start-up failed and it stays 'starting' */
  settled: Promise<void>
}

export interface AppOptions {
  config: Config
  /** devices given in code (tests, benchmarks); otherwise WARPD_DEVICES_FILE, otherwise the built-in default */
  devices?: DeviceConfig[]
  /** the CPUs a cgroup quota allows (tests); otherwise read from the process's cgroup */
  cpuLimit?: number
  /** milliseconds, for the rate limiter; tests pass a fake clock */
  clock?: () => number
  /** the route table; ROUTES unless a test says otherwise */
  routes?: readonly RouteEntry[]
}

export type Scope = 'public' | 'admin' | 'tenant'

export interface RouteEntry { scope: Scope, plugin: FastifyPluginAsync }

/**
 * Every route plugin, with the auth it needs. Routes under /v1/admin/ take the admin
 * token; the other /v1/ routes a tenant token. Devices and queues join this table.
 */
export const ROUTES: readonly RouteEntry[] = [
  { scope: 'public', plugin: healthRoutes },
  { scope: 'public', plugin: metricsRoutes },
  { scope: 'admin', plugin: adminRoutes },
  { scope: 'admin', plugin: adminDeviceRoutes },
  { scope: 'tenant', plugin: processRoutes },
  { scope: 'tenant', plugin: mappingRoutes },
  { scope: 'tenant', plugin: memoryRoutes },
  { scope: 'tenant', plugin: fileRoutes },
  { scope: 'tenant', plugin: faultRoutes },
  { scope: 'tenant', plugin: deviceRoutes },
  { scope: 'tenant', plugin: queueRoutes },
  { scope: 'tenant', plugin: bindingRoutes },
  { scope: 'tenant', plugin: doorbellRoutes }
]

/** OpenAPI security requirement per scope; stamped on each route of the scope. */
const SECURITY: Record<Scope, Array<Record<string, string[]>> | undefined> = {
  public: undefined,
  admin: [{ adminToken: [] }],
  tenant: [{ tenantToken: [] }]
}

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version

function bearer (request: FastifyRequest): string | undefined {
  const h = request.headers.authorization
  if (typeof h === 'string') {
    const m = /^Bearer +(\S+) *$/i.exec(h)
    if (m !== null) return m[1]
  }
  // A browser cannot set headers on a WebSocket: the doorbell also takes the token as the
  // subprotocol `bearer.<token>` (docs/PROTOCOL.md section 7).
  const proto = request.headers['sec-websocket-protocol']
  if (typeof proto === 'string') {
    for (const p of proto.split(',')) {
      const t = p.trim()
      if (t.startsWith('bearer.')) return t.slice('bearer.'.length)
    }
  }
  return undefined
}

// The processes exit at shutdown in the devices plugin, after the devices drained: an
// exit releases the process's queues, which would abort the work still in them.
const kernelPlugin = fp(async (fastify: FastifyInstance, opts: AppOptions) => {
  fastify.decorate('kernel', new Kernel({ physMemBytes: opts.config.WARPD_PHYS_MEM_BYTES }))
}, { name: 'warpd-kernel' })

const tenantsPlugin = fp(async (fastify: FastifyInstance, opts: AppOptions) => {
  const { config } = opts
  const admin = await resolveAdminToken(config.WARPD_STATE_DIR, config.WARPD_ADMIN_TOKEN)
  // The path, never the token: logs travel further than the state directory.
  if (admin.created) fastify.log.info({ path: admin.path }, 'generated an admin token')
  else if (admin.path !== undefined) fastify.log.info({ path: admin.path }, 'using the admin token from the state directory')
  fastify.decorate('tenants', await TenantRegistry.open(config.WARPD_STATE_DIR, admin.token))
  fastify.decorate('rateLimiter', new RateLimiter(config.WARPD_RATE_LIMIT, opts.clock))
  fastify.decorateRequest('tenant', null)
}, { name: 'warpd-tenants' })

async function requireAdmin (this: FastifyInstance, request: FastifyRequest): Promise<void> {
  const token = bearer(request)
  if (token === undefined) throw new Errors.Unauthorized('missing bearer token')
  if (this.tenants.isAdmin(token)) return
  if (this.tenants.authenticate(token) !== undefined) throw new Errors.Forbidden('this route needs the admin token')
  throw new Errors.Unauthorized('unknown token')
}

async function requireTenant (this: FastifyInstance, request: FastifyRequest): Promise<void> {
  const token = bearer(request)
  if (token === undefined) throw new Errors.Unauthorized('missing bearer token')
  const tenant = this.tenants.authenticate(token)
  if (tenant === undefined) {
    if (this.tenants.isAdmin(token)) throw new Errors.Forbidden('this route needs a tenant token, not the admin token')
    throw new Errors.Unauthorized('unknown token')
  }
  const wait = this.rateLimiter.take(tenant.id)
  if (wait > 0) throw withExtras(new Errors.RateLimited(`more than ${this.rateLimiter.rate} requests per second`), { retryAfter: wait })
  request.tenant = tenant
}

export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  fastify.decorate('config', opts.config)
  const lifecycle: Lifecycle = { state: 'starting', gates: [], settled: Promise.resolve() }
  fastify.decorate('lifecycle', lifecycle)
  fastify.addHook('onReady', async () => {
    lifecycle.settled = Promise.all(lifecycle.gates.splice(0)).then(() => {
      if (lifecycle.state === 'starting') lifecycle.state = 'ready'
    }, (err: unknown) => {
      fastify.log.error({ err }, 'start-up failed: staying not ready')
    })
  })
  fastify.addHook('preClose', async () => { fastify.lifecycle.state = 'closing' })
  fastify.setErrorHandler(errorHandler)
  fastify.setNotFoundHandler(notFoundHandler)
  fastify.addSchema(Problem)
  fastify.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })
  // A refused WebSocket upgrade (401, 403, 404, 409) is answered on the raw socket that
  // @fastify/websocket took from the HTTP server, which no longer tracks it: unless it is
  // closed here, a client that keeps it open holds the server's close (and its drain) for
  // ever. A successful upgrade is hijacked and never reaches this hook.
  fastify.addHook('onResponse', async (request) => {
    if (request.raw.headers.upgrade === undefined) return
    const socket = request.raw.socket
    if (socket !== null && !socket.destroyed) socket.end(() => socket.destroy())
  })
  // Bodies are JSON or bytes; a text/plain body would reach a JSON schema as a string.
  fastify.removeContentTypeParser('text/plain')
  fastify.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_request, body, done) => {
    done(null, body)
  })

  await fastify.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'warpdrive',
        description: 'Share an emulated accelerator among tenants. Errors are application/problem+json; their codes are listed in docs/errors.md.',
        version: VERSION
      },
      components: {
        securitySchemes: {
          adminToken: { type: 'http', scheme: 'bearer', description: 'WARPD_ADMIN_TOKEN, or <state dir>/admin-token' },
          tenantToken: { type: 'http', scheme: 'bearer', description: 'the token POST /v1/admin/tenants answered' }
        }
      },
      tags: [
        { name: 'health', description: 'liveness and readiness' },
        { name: 'admin', description: 'tenants (admin token)' },
        { name: 'processes', description: 'address spaces and fork' },
        { name: 'mappings', description: 'mmap, munmap, mprotect' },
        { name: 'memory', description: 'CPU loads and stores' },
        { name: 'files', description: 'files that processes can map' },
        { name: 'faults', description: 'IOMMU faults of a process' },
        { name: 'devices', description: 'accelerators: UACCE attributes and live counters' },
        { name: 'queues', description: 'device queues and the kernel-mediated submit' },
        { name: 'bindings', description: 'PASID bindings of processes to SVA devices' },
        { name: 'metrics', description: 'Prometheus metrics' }
      ]
    },
    refResolver: {
      // Shared schemas keep their $id as their component name (Problem, not def-0).
      buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}`
    },
    transform: ({ schema, url }) => {
      // Octet-stream bodies are not validated (a Buffer is not a JSON string), so the
      // body schema exists for the document only. A route taking JSON or bytes (the
      // mediated submit) documents its JSON schema and the bytes side by side.
      const s = schema as Record<string, unknown> | undefined
      if (s === undefined || !Array.isArray(s.consumes) || !s.consumes.includes('application/octet-stream')) return { schema, url }
      const { consumes, ...rest } = s
      const content: Record<string, { schema: unknown }> = {}
      if (s.body !== undefined) {
        if (!consumes.includes('application/json')) return { schema, url }
        content['application/json'] = { schema: s.body }
      }
      content['application/octet-stream'] = { schema: { type: 'string', format: 'binary' } }
      return { schema: { ...rest, body: { content } }, url }
    }
  })
  await fastify.register(swaggerUi, { routePrefix: '/docs' })

  await fastify.register(kernelPlugin, opts)
  await fastify.register(devicesPlugin, 'cpuLimit' in opts ? { devices: opts.devices, cpuLimit: opts.cpuLimit } : { devices: opts.devices })
  await fastify.register(metricsPlugin)
  await fastify.register(tenantsPlugin, opts)

  for (const scope of ['public', 'admin', 'tenant'] as const) {
    await fastify.register(async (scoped) => {
      const security = SECURITY[scope]
      scoped.addHook('onRoute', (route) => {
        // The URL promises the auth (DESIGN.md): a route in the wrong scope must not start.
        const admin = route.url.startsWith('/v1/admin/')
        const v1 = route.url.startsWith('/v1/')
        if ((scope === 'admin') !== admin || (scope === 'tenant') !== (v1 && !admin)) {
          throw new Error(`route ${route.url} registered in the ${scope} scope`)
        }
        if (security !== undefined) route.schema = Object.assign(route.schema ?? {}, { security })
      })
      if (scope === 'admin') scoped.addHook('onRequest', requireAdmin)
      if (scope === 'tenant') scoped.addHook('onRequest', requireTenant)
      for (const r of opts.routes ?? ROUTES) if (r.scope === scope) await scoped.register(r.plugin)
    })
  }
}

export interface BuildOptions extends AppOptions {
  /** a pino logger (server.ts), or false/undefined for none (tests) */
  logger?: FastifyBaseLogger | false
}

export async function buildApp (opts: BuildOptions): Promise<FastifyInstance> {
  const { logger, ...appOpts } = opts
  const common = {
    bodyLimit: opts.config.WARPD_MAX_BODY_BYTES,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    ajv: {
      customOptions: {
        // Unknown fields answer 400 instead of being dropped: a typo like `dontCopy`
        // must not silently map memory that fork copies.
        removeAdditional: false
      }
    }
  }
  const fastify = (logger === undefined || logger === false
    ? Fastify({ ...common, logger: false })
    : Fastify({ ...common, loggerInstance: logger })).withTypeProvider<TypeBoxTypeProvider>()
  try {
    await fastify.register(fp(app), appOpts)
  } catch (e) {
    // A half-built app still holds its plugins' resources: release them, keep the error.
    await fastify.close().catch(() => {})
    throw e
  }
  return fastify
}
