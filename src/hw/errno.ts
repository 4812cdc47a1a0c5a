/**
 * Errno-style results shared by every layer. Inner layers return these; only the edge
 * (routes/) turns them into HTTP problems. Names follow include/uapi/asm-generic/errno-base.h.
 */
export const Errno = {
  EPERM: 'EPERM',
  ENOENT: 'ENOENT',
  ESRCH: 'ESRCH',
  EAGAIN: 'EAGAIN',
  ENOMEM: 'ENOMEM',
  EFAULT: 'EFAULT',
  EBUSY: 'EBUSY',
  EEXIST: 'EEXIST',
  ENODEV: 'ENODEV',
  EINVAL: 'EINVAL',
  ENOSPC: 'ENOSPC',
  EFBIG: 'EFBIG',
  ERANGE: 'ERANGE',
  EOPNOTSUPP: 'EOPNOTSUPP',
  EOVERFLOW: 'EOVERFLOW',
  EDQUOT: 'EDQUOT'
} as const
export type Errno = typeof Errno[keyof typeof Errno]

export interface Ok<T> { ok: true, value: T }
export interface Err {
  ok: false
  errno: Errno
  message: string
  /** the faulting address, for EFAULT */
  addr?: number
  /** bytes done before the error, for partial loads and stores */
  done?: number
}
export type Result<T> = Ok<T> | Err

export function ok<T> (value: T): Ok<T> {
  return { ok: true, value }
}

export function err (errno: Errno, message: string, extra?: { addr?: number, done?: number }): Err {
  return { ok: false, errno, message, ...extra }
}
