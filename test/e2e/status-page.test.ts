/**
 * The status page served by a real `stovepipe run` (real repository, real shell builds),
 * loaded in headless Chromium: last green and the timeline render, then update without a
 * reload after a new push. Saves `test-artifacts/status-page-e2e.png` (the README's screenshot).
 */
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { describeBrowser, openPage, saveScreenshot, waitForCount, waitForText, type OpenedPage } from '../support/browser.js'
import { startCli, type CliProcess } from '../support/cli.js'
import { createTempRepo, type TempRepo } from '../support/git-repo.js'
import { tempDir } from '../support/sqlite.js'

const CHECK = `#!/bin/sh
status="$(cat status)"
echo "checking $STOVEPIPE_SHA: $status"
[ "$status" = ok ]
`

describeBrowser('status page of `stovepipe run` (end to end)', () => {
  let repo: TempRepo
  let state: ReturnType<typeof tempDir>
  let cli: CliProcess
  let opened: OpenedPage
  const shas: string[] = []

  beforeAll(async () => {
    repo = await createTempRepo()
    state = tempDir('stovepipe-e2e-page-')
    shas.push(await repo.commit('green', { 'check.sh': CHECK, status: 'ok\n' }))
    cli = startCli(
      [
        'run',
        '--repo',
        repo.dir,
        '--build',
        'sh ./check.sh',
        '--db',
        join(state.dir, 'stovepipe.db'),
        '--poll',
        '100ms',
        '--http',
        '127.0.0.1:0',
      ],
      { cwd: state.dir },
    )
    await cli.waitFor(new RegExp(`${shas[0]?.slice(0, 7)} is green`))
    shas.push(await repo.commit('broken', { status: 'broken\n' }))
    await cli.waitFor(new RegExp(`${shas[1]?.slice(0, 7)} is red`))
    const [, url = ''] = await cli.waitFor(/serving (http:\/\/127\.0\.0\.1:\d+)/)
    opened = await openPage(`${url}/`)
  }, 60_000)

  afterAll(async () => {
    await opened.close()
    cli.child.kill('SIGTERM')
    await cli.exited
    repo.remove()
    state.remove()
  })

  it('shows last green and the timeline, then updates live after a push', async () => {
    const { page } = opened
    await waitForText(page, 'last-green-sha-main', shas[0]?.slice(0, 7) ?? '')
    await waitForCount(page, '[data-testid="timeline-main"] circle.mark', 2)
    expect(await page.locator('[data-testid="timeline-main"] circle.mark[data-verdict="red"]').count()).toBe(1)

    shas.push(await repo.commit('fixed', { status: 'ok\n' }))
    await waitForText(page, 'last-green-sha-main', shas[2]?.slice(0, 7) ?? '', 30_000)
    await waitForCount(page, '[data-testid="timeline-main"] circle.mark', 3)
    expect(await page.locator('[data-testid="timeline-main"] circle.mark[data-last-green="true"]').getAttribute('data-request')).toBe(
      'request/main/3',
    )
    await saveScreenshot(page, 'status-page-e2e')
    expect(opened.errors).toEqual([])
  }, 60_000)
})
