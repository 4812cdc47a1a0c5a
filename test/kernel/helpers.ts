import { Kernel } from '../../src/kernel/kernel.ts'
import { Prot } from '../../src/kernel/vma.ts'
import type { Result } from '../../src/hw/errno.ts'
import type { DeviceAccess, Iotlb, SgList } from '../../src/hw/iommu.ts'

export const RW = Prot.READ | Prot.WRITE

export function newKernel (pages = 4096): Kernel {
  return new Kernel({ physMemBytes: pages * 4096 })
}

/** Unwraps a Result in a test, failing loudly. */
export function must<T> (r: Result<T>): T {
  if (!r.ok) throw new Error(`${r.errno}: ${r.message}`)
  return r.value
}

export function bytes (n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n)
  let x = seed
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    b[i] = x >>> 24
  }
  return b
}

/**
 * A device access's hold of [va, va+len), as the device's front end makes it: the bytes
 * translated, the fault code (0 if none), the frames held (a copy: release empties the
 * access's own list) and the scatter list.
 */
export function hold (k: Kernel, tlb: Iotlb, acc: DeviceAccess, va: number, len: number, write: boolean): { done: number, code: number, frames: number[], sg: SgList } {
  const sg: SgList = { addrs: [], lens: [] }
  const before = acc.nframes
  const done = k.iommu.holdInto(tlb, acc, va, len, write, sg)
  return { done, code: k.iommu.holdFault, frames: acc.frames.slice(before, acc.nframes), sg }
}
