/**
 * An IOVA domain: the I/O address space of a device without shared virtual addressing,
 * into which only the kernel maps. The map algebra follows iommufd's io_pagetable
 * (drivers/iommu/iommufd/io_pagetable.c): fixed maps fail with EEXIST on any overlap,
 * automatic maps take the lowest suitably aligned hole, and unmap only removes whole
 * mappings (iopt_unmap_iova_range refuses to split an area).
 */
import { Errno, err, ok, type Result } from './errno.ts'
import { PAGE_SIZE, type PhysMem } from './phys-mem.ts'
import { copyIn, copyOut } from './shared-copy.ts'

export const IommuPerm = { READ: 1, WRITE: 2 } as const
export const IOMMU_READ = IommuPerm.READ
export const IOMMU_WRITE = IommuPerm.WRITE
const PERM_ALL = IOMMU_READ | IOMMU_WRITE

/** Every IOVA, and the sum of two, stays an exact JS number well inside 2^53. */
export const MAX_IOVA = 2 ** 47
/** Larger alignments would waste most of a small aperture for no TLB benefit. */
const MAX_AUTO_ALIGN = 2 ** 30

export interface IovaMapping { iova: number, length: number, perm: number }

interface Area {
  readonly iova: number
  readonly length: number
  readonly end: number
  readonly perm: number
  readonly frames: Uint32Array
}

function alignUp (x: number, align: number): number {
  // Division rather than bit masks: IOVAs exceed 32 bits.
  return Math.ceil(x / align) * align
}

/** The lowest set bit of length, clamped to [PAGE_SIZE, 1 GiB]; length is a positive multiple of PAGE_SIZE. */
function autoAlignment (length: number): number {
  let align = PAGE_SIZE
  while (align < MAX_AUTO_ALIGN && length % (align * 2) === 0) align *= 2
  return align
}

function isPageAligned (x: number): boolean {
  return Number.isSafeInteger(x) && x >= 0 && x % PAGE_SIZE === 0
}

export class IovaDomain {
  readonly id: number
  readonly mem: PhysMem
  /** Bytes of IOVA space the domain accepts, from 0. */
  readonly aperture: number
  /**
   * Called after each removed mapping has left the table but before its frame references
   * are dropped, so the IOMMU can flush its IOTLB and drain device accesses in flight
   * while the frames still cannot be reused.
   */
  onInvalidate?: (iova: number, length: number) => void

  /** Sorted by iova, never overlapping, never merged: unmap needs the original boundaries. */
  #areas: Area[] = []
  #mappedBytes = 0

  constructor (id: number, mem: PhysMem, opts?: { aperture?: number }) {
    const aperture = opts?.aperture ?? MAX_IOVA
    if (!isPageAligned(aperture) || aperture === 0 || aperture > MAX_IOVA) {
      throw new RangeError(`aperture must be a positive multiple of ${PAGE_SIZE} up to 2^47, got ${aperture}`)
    }
    this.id = id
    this.mem = mem
    this.aperture = aperture
  }

  get mappedBytes (): number { return this.#mappedBytes }

  map (iova: number | undefined, frames: readonly number[], perm: number): Result<number> {
    if (!Number.isInteger(perm) || perm <= 0 || perm > PERM_ALL) {
      return err(Errno.EINVAL, `invalid IOMMU permission ${perm}`)
    }
    if (frames.length === 0) return err(Errno.EINVAL, 'empty frame list')
    for (const frame of frames) {
      // Checked up front because PhysMem.get throws on a free frame, and a half-taken set of
      // references would have to be unwound.
      if (!Number.isInteger(frame) || frame <= 0 || frame >= this.mem.nframes || this.mem.refcount(frame) === 0) {
        return err(Errno.EINVAL, `frame ${frame} is not an allocated frame`)
      }
    }
    const length = frames.length * PAGE_SIZE
    if (length > this.aperture) return err(Errno.EINVAL, `${length} bytes exceed the aperture`)

    let at: number
    if (iova === undefined) {
      const found = this.#findHole(length)
      if (found === undefined) return err(Errno.ENOSPC, `no free IOVA range of ${length} bytes`)
      at = found
    } else {
      if (!isPageAligned(iova)) return err(Errno.EINVAL, `iova ${iova} is not page aligned`)
      if (iova + length > this.aperture) {
        return err(Errno.EINVAL, `[${iova}, ${iova + length}) is outside the aperture`)
      }
      if (this.#overlaps(iova, iova + length)) {
        return err(Errno.EEXIST, `[${iova}, ${iova + length}) overlaps an existing mapping`)
      }
      at = iova
    }

    for (const frame of frames) this.mem.get(frame)
    const area: Area = { iova: at, length, end: at + length, perm, frames: Uint32Array.from(frames) }
    this.#areas.splice(this.#firstStartingAfter(at), 0, area)
    this.#mappedBytes += length
    return ok(at)
  }

  unmap (iova: number, length: number): Result<number> {
    if (!isPageAligned(iova) || !isPageAligned(length) || length === 0 || iova + length > MAX_IOVA) {
      return err(Errno.EINVAL, `invalid unmap range iova ${iova} length ${length}`)
    }
    const end = iova + length
    const lo = this.#firstEndingAfter(iova)
    let hi = lo
    while (hi < this.#areas.length && this.#areas[hi].iova < end) hi++
    if (lo === hi) return err(Errno.ENOENT, `nothing mapped in [${iova}, ${end})`)
    // Validate the whole range before touching anything, unlike the kernel which may have
    // unmapped the leading areas by the time it finds one cut by the range.
    if (this.#areas[lo].iova < iova || this.#areas[hi - 1].end > end) {
      return err(Errno.ENOENT, `[${iova}, ${end}) cuts a mapping`)
    }
    return ok(this.#release(this.#areas.splice(lo, hi - lo)))
  }

  unmapAll (): number {
    const removed = this.#areas
    this.#areas = []
    return this.#release(removed)
  }

  lookup (iova: number): { frame: number, perm: number } | undefined {
    const area = this.#areaAt(iova)
    if (area === undefined) return undefined
    return { frame: area.frames[Math.floor((iova - area.iova) / PAGE_SIZE)], perm: area.perm }
  }

  accessRw (iova: number, buf: Uint8Array, write: boolean): Result<number> {
    if (!Number.isSafeInteger(iova) || iova < 0) return err(Errno.EINVAL, `invalid iova ${iova}`)
    const need = write ? IOMMU_WRITE : IOMMU_READ
    const bytes = this.mem.bytes
    let done = 0
    while (done < buf.length) {
      const addr = iova + done
      const area = this.#areaAt(addr)
      if (area === undefined || (area.perm & need) === 0) {
        return err(Errno.EFAULT, `${write ? 'write' : 'read'} fault at iova ${addr}`, { addr, done })
      }
      const offset = addr - area.iova
      const page = Math.floor(offset / PAGE_SIZE)
      const inPage = offset - page * PAGE_SIZE
      const n = Math.min(buf.length - done, PAGE_SIZE - inPage)
      const phys = area.frames[page] * PAGE_SIZE + inPage
      if (write) copyIn(bytes, phys, buf.subarray(done, done + n))
      else copyOut(buf, done, bytes, phys, n)
      done += n
    }
    return ok(done)
  }

  mappings (): IovaMapping[] {
    return this.#areas.map(a => ({ iova: a.iova, length: a.length, perm: a.perm }))
  }

  #release (removed: readonly Area[]): number {
    let bytes = 0
    for (const area of removed) bytes += area.length
    this.#mappedBytes -= bytes
    for (const area of removed) {
      // If the callback throws, the references leak rather than letting frames be reused
      // under a device access that may still be in flight.
      this.onInvalidate?.(area.iova, area.length)
      for (const frame of area.frames) this.mem.put(frame)
    }
    return bytes
  }

  /** The area containing addr: this is the page walk, so a binary search. */
  #areaAt (addr: number): Area | undefined {
    const i = this.#firstStartingAfter(addr) - 1
    if (i < 0) return undefined
    const area = this.#areas[i]
    return addr < area.end ? area : undefined
  }

  #firstStartingAfter (addr: number): number {
    const areas = this.#areas
    let lo = 0
    let hi = areas.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (areas[mid].iova <= addr) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Areas never overlap, so their ends are sorted like their starts. */
  #firstEndingAfter (addr: number): number {
    const areas = this.#areas
    let lo = 0
    let hi = areas.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (areas[mid].end <= addr) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  #overlaps (start: number, end: number): boolean {
    const i = this.#firstEndingAfter(start)
    return i < this.#areas.length && this.#areas[i].iova < end
  }

  /**
   * Lowest hole at or above PAGE_SIZE: like iopt_alloc_iova, never hands out IOVA 0, so a
   * zeroed descriptor field cannot alias a live mapping.
   */
  #findHole (length: number): number | undefined {
    const align = autoAlignment(length)
    let candidate = alignUp(PAGE_SIZE, align)
    for (const area of this.#areas) {
      if (candidate + length > this.aperture) return undefined
      if (area.end <= candidate) continue
      if (candidate + length <= area.iova) return candidate
      candidate = alignUp(area.end, align)
    }
    return candidate + length <= this.aperture ? candidate : undefined
  }
}
