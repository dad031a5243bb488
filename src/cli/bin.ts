#!/usr/bin/env node
/**
 * The `stovepipe` executable.
 *
 * @module
 */
import { processIo } from './io.js'
import { main } from './main.js'

const io = processIo()
const code = await main(process.argv.slice(2), io)
// Let stdout drain (or find its reader gone), then leave even if a library left a handle open.
process.stdout.write('', () => {
  setImmediate(() => process.exit(io.brokenPipe() ? 141 : code))
})
