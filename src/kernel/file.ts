/**
 * A file object with its page cache (struct address_space, mm/filemap.c) and a backing
 * store standing in for the disk. Shared anonymous memory is a `shmem` file, as in
 * mm/shmem.c: the same page cache, with no backing store to write to.
 *
 * Writeback (mm/page-writeback.c) keeps pages stable (DESIGN.md invariant 7): each dirty
 * page is write-protected in every mapping, which runs the mmu notifiers and so waits for
 * device writes in flight; pins for DMA are waited out; then the page is copied to the
 * backing store in one synchronous step, so no device write can land half-way through.
 */
import { Errno, err, ok, type Result } from '../hw/errno.ts'
import { PAGE_SIZE, type PhysMem } from '../hw/phys-mem.ts'
import { copyIn, copyOut } from '../hw/shared-copy.ts'
import type { PageMeta } from './page-meta.ts'

export interface FileMapper {
  /** Clears the write bit of every shared mapping of this page, through the notifiers. */
  writeProtectFilePage: (file: File, pgoff: number) => void
}

export const FileKind = {
  REGULAR: 'regular',
  SHMEM: 'shmem'
} as const
export type FileKind = typeof FileKind[keyof typeof FileKind]

export class File {
  readonly pages = new Map<number, number>()
  readonly dirty = new Set<number>()
  /** the disk: whole pages, absent = zeros */
  readonly backing = new Map<number, Uint8Array>()
  readonly #mappers = new Map<FileMapper, number>()
  pagesWrittenBack = 0
  #writeback: Promise<unknown> = Promise.resolve()
  unlinked = false

  readonly id: string
  readonly kind: FileKind
  size: number
  readonly maxSize: number
  readonly mem: PhysMem
  readonly meta: PageMeta

  constructor (id: string, kind: FileKind, size: number, maxSize: number, mem: PhysMem, meta: PageMeta) {
    this.id = id
    this.kind = kind
    this.size = size
    this.maxSize = maxSize
    this.mem = mem
    this.meta = meta
  }

  get mapCount (): number { return this.#mappers.size }

  addMapper (m: FileMapper): void {
    this.#mappers.set(m, (this.#mappers.get(m) ?? 0) + 1)
  }

  removeMapper (m: FileMapper): void {
    const n = this.#mappers.get(m) ?? 0
    if (n <= 1) this.#mappers.delete(m)
    else this.#mappers.set(m, n - 1)
    if (this.unlinked && this.#mappers.size === 0) this.dropCache()
  }

  /** The page-cache frame of a page, read in from the backing store on a miss. */
  getPage (pgoff: number): Result<number> {
    const cached = this.pages.get(pgoff)
    if (cached !== undefined) return ok(cached)
    const r = this.mem.alloc()
    if (!r.ok) return r
    const disk = this.backing.get(pgoff)
    if (disk !== undefined) this.mem.bytes.set(disk, r.value * PAGE_SIZE)
    this.pages.set(pgoff, r.value)
    return r
  }

  markDirty (pgoff: number): void {
    if (this.kind === FileKind.REGULAR) this.dirty.add(pgoff)
  }

  /** pread through the page cache; reads past the end are cut at the file size. */
  read (offset: number, length: number): Result<Uint8Array> {
    if (offset < 0 || length < 0) return err(Errno.EINVAL, 'negative offset or length')
    const end = Math.min(offset + length, this.size)
    const out = new Uint8Array(Math.max(0, end - offset))
    for (let pos = offset; pos < end;) {
      const pgoff = Math.floor(pos / PAGE_SIZE)
      const inPage = pos % PAGE_SIZE
      const n = Math.min(PAGE_SIZE - inPage, end - pos)
      const frame = this.pages.get(pgoff)
      if (frame !== undefined) {
        copyOut(out, pos - offset, this.mem.bytes, frame * PAGE_SIZE + inPage, n)
      } else {
        const disk = this.backing.get(pgoff)
        if (disk !== undefined) out.set(disk.subarray(inPage, inPage + n), pos - offset)
      }
      pos += n
    }
    return ok(out)
  }

  /** pwrite through the page cache; grows the file up to maxSize (EFBIG past it). */
  write (offset: number, data: Uint8Array): Result<number> {
    if (offset < 0) return err(Errno.EINVAL, 'negative offset')
    if (offset + data.length > this.maxSize) return err(Errno.EFBIG, `file would exceed ${this.maxSize} bytes`)
    for (let done = 0; done < data.length;) {
      const pos = offset + done
      const pgoff = Math.floor(pos / PAGE_SIZE)
      const inPage = pos % PAGE_SIZE
      const n = Math.min(PAGE_SIZE - inPage, data.length - done)
      const r = this.getPage(pgoff)
      if (!r.ok) return err(r.errno, r.message, { done })
      copyIn(this.mem.bytes, r.value * PAGE_SIZE + inPage, data.subarray(done, done + n))
      this.markDirty(pgoff)
      done += n
    }
    if (offset + data.length > this.size) this.size = offset + data.length
    return ok(data.length)
  }

  /**
   * Writes every dirty page back, keeping each page stable while it is written.
   * Answers the number of pages written. Concurrent calls are serialised.
   */
  async fsync (): Promise<number> {
    const run = this.#writeback.then(async () => await this.#writebackAll())
    this.#writeback = run.catch(() => {})
    return await run
  }

  async #writebackAll (): Promise<number> {
    let written = 0
    for (const pgoff of [...this.dirty].sort((a, b) => a - b)) {
      if (!this.dirty.has(pgoff)) continue
      const frame = this.pages.get(pgoff)
      if (frame === undefined) {
        this.dirty.delete(pgoff)
        continue
      }
      for (;;) {
        // Write-protecting waits for device writes in flight through the notifiers; a pin
        // (a mediated DMA in flight) cannot be interrupted, so wait for its unpin and retry.
        for (const m of this.#mappers.keys()) m.writeProtectFilePage(this, pgoff)
        if (!this.meta.isPinned(frame)) break
        await this.meta.waitUnpinned(frame)
      }
      this.backing.set(pgoff, this.mem.bytes.slice(frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE))
      this.dirty.delete(pgoff)
      this.pagesWrittenBack++
      written++
    }
    return written
  }

  /** Frees the page cache of an unlinked file once nothing maps it. */
  dropCache (): void {
    for (const frame of this.pages.values()) this.mem.put(frame)
    this.pages.clear()
    this.dirty.clear()
  }
}
