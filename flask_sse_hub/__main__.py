"""``flask-sse-hub`` / ``python -m flask_sse_hub``: the standalone hub under gunicorn.

``flask-sse-hub tail URL`` instead follows a hub's stream (:mod:`flask_sse_hub.client`).

The packaged settings (:mod:`flask_sse_hub.gunicorn_config`: gevent worker,
connection and descriptor limits, SIGTERM handling, the one-worker guard),
configured by ``SSE_BIND``, ``WEB_CONCURRENCY`` and the ``SSE_*`` environment
variables; any gunicorn option given on the command line wins, e.g.
``flask-sse-hub --bind 0.0.0.0:8000 --workers 4``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CONFIG = "python:flask_sse_hub.gunicorn_config"
APP = "flask_sse_hub.server:create_app()"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the standalone hub; ``argv`` are gunicorn options (default: the command line's)."""
    from gunicorn.app.wsgiapp import WSGIApplication  # type: ignore[import-untyped]

    options = list(sys.argv[1:] if argv is None else argv)
    if options[:1] == ["tail"]:
        from .client import tail_command

        tail_command().main(options[1:], prog_name="flask-sse-hub tail")
        return
    sys.argv = ["flask-sse-hub", "--config", CONFIG, *options, APP]
    WSGIApplication("%(prog)s [OPTIONS]", prog="flask-sse-hub").run()


if __name__ == "__main__":
    main()
