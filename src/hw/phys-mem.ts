/**
 * Physical memory: one SharedArrayBuffer cut into 4 KiB frames, so engine worker threads
 * reach the same bytes the kernel maps (zero-copy DMA). The allocator keeps a reference
 * count per frame (the struct page refcount of include/linux/mm.h): page tables, the page
 * cache, pins and in-flight device accesses each hold one, and a frame returns to the free
 * list only when the last is dropped.
 */
import { Errno, err, ok, type Result } from './errno.ts'

export const PAGE_SHIFT = 12
export const PAGE_SIZE = 1 << PAGE_SHIFT
export const PAGE_MASK = PAGE_SIZE - 1
export const DEFAULT_PHYS_MEM_BYTES = 64 * 1024 * 1024

export class PhysMem {
  readonly sab: SharedArrayBuffer
  readonly bytes: Uint8Array
  readonly nframes: number
  readonly #refcount: Uint32Array
  /** free frames as a stack: the most recently freed frame is reused first, which keeps tests honest about reuse */
  readonly #free: Int32Array
  #freeTop: number

  constructor (size = DEFAULT_PHYS_MEM_BYTES) {
    if (!Number.isSafeInteger(size) || size < PAGE_SIZE || size % PAGE_SIZE !== 0) {
      throw new RangeError(`physical memory size must be a positive multiple of ${PAGE_SIZE}, got ${size}`)
    }
    this.sab = new SharedArrayBuffer(size)
    this.bytes = new Uint8Array(this.sab)
    this.nframes = size >>> PAGE_SHIFT
    this.#refcount = new Uint32Array(this.nframes)
    this.#free = new Int32Array(this.nframes)
    // Frame 0 is never handed out: a zero frame number in a table is always a bug.
    for (let i = 0; i < this.nframes - 1; i++) this.#free[i] = this.nframes - 1 - i
    this.#freeTop = this.nframes - 1
  }

  get freeFrames (): number { return this.#freeTop }
  get usedFrames (): number { return this.nframes - 1 - this.#freeTop }

  /** A zeroed frame with one reference, or ENOMEM. */
  alloc (): Result<number> {
    if (this.#freeTop === 0) return err(Errno.ENOMEM, 'out of physical memory')
    const frame = this.#free[--this.#freeTop]
    this.#refcount[frame] = 1
    this.bytes.fill(0, frame << PAGE_SHIFT, (frame + 1) << PAGE_SHIFT)
    return ok(frame)
  }

  get (frame: number): void {
    if (this.#refcount[frame] === 0) throw new Error(`get of free frame ${frame}`)
    this.#refcount[frame]++
  }

  /** Drops one reference; true when that freed the frame. */
  put (frame: number): boolean {
    const rc = this.#refcount[frame]
    if (rc === 0) throw new Error(`put of free frame ${frame}`)
    if (rc > 1) {
      this.#refcount[frame] = rc - 1
      return false
    }
    this.#refcount[frame] = 0
    this.#free[this.#freeTop++] = frame
    return true
  }

  refcount (frame: number): number {
    return this.#refcount[frame]
  }

  /** A view of one frame's bytes (no copy). */
  frameView (frame: number): Uint8Array {
    return this.bytes.subarray(frame << PAGE_SHIFT, (frame + 1) << PAGE_SHIFT)
  }

  copyFrame (dstFrame: number, srcFrame: number): void {
    this.bytes.copyWithin(dstFrame << PAGE_SHIFT, srcFrame << PAGE_SHIFT, (srcFrame + 1) << PAGE_SHIFT)
  }
}
