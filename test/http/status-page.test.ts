/**
 * The status page in headless Chromium: it renders last green, the timeline and requests
 * in flight from a live runtime, then updates from `/events` without a reload as new heads
 * are validated. Text from repositories is shown as text, never as markup. Saves
 * `test-artifacts/status-page.png`.
 */
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createHttpServer, type ListeningServer } from '../../src/http/index.js'
import type { QueueHandle } from '../../src/index.js'
import { createStatusReader } from '../../src/status/index.js'
import {
  describeBrowser,
  openPage,
  saveScreenshot,
  waitForCount,
  pollPage,
  textOf,
  waitForText,
  type OpenedPage,
} from '../support/browser.js'
import { startRuntime, type Live } from './helpers.js'

const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const C = 'c'.repeat(40)
const D = 'd'.repeat(40)
const HOSTILE = '<img src=x onerror="window.__pwned=1">'

describeBrowser('status page', () => {
  let live: Live
  let main: QueueHandle
  let server: ListeningServer
  let opened: OpenedPage

  beforeAll(async () => {
    live = await startRuntime({
      builder: {
        outcome: (uri) => (uri === `fake://${B}` ? 'failed' : 'passed'),
        durationMs: (uri) => (uri === `fake://${D}` ? 1500 : 0),
      },
    })
    main = await live.sp.queue('main', { ref: 'main' })
    await live.sp.queue('docs', { ref: 'docs', repo: HOSTILE })
    await live.push(main, A)
    await live.push(main, B)
    server = await createHttpServer({ reader: createStatusReader(live.storage, { runtime: live.sp }), sp: live.sp }).listen({ port: 0 })
    opened = await openPage(`${server.url}/`)
  }, 30_000)

  afterAll(async () => {
    await opened.close()
    await server.close()
    await live.stop()
  })

  /** The timeline's marks, oldest first. */
  const marks = async (queue: string): Promise<{ verdict: string | null; request: string | null; last: string | null }[]> => {
    const found = opened.page.locator(`[data-testid="timeline-${queue}"] circle.mark`)
    const out = []
    for (let i = 0; i < (await found.count()); i++) {
      const mark = found.nth(i)
      out.push({
        verdict: await mark.getAttribute('data-verdict'),
        request: await mark.getAttribute('data-request'),
        last: await mark.getAttribute('data-last-green'),
      })
    }
    return out
  }

  it('renders each queue with last green, timeline and nothing in flight', async () => {
    const { page } = opened
    await waitForText(page, 'last-green-sha-main', 'aaaaaaa')
    await waitForText(page, 'connection', 'live')
    expect(await page.title()).toBe('Stovepipe — last green')
    expect(await page.textContent('[data-testid="last-green-request-main"]')).toBe('request/main/1')
    await waitForCount(page, '[data-testid="timeline-main"] circle.mark', 2)
    expect(await marks('main')).toEqual([
      { verdict: 'green', request: 'request/main/1', last: 'true' },
      { verdict: 'red', request: 'request/main/2', last: null },
    ])
    expect(await page.textContent('[data-testid="inflight-main"]')).toBe('none')
    expect(await page.textContent('[data-testid="counts-main"]')).toBe(
      '2 requests: 1 green, 1 red, 0 indeterminate, 0 superseded, 0 cancelled, 0 in flight',
    )
    expect(await page.textContent('[data-testid="last-green-docs"]')).toContain('none yet')
    expect(await page.textContent('[data-testid="queue-docs"]')).toContain(`docs in ${HOSTILE}`)
  })

  it('shows text from repositories as text, with no error on the page', async () => {
    const { page } = opened
    expect(await page.$$('[data-testid="queue-docs"] img')).toHaveLength(0)
    expect(await page.evaluate('window.__pwned')).toBeUndefined()
    expect(opened.errors).toEqual([])
  })

  it('updates live as new heads are validated, without a reload', async () => {
    const { page } = opened
    await page.evaluate('window.__sameDocument = true')
    await live.push(main, C)
    await waitForText(page, 'last-green-sha-main', 'ccccccc')
    await waitForCount(page, '[data-testid="timeline-main"] circle.mark', 3)
    expect(await marks('main')).toEqual([
      { verdict: 'green', request: 'request/main/1', last: null },
      { verdict: 'red', request: 'request/main/2', last: null },
      { verdict: 'green', request: 'request/main/3', last: 'true' },
    ])
    // A slow build shows in flight, then lands as the fourth mark.
    live.sc.commit('main', D)
    const { id } = await main.ingest()
    await pollPage(
      page,
      () => textOf(page, '[data-testid="inflight-main"] [data-request="request/main/4"]'),
      (text) => text?.includes('processing.building') === true,
      'request/main/4 to show as building',
    )
    expect(await page.textContent('[data-testid="counts-main"]')).toContain('1 in flight')
    await saveScreenshot(page, 'status-page-in-flight')
    await main.waitFor(id)
    await waitForText(page, 'last-green-sha-main', 'ddddddd')
    await waitForCount(page, '[data-testid="timeline-main"] circle.mark', 4)
    expect(await page.textContent('[data-testid="inflight-main"]')).toBe('none')
    expect(await page.textContent('[data-testid="last-green-request-main"]')).toBe('request/main/4')
    expect(await page.evaluate('window.__sameDocument')).toBe(true)
    expect(opened.errors).toEqual([])
    await saveScreenshot(page, 'status-page')
  }, 30_000)
})
