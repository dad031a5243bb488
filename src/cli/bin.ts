#!/usr/bin/env node
/**
 * The `stovepipe` executable.
 *
 * @module
 */
import { processIo } from './io.js'
import { main } from './main.js'

const code = await main(process.argv.slice(2), processIo())
// Let stdout drain, then leave even if a library left a handle open.
process.exitCode = code
setImmediate(() => process.exit(code))
