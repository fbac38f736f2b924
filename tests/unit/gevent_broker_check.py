"""Run by ``test_broker.py`` in a subprocess: the broker scenarios under gevent.

Served by gunicorn's gevent worker, every thread is a greenlet and
the same broker code must keep its guarantees. ``monkey.patch_all()`` comes
first, before the package (or anything that imports ``threading``/``queue``)
is imported, as gunicorn's gevent worker does. Exits 0 and prints ``OK`` only
when every check passed; a watchdog on a real OS thread ends a hang with the
greenlets' stacks and exit status 3.
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flask_sse_hub.backends.memory import MemoryBackend  # noqa: E402
from flask_sse_hub.broker import Broker  # noqa: E402
from tests.support.threads import run_in_thread  # noqa: E402
from tests.unit.test_broker import run_fanout_scenario, run_resume_race  # noqa: E402

#: Far more than a pass takes (a few seconds); the pytest side waits longer still.
WATCHDOG_SECONDS = 45.0


def start_watchdog() -> None:
    """On a real thread (not a greenlet): if the scenarios hang, show where and exit 3."""
    real_sleep = monkey.get_original("time", "sleep")
    start_thread = monkey.get_original("_thread", "start_new_thread")

    def watch() -> None:
        real_sleep(WATCHDOG_SECONDS)
        print(f"HANG: still running after {WATCHDOG_SECONDS} s; greenlets:", flush=True)
        for obj in gc.get_objects():
            if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
                print(f"--- {obj!r}", flush=True)
                traceback.print_stack(obj.gr_frame, limit=15, file=sys.stdout)
        sys.stdout.flush()
        os._exit(3)

    start_thread(watch, ())


def check_patched() -> None:
    """The scenarios really run on greenlets, with gevent's locks and queues."""
    for name in ("threading", "queue", "time"):
        assert monkey.is_module_patched(name), f"{name} is not monkey-patched"
    native_lock = type(monkey.get_original("threading", "Lock")())
    broker = Broker(MemoryBackend(history_size=1), queue_size=1)
    for lock in (broker._lock, broker.backend._lock):  # type: ignore[attr-defined]
        assert not isinstance(lock, native_lock), "the broker holds an OS lock, not gevent's"
    ran_in: list[object] = []
    run_in_thread(lambda: ran_in.append(gevent.getcurrent())).join(5)
    assert ran_in and isinstance(ran_in[0], gevent.Greenlet), f"a thread ran in {ran_in}"


def main() -> int:
    start_watchdog()
    check_patched()
    run_fanout_scenario()
    print("fan-out: every subscriber got its channels' events exactly once, in order")
    run_resume_race()
    print("resume race: every event exactly once, in order, across 20 reconnects")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
