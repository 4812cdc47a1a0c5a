/**
 * `npm run bench`: every benchmark, each ratio measured against its bare denominator in
 * the same run. Prints Markdown tables; bench/RESULTS.md keeps them with the notes that
 * explain them.
 *
 * Each section runs in a process of its own. In one process, the doorbell section ran
 * after the device section's thirty-odd devices and their engine threads, and read worse
 * in both of the eleventh session's full runs than in any run of it alone (one-at-a-time
 * p50 latency 3.26x and 5.71x the bare ws ping-pong's, 1.51-2.23x alone): a section's
 * figures should not depend on what ran before it.
 */
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { machine } from './harness.ts'
import { benchDevice, benchRamp } from './device.bench.ts'
import { benchDoorbell } from './doorbell.bench.ts'
import { benchMediated } from './mediated.bench.ts'
import { benchMm } from './mm.bench.ts'

interface Section { name: string, run: () => Promise<string[]>, header?: string, byNameOnly?: boolean }
const sections: Section[] = [
  { name: 'Memory and IOMMU (issue 2)', run: benchMm },
  { name: 'Device and engines (issue 3)', run: benchDevice },
  { name: 'Mediated submit over HTTP (issue 4)', run: benchMediated },
  { name: 'Doorbell over WebSocket (issue 5)', run: benchDoorbell },
  // why the device section warms its cases as long as it does; only when asked for
  { name: 'Engines from a cold start (ramp)', run: benchRamp, header: '| case | device | bare |', byNameOnly: true }
]

/** given to the process that runs one section */
const IN_PROCESS = '--in-process'
const inProcess = process.argv.includes(IN_PROCESS)
const only = process.argv.slice(2).filter(a => !a.startsWith('--'))
if (!inProcess) console.log(`# warpdrive benchmarks\n\nMachine: ${machine()}\nDate: ${new Date().toISOString()}\n`)
for (const { name, run, header, byNameOnly } of sections) {
  const named = only.some(o => name.toLowerCase().includes(o.toLowerCase()))
  if (only.length > 0 ? !named : byNameOnly === true) continue
  if (!inProcess) {
    // the same node, loader and environment (MALLOC_TOP_PAD_ included), this section alone
    const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), name, IN_PROCESS], { stdio: 'inherit' })
    if (r.status !== 0) {
      process.exitCode = r.status ?? 1
      break
    }
    continue
  }
  console.log(`## ${name}\n\n${header ?? '| case | rate | ratio / note |'}\n|---|---|---|`)
  for (const line of await run()) console.log(line)
  console.log()
}
