"""gunicorn settings of the checkout (``gunicorn wsgi:app`` reads this file): the packaged ones.

Everything lives in :mod:`flask_sse_hub.gunicorn_config`, which a pip user
gets as ``gunicorn -c python:flask_sse_hub.gunicorn_config app:app`` or
through the ``flask-sse-hub`` command.
"""

from flask_sse_hub.gunicorn_config import *  # noqa: F403
