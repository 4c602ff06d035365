// Syncs one shape through the postgressor gateway with the official @electric-sql/client.
// Driven by tests/integration/test_gateway_js.py: prints "READY <rows>" after the initial sync,
// then "DONE <rows>" once a row with id $EXPECT_ID arrives through a live request.
import { Shape, ShapeStream } from '@electric-sql/client'

const { GATEWAY_URL, TOKEN, TABLE, EXPECT_ID, LIVE_SSE } = process.env
const timer = setTimeout(() => {
  console.error('timed out waiting for the shape')
  process.exit(3)
}, 30000)

const stream = new ShapeStream({
  url: `${GATEWAY_URL}/v1/shape/${encodeURIComponent(TABLE)}`,
  headers: { Authorization: `Bearer ${TOKEN}` },
  liveSse: LIVE_SSE === '1',
  warnOnHttp: false,
  onError: (error) => {
    console.error(`stream error: ${error?.status ?? ''} ${error?.message ?? error}`)
    process.exit(4)
  },
})
const shape = new Shape(stream)
const ids = (rows) => rows.map((r) => r.id).sort()

const initial = await shape.rows
console.log(`READY ${JSON.stringify(initial)}`)
shape.subscribe(({ rows }) => {
  if (ids(rows).includes(EXPECT_ID)) {
    console.log(`DONE ${JSON.stringify(rows)}`)
    clearTimeout(timer)
    stream.unsubscribeAll()
    process.exit(0)
  }
})
