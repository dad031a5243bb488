import { describeStorageContract } from '../../src/testing/index.js'
import { describeMysql, openMysqlFixture } from '../support/mysql.js'

describeMysql('mysql', () => {
  describeStorageContract('mysql', openMysqlFixture)
})
