import { describeStorageContract } from '../../src/testing/index.js'
import { openMemoryFixture } from '../support/memory.js'

describeStorageContract('memory', openMemoryFixture)
