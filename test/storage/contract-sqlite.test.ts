import { describeStorageContract } from '../../src/testing/index.js'
import { openSqliteFixture } from '../support/sqlite.js'

describeStorageContract('sqlite (file, synchronous NORMAL)', () => openSqliteFixture())
describeStorageContract('sqlite (file, synchronous FULL)', () => openSqliteFixture({ synchronous: 'FULL' }))
