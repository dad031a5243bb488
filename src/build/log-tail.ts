/**
 * A bounded tail buffer for build output: keeps only the last `limitBytes` bytes of
 * everything pushed into it, so a build that prints gigabytes costs a fixed amount of
 * memory. The text it returns starts on a UTF-8 character boundary.
 *
 * @module
 */
import { InvalidInputError } from '../storage/errors.js'

/** How much build output a builder keeps by default: the last 64 KiB (what the runtime stores). */
export const LOG_TAIL_BYTES = 64 * 1024

/** When this many chunks are held, they are joined into one (bounds the bookkeeping for many tiny writes). */
const MAX_CHUNKS = 64

/**
 * The last bytes of a stream of output.
 *
 * @example
 * ```ts
 * const tail = new LogTail(8)
 * tail.push('hello, world')
 * tail.text() // 'o, world'
 * ```
 */
export class LogTail {
  private chunks: Buffer[] = []
  private size = 0
  private droppedBytes = 0

  /** @param limitBytes How many bytes to keep (default {@link LOG_TAIL_BYTES}). */
  constructor(readonly limitBytes: number = LOG_TAIL_BYTES) {
    if (!Number.isSafeInteger(limitBytes) || limitBytes < 4) {
      throw new InvalidInputError(`a log tail keeps a whole number of at least 4 bytes, got ${String(limitBytes)}`)
    }
  }

  /** Appends output; older bytes beyond the limit are dropped. */
  push(chunk: Buffer | string): void {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk
    if (buffer.length === 0) return
    if (buffer.length >= this.limitBytes) {
      this.droppedBytes += this.size + buffer.length - this.limitBytes
      // A copy, so the (possibly large) chunk is not kept alive through a view of it.
      this.chunks = [Buffer.from(buffer.subarray(buffer.length - this.limitBytes))]
      this.size = this.limitBytes
      return
    }
    this.chunks.push(buffer)
    this.size += buffer.length
    while (this.size > this.limitBytes) {
      const first = this.chunks[0]
      if (first === undefined) break
      const excess = this.size - this.limitBytes
      if (first.length <= excess) {
        this.chunks.shift()
        this.size -= first.length
        this.droppedBytes += first.length
      } else {
        this.chunks[0] = first.subarray(excess)
        this.size -= excess
        this.droppedBytes += excess
      }
    }
    if (this.chunks.length > MAX_CHUNKS) this.chunks = [Buffer.concat(this.chunks, this.size)]
  }

  /** Appends one line of text (a newline is added, and one is put before it when the output so far does not end a line). */
  line(text: string): void {
    const last = this.chunks[this.chunks.length - 1]
    const needsBreak = last !== undefined && last[last.length - 1] !== 0x0a
    this.push(`${needsBreak ? '\n' : ''}${text}\n`)
  }

  /** Bytes held now (at most `limitBytes`). */
  get bytes(): number {
    return this.size
  }

  /** Bytes pushed and dropped so far. */
  get dropped(): number {
    return this.droppedBytes
  }

  /**
   * The kept output as text. When older output was dropped mid-character, the partial
   * character's continuation bytes at the start are skipped, so the text starts on a
   * character boundary.
   */
  text(): string {
    const all = this.chunks.length === 1 && this.chunks[0] !== undefined ? this.chunks[0] : Buffer.concat(this.chunks, this.size)
    let start = 0
    if (this.droppedBytes > 0) {
      // UTF-8 continuation bytes are 0b10xxxxxx; a character has at most 3 of them.
      while (start < 3 && start < all.length && ((all[start] ?? 0) & 0xc0) === 0x80) start++
    }
    return all.toString('utf8', start)
  }
}
