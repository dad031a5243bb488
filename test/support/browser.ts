/**
 * Headless Chromium for tests that look at a page as a person would (playwright-core with
 * Debian's Chromium: no browser download). `CHROMIUM_PATH` overrides where it is.
 */
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { describe, it } from 'vitest'

/** Where Chromium is (`CHROMIUM_PATH`, default Debian's `/usr/bin/chromium`). */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

/**
 * `describe` for suites that need Chromium: runs them when it is installed, fails loudly
 * under `CI=true` when it is not (`.ci/run` installs it), and skips them with one line otherwise.
 */
export function describeBrowser(name: string, body: () => void): void {
  if (existsSync(CHROMIUM_PATH)) {
    describe(name, body)
  } else if (process.env.CI === 'true') {
    describe(name, () => {
      it('finds Chromium (required under CI=true)', () => {
        throw new Error(`Chromium is not at ${CHROMIUM_PATH}: install it (apt-get install chromium) or set CHROMIUM_PATH`)
      })
    })
  } else {
    console.warn(
      `[stovepipe] skipping browser suite "${name}": no Chromium at ${CHROMIUM_PATH} (apt-get install chromium, or set CHROMIUM_PATH)`,
    )
    describe.skipIf(true)(name, body)
  }
}

/** Where screenshots go (gitignored). */
export const ARTIFACTS_DIR = join(process.cwd(), 'test-artifacts')

/** Launches headless Chromium. */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: ['--no-sandbox'], headless: true })
}

/** A page open in its own browser, with the errors it reported. */
export interface OpenedPage {
  browser: Browser
  page: Page
  /** Uncaught exceptions and `console.error` messages (CSP violations included), in order. */
  errors: string[]
  close(): Promise<void>
}

/** Launches a browser and opens `url` in a new page (1280×800 unless told otherwise). */
export async function openPage(url: string, options: { width?: number; height?: number } = {}): Promise<OpenedPage> {
  const browser = await launchBrowser()
  try {
    const page = await browser.newPage({ viewport: { width: options.width ?? 1280, height: options.height ?? 800 } })
    const errors: string[] = []
    page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`))
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`console: ${message.text()}`)
    })
    await page.goto(url)
    return { browser, page, errors, close: () => browser.close() }
  } catch (error) {
    await browser.close()
    throw error
  }
}

/** Saves a full-page screenshot as `test-artifacts/<name>.png`; returns its path. */
export async function saveScreenshot(page: Page, name: string): Promise<string> {
  mkdirSync(ARTIFACTS_DIR, { recursive: true })
  const path = join(ARTIFACTS_DIR, `${name}.png`)
  await page.screenshot({ path, fullPage: true })
  return path
}

/** The page's visible text, for error messages. */
const pageText = (page: Page): Promise<string> =>
  page
    .locator('body')
    .innerText({ timeout: 1000 })
    .catch(() => '(page text unavailable)')

/**
 * Polls `read` (from Node, through locators) until `done` holds for its value; rejects
 * after `timeoutMs` saying what it last read and what the page showed. Polling from Node
 * rather than with `page.waitForFunction` keeps the page's Content-Security-Policy (no
 * eval) intact and in force.
 */
export async function pollPage<T>(
  page: Page,
  read: () => Promise<T>,
  done: (value: T) => boolean,
  what: string,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: T | undefined
  for (;;) {
    last = await read()
    if (done(last)) return last
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; last saw ${JSON.stringify(last)}; page text:\n${await pageText(page)}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** The text of the first element matching `selector`, or null when there is none. */
export async function textOf(page: Page, selector: string): Promise<string | null> {
  const found = page.locator(selector).first()
  return (await found.count()) === 0 ? null : found.textContent({ timeout: 1000 })
}

/** Waits until `selector` matches exactly `count` elements. */
export async function waitForCount(page: Page, selector: string, count: number, timeoutMs = 10_000): Promise<void> {
  await pollPage(
    page,
    () => page.locator(selector).count(),
    (n) => n === count,
    `${count} elements matching ${selector}`,
    timeoutMs,
  )
}

/** Waits until the element with `data-testid` reads exactly `text`. */
export async function waitForText(page: Page, testId: string, text: string, timeoutMs = 10_000): Promise<void> {
  const selector = `[data-testid="${testId}"]`
  await pollPage(
    page,
    () => textOf(page, selector),
    (t) => t === text,
    `${selector} to read ${JSON.stringify(text)}`,
    timeoutMs,
  )
}
