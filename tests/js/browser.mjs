// Loads one page in headless Chromium (Debian's /usr/bin/chromium) through playwright-core and prints
// {"result": window.__result, "text": the page's #rows text, "console": [...]} as one JSON line.
// Driven by tests/integration/test_gateway_browser.py. Web security stays on: no flag relaxes CORS.
import { chromium } from 'playwright-core'

const { PAGE_URL, USER_DATA_DIR, CHROMIUM = '/usr/bin/chromium', WAIT_MS = '30000' } = process.env
const context = await chromium.launchPersistentContext(USER_DATA_DIR, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
})
try {
  const page = await context.newPage()
  const messages = []
  page.on('console', (m) => messages.push(m.text()))
  page.on('requestfailed', (r) => messages.push(`requestfailed ${r.method()} ${r.failure()?.errorText}`))
  await page.goto(PAGE_URL)
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: Number(WAIT_MS) })
  const result = await page.evaluate(() => window.__result)
  const text = await page.locator('#rows').innerText()
  console.log(JSON.stringify({ result, text, console: messages }))
} finally {
  await context.close()
}
