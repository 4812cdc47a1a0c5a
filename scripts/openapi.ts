/**
 * Writes openapi/openapi.json from the route schemas (the app is built, never listens).
 * With --check, compares instead and exits 1 when the file is out of date: CI's drift
 * check, like fastify's test:validator:integrity.
 */
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { buildApp } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'

export const OPENAPI_PATH = new URL('../openapi/openapi.json', import.meta.url)

/** Object keys sorted at every depth (array order kept), so the file diffs cleanly. */
function sortKeys (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value === null || typeof value !== 'object') return value
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(value).sort()) out[key] = sortKeys((value as Record<string, unknown>)[key])
  return out
}

/** The OpenAPI document as the file holds it. */
export async function generateOpenapi (): Promise<string> {
  const stateDir = await mkdtemp(join(tmpdir(), 'warpd-openapi-'))
  try {
    const config = loadConfig({ WARPD_STATE_DIR: stateDir, WARPD_ADMIN_TOKEN: 'openapi-generation-only', WARPD_PHYS_MEM_BYTES: 1024 * 1024 })
    const app = await buildApp({ config })
    try {
      await app.ready()
      return `${JSON.stringify(sortKeys(app.swagger()), null, 2)}\n`
    } finally {
      await app.close()
    }
  } finally {
    await rm(stateDir, { recursive: true, force: true })
  }
}

async function main (): Promise<void> {
  const text = await generateOpenapi()
  if (process.argv.includes('--check')) {
    const current = await readFile(OPENAPI_PATH, 'utf8').catch(() => '')
    if (current !== text) {
      process.stderr.write('openapi/openapi.json is out of date with the route schemas: run `npm run openapi` and commit the result\n')
      process.exit(1)
    }
    process.stdout.write('openapi/openapi.json is up to date\n')
    return
  }
  await mkdir(new URL('.', OPENAPI_PATH), { recursive: true })
  await writeFile(OPENAPI_PATH, text)
  process.stdout.write('wrote openapi/openapi.json\n')
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main()
