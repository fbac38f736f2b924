"""The Redis backend's pure pieces: ids, page contiguity, entry decoding, URL and version checks.

The behaviour against a real redis-server is in tests/integration/redis/; this
file covers the decisions those tests cannot reach one by one (every id shape,
every page head), and the version refusal, for which no old Redis can be
installed here: a socket server that answers ``INFO`` like Redis 6.0 does.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("redis")

from flask_sse_hub.backends.redis import (
    RedisBackend,
    _decode_entry,
    _is_stream_id,
    _Page,
    _previous_id,
    check_version,
    neutralise_url,
)
from flask_sse_hub.config import HubConfig
from flask_sse_hub.errors import ConfigError

U64 = 2**64 - 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-0", True), ("1-0", True), ("1700000000000-5", True), (f"{U64}-{U64}", True),
        (f"{U64 + 1}-0", False), ("007-1", False), ("1-01", False), ("1", False), ("-1", False),
        ("1-", False), ("a-b", False), ("1-2-3", False), ("", False), ("1 -2", False),
    ],
)
def test_only_canonical_stream_ids_are_positions(value: str, expected: bool) -> None:
    # "007-1" is what Redis would read as 7-1: an id the hub never issued.
    assert _is_stream_id(value) is expected


@pytest.mark.parametrize(
    ("value", "previous"),
    [("5-3", "5-2"), ("5-0", f"4-{U64}"), ("1-0", f"0-{U64}"), ("0-1", "0-0"), ("0-0", "0-0")],
)
def test_the_previous_id_leaves_no_room_for_an_entry(value: str, previous: str) -> None:
    assert _previous_id(value) == previous


def page(start: str, head: str | None, head_n: int | None = None) -> _Page:
    return _Page(start, head, head_n, head, True, [])


@pytest.mark.parametrize(
    ("after", "head", "head_n", "upto", "follows"),
    [
        ("5-3", "5-3", 9, "9-0", True),  # the client's own event is still there
        ("5-3", "5-4", 9, "9-0", True),  # nothing can lie between: a gap position
        ("4-99", "5-0", 9, "9-0", False),  # 4-100 ... may have been trimmed
        ("5-3", "6-0", 9, "9-0", False),
        ("0-0", "1-0", 1, "9-0", True),  # the very first entry ever
        ("0-0", "1-0", 2, "9-0", False),  # entry n=1 was trimmed
        ("0-0", "1-0", None, "9-0", False),  # a foreign head proves nothing
        ("7-0", None, None, "7-0", True),  # resuming from the hub's own position
        ("6-0", None, None, "7-0", False),  # nothing left between: it was trimmed
    ],
)
def test_a_page_follows_a_position_only_when_nothing_can_be_missing(
    after: str, head: str | None, head_n: int | None, upto: str, follows: bool,
) -> None:
    assert page(after, head, head_n).follows(after, upto) is follows


def test_page_replies_are_parsed_with_their_unreadable_entries() -> None:
    reply = [b"5-1", b"7", b"5-4", 1, b"5-1", b"id-less body\n\n", b"5-3", None]
    parsed = _Page.parse("5-1", reply)
    assert parsed == _Page("5-1", "5-1", 7, "5-4", True, [
        ("5-1", b"id-less body\n\n"), ("5-3", None),
    ])
    empty = _Page.parse("5-1", [None, None, None, 1])
    assert empty.head is None and empty.cursor is None and empty.complete and not empty.items


@pytest.mark.parametrize(
    ("fields", "decoded"),
    [
        ({b"c": b"orders", b"b": b"data: 1\n\n", b"n": b"12"}, ("orders", b"data: 1\n\n", 12)),
        ({b"c": b"orders", b"b": b"data: 1\n\n"}, ("orders", b"data: 1\n\n", None)),
        ({b"c": b"orders", b"b": b"data: 1\n\n", b"n": b"x"}, ("orders", b"data: 1\n\n", None)),
        ({b"foo": b"bar"}, None),
        ({b"c": b"orders"}, None),
        ({b"c": b"no such\nchannel", b"b": b"data: 1\n\n"}, None),
        ({b"c": b"\xff\xfe", b"b": b"data: 1\n\n"}, None),
        ({b"c": b"orders", b"b": b"data: no end"}, None),  # would swallow the next event
    ],
)
def test_only_entries_the_hub_wrote_decode_as_events(
    fields: dict[bytes, bytes], decoded: tuple[str, bytes, int | None] | None,
) -> None:
    assert _decode_entry(fields) == decoded


def test_options_that_change_reply_types_are_removed_from_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_sse_hub"):
        url = neutralise_url("redis://:pw@h:1/2?decode_responses=true&socket_keepalive=1&protocol=3")
    assert url == "redis://:pw@h:1/2?socket_keepalive=1"
    assert "decode_responses" in caplog.text and "protocol" in caplog.text
    assert neutralise_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.parametrize(
    ("found", "refused"),
    [("7.0.15", False), ("6.2.0", False), ("10.1", False), ("6.0.16", True), ("5.0.14", True)],
)
def test_redis_versions_before_6_2_are_refused_with_the_version_found(
    found: str, refused: bool,
) -> None:
    problem = check_version(found)
    assert (problem is not None) is refused
    if problem is not None:
        assert found in problem and "6.2" in problem


@pytest.fixture
def redis_6_0() -> Iterator[int]:
    """A socket server that answers every command as Redis 6.0.16 answers INFO."""
    listener = socket.create_server(("127.0.0.1", 0))
    info = b"# Server\r\nredis_version:6.0.16\r\nrun_id:abc\r\n"
    reply = b"$%d\r\n%s\r\n" % (len(info), info)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()


def test_a_redis_too_old_refuses_the_hub_at_start(redis_6_0: int) -> None:
    needs = r"Redis 6\.0\.16 found; flask-sse-hub needs Redis >= 6\.2"
    with pytest.raises(ConfigError, match=needs):
        RedisBackend(f"redis://127.0.0.1:{redis_6_0}/0", history_size=10, timeout=1.0)


def test_an_unreachable_redis_at_start_is_no_refusal(free_port: Callable[[], int]) -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", history_size=10, timeout=0.5)
    assert backend.healthy() is False


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:26379", (("127.0.0.1", 26379),)),
        ("a:1, b:2,a:1", (("a", 1), ("b", 2))),
        (["[::1]:26379"], (("::1", 26379),)),
        ("", ()),
    ],
)
def test_sentinel_addresses_are_parsed(value: object, parsed: tuple[tuple[str, int], ...]) -> None:
    assert HubConfig.from_mapping({"SSE_REDIS_SENTINELS": value}).redis_sentinels == parsed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SSE_REDIS_SENTINELS", "host-without-port"), ("SSE_REDIS_SENTINELS", "h:0"),
        ("SSE_REDIS_SENTINELS", "h:99999"), ("SSE_REDIS_SENTINELS", 5),
        ("SSE_REDIS_SENTINEL_MASTER", "two words"), ("SSE_REDIS_SENTINEL_MASTER", ""),
        ("SSE_REDIS_MIN_REPLICAS", -1), ("SSE_REDIS_MIN_REPLICAS", "one"),
        ("SSE_REDIS_TIMEOUT", 0), ("SSE_REDIS_TIMEOUT", "soon"),
    ],
)
def test_bad_redis_settings_are_config_errors_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        HubConfig.from_mapping({key: value})
