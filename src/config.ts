/**
 * The service's configuration: one TypeBox schema read from the environment by
 * env-schema, so the defaults, the validation and the `Config` type come from one place.
 */
import envSchema from 'env-schema'
import { Type, type Static } from '@sinclair/typebox'

const MiB = 2 ** 20

export const LogLevel = Type.Unsafe<'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'>({
  type: 'string',
  enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']
})

export const ConfigSchema = Type.Object({
  WARPD_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  WARPD_HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
  WARPD_DEVICES_FILE: Type.Optional(Type.String({ minLength: 1 })),
  // Whole frames only: PhysMem cuts the buffer into 4 KiB pages.
  WARPD_PHYS_MEM_BYTES: Type.Integer({ minimum: 64 * 1024, maximum: 2 ** 32, multipleOf: 4096, default: 64 * MiB }),
  // Short tokens are guessable; generated ones are 256 bits.
  WARPD_ADMIN_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
  WARPD_STATE_DIR: Type.String({ minLength: 1, default: './state' }),
  WARPD_LOG_LEVEL: { ...LogLevel, default: 'info' },
  WARPD_MAX_BODY_BYTES: Type.Integer({ minimum: 1024, maximum: 1024 * MiB, default: 8 * MiB }),
  WARPD_RATE_LIMIT: Type.Integer({ minimum: 1, default: 1000, description: 'requests per second per tenant' }),
  // A polling engine keeps a core busy. Unset, each device's pollUs holds, or 0 under a
  // CPU quota of less than two CPUs (devices.ts); set, it wins either way.
  WARPD_ENGINE_POLL_US: Type.Optional(Type.Integer({ minimum: 0, maximum: 100000, description: 'overrides every device\'s pollUs' }))
})

export type Config = Static<typeof ConfigSchema>

export class ConfigError extends Error {
  readonly variables: string[]

  constructor (message: string, variables: string[]) {
    super(message)
    this.name = 'ConfigError'
    this.variables = variables
  }
}

const SECRETS = new Set(['WARPD_ADMIN_TOKEN'])

interface AjvError { instancePath: string, message?: string, params: Record<string, unknown> }

/**
 * Reads and validates the configuration; throws a ConfigError naming each bad variable.
 * `env` defaults to process.env; tests pass their own record.
 */
export function loadConfig (env: Record<string, unknown> = process.env): Config {
  const data: Record<string, unknown> = {}
  // Only our variables: env-schema strips the others, but it would still coerce and
  // validate a stray empty string, and an unset variable must fall back to its default.
  for (const key of Object.keys(ConfigSchema.properties)) {
    const value = env[key]
    if (value !== undefined && value !== '') data[key] = value
  }
  try {
    // env-schema sets additionalProperties on the schema it is given: hand it a copy.
    return envSchema<Config>({ schema: structuredClone(ConfigSchema), data, env: false })
  } catch (e) {
    const errors = (e as { errors?: AjvError[] }).errors
    if (errors === undefined) throw e
    const lines: string[] = []
    const variables: string[] = []
    for (const er of errors) {
      const name = er.instancePath.replace(/^\//, '')
      if (name === '' || variables.includes(name)) continue
      variables.push(name)
      const message = Array.isArray(er.params.allowedValues)
        ? `must be one of ${er.params.allowedValues.join(', ')}`
        : er.message ?? 'is invalid'
      // A secret must not reach the logs, even a wrong one.
      const got = SECRETS.has(name) ? '' : `, got ${JSON.stringify(data[name])}`
      lines.push(`${name} ${message}${got}`)
    }
    throw new ConfigError(`invalid configuration: ${lines.join('; ')}`, variables)
  }
}
