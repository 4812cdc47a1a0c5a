/**
 * A virtual memory area (struct vm_area_struct, include/linux/mm_types.h): a page-aligned
 * range with one protection and one backing. Split by munmap and mprotect as
 * mm/mmap.c's __split_vma does.
 */
import type { File } from './file.ts'

export const Prot = {
  NONE: 0,
  READ: 1,
  WRITE: 2
} as const

export class Vma {
  start: number
  end: number
  prot: number
  readonly shared: boolean
  /** undefined for private anonymous memory; shared anonymous memory is a shmem file */
  readonly file: File | undefined
  /** file page offset of `start` */
  pgoff: number
  readonly dontcopy: boolean
  /** false when the caller mapped shared anonymous memory: shown as anonymous */
  readonly userFile: boolean

  constructor (start: number, end: number, prot: number, shared: boolean, file: File | undefined, pgoff: number, dontcopy: boolean, userFile: boolean) {
    this.start = start
    this.end = end
    this.prot = prot
    this.shared = shared
    this.file = file
    this.pgoff = pgoff
    this.dontcopy = dontcopy
    this.userFile = userFile
  }

  get length (): number { return this.end - this.start }

  /** A copy covering [start, end) of this one, with the file offset moved to match. */
  slice (start: number, end: number): Vma {
    return new Vma(start, end, this.prot, this.shared, this.file, this.pgoff + (start - this.start) / 4096, this.dontcopy, this.userFile)
  }

  filePage (va: number): number {
    return this.pgoff + Math.floor((va - this.start) / 4096)
  }
}
