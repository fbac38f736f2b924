"""The standalone hub: ``gunicorn wsgi:app`` (settings from SSE_* environment variables)."""

from flask_sse_hub.server import create_app

app = create_app()
