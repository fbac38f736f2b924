"""Run in a subprocess: under gevent, the broadcaster's blocking XREAD must not block the hub.

Monkey-patches first (as gunicorn's gevent worker does), starts a Redis
backend whose broadcaster then blocks in XREAD (BLOCK 2000 ms), and counts how
often another greenlet gets to run in the meantime. A blocking XREAD would
freeze the event loop and leave the counter near zero. Then checks that an
event published while XREAD is blocked is fanned out.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import gevent  # noqa: E402

from flask_sse_hub.backends.redis import RedisBackend  # noqa: E402
from flask_sse_hub.broker import Broker  # noqa: E402
from flask_sse_hub.wire import make_event  # noqa: E402


def main(url: str) -> int:
    broker = Broker(RedisBackend(url, history_size=100, key="gevent-check"), queue_size=100)
    sub, _ = broker.subscribe(["c"])  # starts the broadcaster, now blocked in XREAD
    ticks = 0

    def ticker() -> None:
        nonlocal ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    runner = gevent.spawn(ticker)
    gevent.sleep(1.0)  # the broadcaster sits in XREAD for all of this second
    runner.kill()
    (event_id,) = broker.publish([make_event("hello", channel="c")])
    chunk, count, _ = sub.queue.get(timeout=5)
    broker.stop()
    print(f"ticks={ticks} delivered={count} id={event_id}")
    if ticks < 20:
        print("FAIL: the event loop was blocked while XREAD waited")
        return 1
    if event_id.encode() not in chunk:
        print("FAIL: the event published during XREAD was not fanned out")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
