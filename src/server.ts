/**
 * The process: reads the configuration, builds the app with a pino logger, closes it
 * gracefully on a signal, listens. Everything else is src/app.ts.
 */
import { createRequire } from 'node:module'
import closeWithGrace from 'close-with-grace'
import pino from 'pino'
import { buildApp } from './app.ts'
import { ConfigError, loadConfig, type Config } from './config.ts'
import { DevicesFileError } from './devices.ts'

let config: Config
try {
  config = loadConfig()
} catch (e) {
  if (!(e instanceof ConfigError)) throw e
  process.stderr.write(`warpd: ${e.message}\n`)
  process.exit(1)
}

const logger = pino({
  level: config.WARPD_LOG_LEVEL,
  // Tokens travel in this header; a serializer change must not put them in the logs.
  // The doorbell also takes them as a WebSocket subprotocol.
  redact: ['req.headers.authorization', 'request.headers.authorization', 'req.headers["sec-websocket-protocol"]']
})

// glibc reads its tunables once, at exec: past this point only a warning can help.
const glibc = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime
if (glibc !== undefined && process.env.MALLOC_TOP_PAD_ === undefined && process.env.GLIBC_TUNABLES?.includes('top_pad') !== true) {
  logger.warn('MALLOC_TOP_PAD_ is not set: engines working on large buffers may run several times slower (README, "Memory allocator"); npm start and the container image set it')
}

// ws unmasks every frame a client sends; without the native addon it does so in
// JavaScript, about 1.2 ms of the event loop per MiB (README, "WebSocket masking").
if (process.env.WS_NO_BUFFER_UTIL === undefined) {
  try {
    createRequire(import.meta.url)('bufferutil')
  } catch {
    logger.warn('bufferutil is not installed (no prebuilt binary for this platform?): ws masks doorbell frames in JavaScript, about 1.2 ms of the event loop per MiB a client sends (README, "WebSocket masking")')
  }
}

let app: Awaited<ReturnType<typeof buildApp>>
try {
  app = await buildApp({ config, logger })
  await app.ready()
} catch (e) {
  if (!(e instanceof DevicesFileError)) throw e
  process.stderr.write(`warpd: ${e.message}\n`)
  process.exit(1)
}

closeWithGrace({ delay: 10_000, logger }, async ({ err, signal }) => {
  if (err !== undefined) logger.error({ err }, 'closing after an error')
  else logger.info({ signal }, 'closing')
  // Doorbells drain and close with 1001, the devices finish everything accepted, then
  // the processes exit (src/devices.ts, routes/doorbell.ts).
  await app.close()
})

try {
  const address = await app.listen({ host: config.WARPD_HOST, port: config.WARPD_PORT })
  logger.info({ url: address, docs: `${address}/docs` }, 'warpd listening')
} catch (err) {
  logger.fatal({ err }, 'cannot listen')
  process.exit(1)
}
