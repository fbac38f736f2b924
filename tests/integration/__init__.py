"""Integration tests: the real ``gunicorn`` (gevent worker) driven over real sockets."""
