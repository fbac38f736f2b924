// A real Node.js EventSource (the `eventsource` npm package) for the test suite.
//
//   node listen.mjs URL [TYPE ...]
//
// Opens `new EventSource(URL)` and writes one JSON object per line to stdout:
//
//   {"kind": "event", "type": ..., "data": ..., "lastEventId": ..., "t": ms}
//       for every `message` event, every event of the named TYPEs and every
//       `sse-hub-gap` event (what a page's listeners would see);
//   {"kind": "open", "t": ms}
//   {"kind": "error", "code": ..., "message": ..., "readyState": n, "t": ms}
//       for the EventSource's own `open` / `error` events (readyState 0 after
//       an error means it will reconnect by itself, 2 that it gave up);
//   {"kind": "closed", "t": ms}  once, when it shuts down.
//
// `t` is milliseconds since this script started (for failure messages only).
// It closes the EventSource and exits 0 on SIGTERM, SIGINT or end of stdin,
// so the test that started it can stop it by closing the pipe.

import {EventSource} from 'eventsource'

const [url, ...types] = process.argv.slice(2)
if (!url) {
  process.stderr.write('usage: node listen.mjs URL [TYPE ...]\n')
  process.exit(2)
}

const started = performance.now()
const emit = (line) => {
  line.t = Math.round(performance.now() - started)
  process.stdout.write(`${JSON.stringify(line)}\n`)
}

const source = new EventSource(url)
const record = (event) =>
  emit({kind: 'event', type: event.type, data: event.data, lastEventId: event.lastEventId})
// The same listener object is registered once per type even if TYPE repeats one.
for (const type of new Set(['message', 'sse-hub-gap', ...types])) {
  source.addEventListener(type, record)
}
source.addEventListener('open', () => emit({kind: 'open'}))
source.addEventListener('error', (event) =>
  emit({
    kind: 'error',
    code: event.code ?? null,
    message: event.message ?? null,
    readyState: source.readyState,
  }),
)

let closing = false
const shutdown = () => {
  if (closing) return
  closing = true
  source.close()
  emit({kind: 'closed'})
  // Exit once everything written so far has reached the pipe.
  process.stdout.write('', () => process.exit(0))
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
process.stdin.on('end', shutdown)
process.stdin.on('error', shutdown)
process.stdin.resume()
// The reader went away: nobody is left to tell.
process.stdout.on('error', () => process.exit(0))
