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
import { Errors, errorHandler, notFoundHandler, withExtras } from './errors.ts'
import { Kernel } from './kernel/kernel.ts'
import { Problem } from './schemas/common.ts'
import { RateLimiter, TenantRegistry, resolveAdminToken } from './tenants.ts'
import type { Tenant } from './schemas/tenants.ts'
import adminRoutes from '../routes/admin.ts'
import faultRoutes from '../routes/faults.ts'
import fileRoutes from '../routes/files.ts'
import healthRoutes from '../routes/health.ts'
import mappingRoutes from '../routes/mappings.ts'
import memoryRoutes from '../routes/memory.ts'
import processRoutes from '../routes/processes.ts'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    kernel: Kernel
    tenants: TenantRegistry
    rateLimiter: RateLimiter
    /** what /readyz answers from; later plugins (devices) may hold it at 'starting' */
    lifecycle: { state: 'starting' | 'ready' | 'closing' }
  }
  interface FastifyRequest {
    /** set by the tenant scope's auth hook; null elsewhere */
    tenant: Tenant | null
  }
}

export interface AppOptions {
  config: Config
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
  { scope: 'admin', plugin: adminRoutes },
  { scope: 'tenant', plugin: processRoutes },
  { scope: 'tenant', plugin: mappingRoutes },
  { scope: 'tenant', plugin: memoryRoutes },
  { scope: 'tenant', plugin: fileRoutes },
  { scope: 'tenant', plugin: faultRoutes }
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
  if (typeof h !== 'string') return undefined
  const m = /^Bearer +(\S+) *$/i.exec(h)
  return m?.[1]
}

const kernelPlugin = fp(async (fastify: FastifyInstance, opts: AppOptions) => {
  fastify.decorate('kernel', new Kernel({ physMemBytes: opts.config.WARPD_PHYS_MEM_BYTES }))
  fastify.addHook('onClose', async (instance) => {
    // Exit hooks release queues and pins before address spaces go (the devices' drain).
    for (const p of [...instance.kernel.processes.values()]) instance.kernel.exit(p)
  })
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
  fastify.decorate('lifecycle', { state: 'starting' })
  fastify.addHook('onReady', async () => { fastify.lifecycle.state = 'ready' })
  fastify.addHook('preClose', async () => { fastify.lifecycle.state = 'closing' })
  fastify.setErrorHandler(errorHandler)
  fastify.setNotFoundHandler(notFoundHandler)
  fastify.addSchema(Problem)
  fastify.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
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
        { name: 'faults', description: 'IOMMU faults of a process' }
      ]
    },
    refResolver: {
      // Shared schemas keep their $id as their component name (Problem, not def-0).
      buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}`
    },
    transform: ({ schema, url }) => {
      // Octet-stream bodies are not validated (a Buffer is not a JSON string), so the
      // body schema exists for the document only.
      const s = schema as Record<string, unknown> | undefined
      if (s === undefined || s.body !== undefined || !Array.isArray(s.consumes) || !s.consumes.includes('application/octet-stream')) return { schema, url }
      const { consumes: _consumes, ...rest } = s
      return {
        schema: { ...rest, body: { content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } } },
        url
      }
    }
  })
  await fastify.register(swaggerUi, { routePrefix: '/docs' })

  await fastify.register(kernelPlugin, opts)
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
