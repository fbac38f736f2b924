"""A Python listener that knows the hub's resume protocol: ``pip install 'flask-sse-hub[client]'``.

::

    from flask_sse_hub.client import listen

    for event in listen("https://hub.example.com/stream", channels=["orders"]):
        if event.is_gap:
            resync()            # the hub could not give what was missed
        else:
            handle(event.json())

:func:`listen` reconnects by itself like a browser's ``EventSource`` does,
and does what one cannot be relied on to do:

* it resumes with the last id it saw, the hub's position record included
  (a stream ended before its first event still resumes where it started);
* it honours ``retry:`` as the reconnect delay, and backs off with jitter
  (doubling up to :data:`MAX_BACKOFF`) while connecting fails;
* it yields ``sse-hub-gap`` and ``sse-hub-disconnect`` as :class:`Gap` and
  :class:`Disconnected`, never the position record or heartbeats;
* it stops for good (:class:`Refused`) on 400, 401, 403 and 404 — a
  revoked client must not hammer the hub — and retries everything else.

Built on httpx (the connection) and httpx-sse (the line parsing); the
protocol it follows: docs/protocol.md#stream.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

try:
    import httpx
    from httpx_sse import EventSource, SSEError
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "flask_sse_hub.client needs httpx and httpx-sse: pip install 'flask-sse-hub[client]'"
    ) from exc

from .wire import DISCONNECT_EVENT_TYPE, GAP_EVENT_TYPE, POSITION_EVENT_TYPE

#: The longest wait between two failed connection attempts, in seconds.
MAX_BACKOFF = 30.0
#: Statuses after which a browser's EventSource stops, and so does the listener.
FINAL_STATUSES = frozenset({400, 401, 403, 404})


@dataclass(frozen=True)
class ServerEvent:
    """One event as a WHATWG client dispatches it."""

    type: str
    data: str
    id: str | None

    def json(self) -> Any:
        """``data`` decoded as JSON (the hub sends non-text data as compact JSON)."""
        return json.loads(self.data)

    @property
    def is_gap(self) -> bool:
        """The hub could not give every event since the resume id (docs/protocol.md#gap)."""
        return False

    @property
    def is_disconnect(self) -> bool:
        """The hub ended this stream on demand; the listener reconnects unless told not to."""
        return False


@dataclass(frozen=True)
class Gap(ServerEvent):
    """``sse-hub-gap``: events after ``last_event_id`` are not available to this stream."""

    @property
    def is_gap(self) -> bool:
        return True

    @property
    def last_event_id(self) -> str | None:
        """The last id the client had before the events it cannot get."""
        found = self.json().get("last_event_id")
        return found if isinstance(found, str) else None


@dataclass(frozen=True)
class Disconnected(ServerEvent):
    """``sse-hub-disconnect``: the stream was ended by ``hub.disconnect()``."""

    @property
    def is_disconnect(self) -> bool:
        return True


class Refused(Exception):
    """The hub refused the stream for good (400, 401, 403, 404): the listener stopped."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class Listener:
    """The state of one :func:`listen`: iterate it for events, :meth:`close` it to stop."""

    def __init__(
        self, url: str, *, channels: Iterable[str] = (), last_event_id: str | None = None,
        token: str | None = None, stop_on_disconnect: bool = False,
        timeout: float = 10.0, client: httpx.Client | None = None,
        on_reconnect: Callable[[Listener, float], None] | None = None,
    ) -> None:
        self.url = _with_channels(url, channels)
        #: The id the next connection resumes from.
        self.last_event_id = last_event_id
        #: The reconnect delay (ms) the hub asked for with ``retry:``.
        self.retry_ms = 2000
        #: Connections made after the first, and the reason of the last reconnect.
        self.reconnects = 0
        self.last_error: str | None = None
        self._token = token
        self._stop_on_disconnect = stop_on_disconnect
        self._on_reconnect = on_reconnect
        self._own_client = client is None
        # A read timeout above the hub's heartbeat (15 s by default) would
        # never fire on a healthy stream; a dead one is noticed within it.
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, read=max(timeout, 45.0)),
        )
        self._closed = False

    def __iter__(self) -> Iterator[ServerEvent]:
        failures = 0
        try:
            while not self._closed:
                try:
                    for event in self._connect():
                        failures = 0
                        yield event
                        if event.is_disconnect and self._stop_on_disconnect:
                            return
                    self.last_error = "the stream ended"
                except (httpx.HTTPError, SSEError, _Retry) as exc:
                    failures += 1
                    self.last_error = str(exc) or type(exc).__name__
                if self._closed:
                    return
                self._wait(failures)
                self.reconnects += 1
        finally:
            self.close()

    def close(self) -> None:
        """Stop listening (from any thread); the iteration ends."""
        self._closed = True
        if self._own_client:
            self._client.close()

    def _connect(self) -> Iterator[ServerEvent]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        with self._client.stream("GET", self.url, headers=headers) as response:
            if response.status_code in FINAL_STATUSES:
                response.read()
                raise Refused(response.status_code, _reason(response))
            if response.status_code != 200:
                response.read()
                raise _Retry(f"{response.status_code}: {_reason(response)}")
            connection_id = ""  # httpx-sse's last event id: it carries over to later blocks
            for sse in EventSource(response).iter_sse():
                if sse.retry is not None:
                    self.retry_ms = sse.retry
                new_id = sse.id != connection_id
                connection_id = sse.id
                if sse.id:
                    self.last_event_id = sse.id
                if sse.event == POSITION_EVENT_TYPE:
                    continue  # where the stream starts: an id to keep, not an event
                if not sse.data and not new_id and sse.event == "message":
                    # A block without data (e.g. only ``retry:``), which httpx-sse
                    # reports and a WHATWG client does not; every published event
                    # comes with an id of its own.
                    continue
                kind = _TYPES.get(sse.event, ServerEvent)
                # As a WHATWG lastEventId: the last id seen, an event without one included.
                yield kind(sse.event, sse.data, sse.id or None)

    def _wait(self, failures: int) -> None:
        """The hub's ``retry`` after a clean end; doubling, jittered, after failures."""
        delay = self.retry_ms / 1000
        if failures > 1:
            delay = min(MAX_BACKOFF, delay * 2 ** (failures - 1))
        if failures:
            delay *= random.uniform(0.8, 1.2)
        if self._on_reconnect is not None:
            self._on_reconnect(self, delay)
        time.sleep(delay)


class _Retry(Exception):
    """An answer worth trying again later (429, 5xx, not an event stream)."""


_TYPES: dict[str, type[ServerEvent]] = {
    GAP_EVENT_TYPE: Gap, DISCONNECT_EVENT_TYPE: Disconnected,
}


def listen(
    url: str, channels: Iterable[str] = (), last_event_id: str | None = None,
    token: str | None = None, **options: Any,
) -> Listener:
    """Follow ``channels`` of the hub at ``url`` (its stream URL), across reconnects.

    Iterate the result for :class:`ServerEvent` (:class:`Gap`,
    :class:`Disconnected`); ``token`` is sent as a bearer token. Options:
    ``stop_on_disconnect`` (end after ``sse-hub-disconnect`` instead of
    reconnecting), ``timeout`` (connect, seconds), ``client`` (your
    ``httpx.Client``), ``on_reconnect(listener, delay)`` (called before
    each wait; ``listener.last_error`` says why). Raises :class:`Refused`
    when the hub refuses for good.
    """
    return Listener(url, channels=channels, last_event_id=last_event_id, token=token, **options)


def _with_channels(url: str, channels: Iterable[str]) -> str:
    names = list(channels)
    if not names:
        return url
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode([("channel", c) for c in names])]))
    return urlunsplit(parts._replace(query=query))


def _reason(response: httpx.Response) -> str:
    try:
        found = response.json().get("error")
    except (ValueError, AttributeError):
        found = None
    return str(found) if found else response.reason_phrase or "refused"


# -- flask-sse-hub tail ----------------------------------------------------------------------

#: Exit statuses of ``flask-sse-hub tail``.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def tail_command() -> Any:
    """The ``tail`` command (click), built on first use."""
    import click

    @click.command(name="tail", context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("url")
    @click.option("--channel", "-c", "channels", multiple=True, help="a channel (repeat)")
    @click.option("--last-event-id", help="resume after this id")
    @click.option("--token", envvar="SSE_TOKEN", help="bearer token (or $SSE_TOKEN)")
    @click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
    @click.option("--count", type=click.IntRange(min=1), help="exit 0 after this many events")
    def tail(
        url: str, channels: tuple[str, ...], last_event_id: str | None, token: str | None,
        as_json: bool, count: int | None,
    ) -> None:
        """Print the events of URL (a hub's stream URL) as they come, across reconnects.

        One line per event: id, type and data, tab-separated (or --json).
        Reconnects are noted on stderr. Exit status: 0 after --count events
        or on Ctrl-C (SIGINT) or SIGTERM, 3 when the hub refuses the stream (400/401/403/404),
        1 on other errors.
        """
        def reconnecting(listener: Listener, delay: float) -> None:
            click.echo(
                f"# {listener.last_error}; reconnecting in {delay:.1f} s, after "
                f"{listener.last_event_id or 'the start'}", err=True,
            )

        # Ctrl-C and SIGTERM end it cleanly, even when started with SIGINT
        # ignored (as a shell's background job is).
        before = {
            number: signal.signal(number, signal.default_int_handler)
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        listener = listen(url, channels, last_event_id, token, on_reconnect=reconnecting)
        printed = 0
        try:
            for event in listener:
                click.echo(_tail_line(event, as_json))
                printed += 1
                if count is not None and printed >= count:
                    break
        except Refused as exc:
            click.echo(f"# refused: {exc}", err=True)
            raise SystemExit(EXIT_REFUSED) from None
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()
            for number, handler in before.items():
                signal.signal(number, handler)

    return tail


def _tail_line(event: ServerEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps({"id": event.id, "type": event.type, "data": event.data})
    # One line per event whatever its data: newlines as \n.
    data = event.data.replace("\\", "\\\\").replace("\n", "\\n")
    return f"{event.id or '-'}\t{event.type}\t{data}"
