"""Hypothesis strategies for fuzzing the standalone hub over raw HTTP.

Two request families, both plain data (no I/O here):

* :class:`PublishRequest` — a ``POST /publish``: the body bytes (valid events,
  near-valid ones, broken JSON, random bytes, oversize and deeply nested
  bodies), the ``Content-Type`` (or none), optional forwarding and
  ``Authorization`` headers, and the framing (``Content-Length`` or chunked).
* :class:`StreamRequest` — a ``GET /stream``: query parts (repeated, empty,
  percent-encoded junk ``channel`` values, ``lastEventId`` / ``last_event_id``)
  and an optional ``Last-Event-ID`` header. Resume ids are drawn as
  :class:`IdSpec` recipes and turned into text by the test, which knows the
  hub's epoch and which ids it handed out.

Everything a strategy draws is a valid HTTP/1.1 message: request targets use
only characters allowed in a URI and header values only visible ASCII,
obs-text, space and tab. What gunicorn itself refuses as malformed HTTP is
gunicorn's business, not the hub's, and is out of scope.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

#: Marks a field left out of an event object.
MISSING: Any = object()

#: Channels the live subscriber of the fuzz test listens to.
LIVE_CHANNELS = ("watch", "default")

def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight.

    (``st.one_of`` does not pick its branches evenly, so a weight by repetition
    there does not give the mix asked for.)
    """
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# -- text pieces ------------------------------------------------------------------

#: Characters that are special somewhere on the way: SSE line ends, NUL, JSON
#: escapes, a BOM, Unicode line separators, multi-byte and astral characters.
SPECIAL_CHARACTERS = [
    "\r", "\n", "\r\n", "\x00", "\x01", "\x7f", "\t", " ", ":", '"', "\\", "/", "%", "+",
    "\u0085", "\u2028", "\u2029", "\ufeff", "\ufffd", "é", "€", "😀", "𝄞", "data: x",
    "id: 1", "event: y", "retry: 1",
]
#: Lone surrogates: valid as JSON ``\\uXXXX`` escapes, not encodable as UTF-8.
LONE_SURROGATES = ["\ud800", "\udfff", "\udbff", "a\ud83d", "\ude00b"]

_characters = st.characters(exclude_categories=["Cs"])
_texts = st.lists(st.one_of(_characters, st.sampled_from(SPECIAL_CHARACTERS)),
                  max_size=24).map("".join)


def _rare_surrogates(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``strategy``, or now and then a lone surrogate somewhere in its text."""
    with_surrogate = st.builds(
        lambda text, surrogate, at: text[:at] + surrogate + text[at:],
        strategy, st.sampled_from(LONE_SURROGATES), st.integers(0, 24),
    )
    return st.one_of(strategy, strategy, strategy, strategy, strategy, with_surrogate)


texts = _rare_surrogates(_texts)

# -- JSON values (event data) ---------------------------------------------------------

def _scalars_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63),
        st.sampled_from([0, -1, 10**30, -(10**40), 2**53 + 1]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, -0.0, 1.0, 1e300, 5e-324, 1e16, 0.1]),
        text,
    )


def _json_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalars_of(text),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(text, children, max_size=4),
        ),
        max_leaves=8,
    )


_scalars = _scalars_of(texts)
#: Any JSON value, lone surrogates (not encodable) now and then.
json_values = _json_of(texts)
#: JSON values every hub must take as event data.
good_json_values = _json_of(_texts)

#: Units for long data: ASCII, 2-, 3- and 4-byte UTF-8, and a line end (each
#: line is a ``data:`` line of its own on the wire).
_LONG_UNITS = ["x", "é", "€", "😀", "ab\n", "\r\n", "x\r"]
#: Around SSE_MAX_EVENT_BYTES = 1024 in the test: where an id line of 64
#: characters (69 bytes) or of 1 (6 bytes) tips an event over the limit.
_LONG_TARGETS = weighted(
    (2, st.integers(800, 1150)),
    (1, st.sampled_from([1024 - 69 + n for n in (-2, -1, 0, 1, 2)])),
    (1, st.sampled_from([1024 - 6 + n for n in (-2, -1, 0, 1, 2, 6, 7)])),
)


@st.composite
def long_texts(draw: st.DrawFn) -> str:
    """Text whose encoded event lands around ``SSE_MAX_EVENT_BYTES`` (1024 in the test).

    ``target`` is the size of the ``data:`` lines plus the blank line; an
    ``event:`` or ``retry:`` line of the same event comes on top.
    """
    unit: str = draw(st.sampled_from(_LONG_UNITS))
    target: int = draw(_LONG_TARGETS)
    lines = unit.count("\n") + unit.count("\r") - unit.count("\r\n")
    per_unit = len(unit.encode()) + 5 * lines  # each line end starts a "data: " line
    count = max(1, (target - 8) // per_unit)
    text = unit * count
    while len(text.encode()) + 8 + 6 * (text.count("\n") + text.count("\r")) < target:
        text += "x"
    return text


event_data = st.one_of(json_values, json_values, json_values, long_texts(), st.just(MISSING))

# -- channel names --------------------------------------------------------------------

#: Valid (1-128 of ``A-Z a-z 0-9 _ - . : /``, docs/protocol.md#channels). Live channels come
#: up often so that accepted fuzz events are observed by the live subscriber.
VALID_CHANNELS = ["watch", "watch", "watch", "default", "fuzz", "a:b/c.d_e-f", "W" * 128, "0",
                  "WATCH", "..", "/", "-"]
INVALID_CHANNELS = [
    "", "c" * 129, "café", "wätch", "a b", "watch ", " watch", "watch\n", "a\r\nb", "\x00",
    "a;b", "a%20b", "a+b", "😀", "watch\x00", "a,b", "a\\b", "ａ",  # noqa: RUF001 - fullwidth on purpose
]

channel_names = st.one_of(
    st.sampled_from(VALID_CHANNELS),
    st.from_regex(r"[A-Za-z0-9_\-.:/]{1,12}", fullmatch=True),
    st.sampled_from(INVALID_CHANNELS),
    texts,
)
channel_values = st.one_of(
    channel_names, channel_names, channel_names, channel_names,
    st.sampled_from([MISSING, MISSING, None, 7, 1.5, True, ["watch"], {"name": "watch"}]),
)

# -- event types ------------------------------------------------------------------------

EVENT_TYPES = [
    "message", "order-created", "x" * 128, "x" * 129, "", "a\rb", "a\nb", "a\x00b", "\r",
    "sse-hub-gap", "sse-hub-", "sse-hub-anything", "SSE-HUB-gap", " sse-hub-gap", "sse-hub",
    " leading space", "trailing space ", "tab\there", "unicode-é€😀", "😀" * 64, "😀" * 65,
    "😀" * 129, "\ud800", "a\udfff", "\u2028", "\x01", "a:b", "fuzz-sentinel",
]
event_types = st.one_of(
    st.sampled_from(EVENT_TYPES),
    texts,
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"),
            min_size=1, max_size=130),
)
event_values = st.one_of(
    st.just(MISSING), st.just(MISSING), st.just(None), event_types, event_types,
    st.sampled_from([7, True, [], {}, ["a"]]),
)

# -- retry ------------------------------------------------------------------------------

retry_values = st.one_of(
    st.just(MISSING), st.just(MISSING), st.just(MISSING), st.just(None),
    st.integers(min_value=0, max_value=10**7),
    st.integers(max_value=-1),
    st.sampled_from([0, 10**30, 2**63, -1, 1.5, 1000.0, -0.0, 1e3, 2.5,
                     True, False, "1000", "", [], {}, [1000]]),
)

# -- unknown fields -------------------------------------------------------------------------

extra_fields = st.one_of(
    st.just({}), st.just({}), st.just({}), st.just({}), st.just({}),
    st.dictionaries(
        st.one_of(
            st.sampled_from(["id", "Data", "CHANNEL", "colour", "", "data ", " channel",
                             "retry_ms", "lastEventId", "type", "ids"]),
            texts,
        ),
        json_values,
        min_size=1, max_size=2,
    ),
)


def _item(channel: Any, event: Any, data: Any, retry: Any, extra: dict[str, Any]) -> dict[str, Any]:
    item = {key: value for key, value in
            (("channel", channel), ("event", event), ("data", data), ("retry", retry))
            if value is not MISSING}
    item.update(extra)
    return item


#: Events anything goes in: most of them are refused.
fuzzy_items = st.builds(_item, channel_values, event_values, event_data, retry_values,
                        extra_fields)
#: Events a right hub accepts (unless the data is too large): many go to the live channels.
good_items = st.builds(
    _item,
    st.one_of(st.sampled_from(VALID_CHANNELS), st.sampled_from(["watch", "default", MISSING]),
              st.from_regex(r"[A-Za-z0-9_\-.:/]{1,20}", fullmatch=True)),
    st.one_of(st.just(MISSING), st.just(None), st.sampled_from(["order-created", "x" * 128,
                                                                 "😀" * 64, "SSE-HUB-gap"]),
              st.text(alphabet=st.characters(exclude_categories=["Cs"],
                                             exclude_characters="\r\n\x00"),
                      min_size=1, max_size=30).filter(lambda t: not t.startswith("sse-hub-"))),
    weighted((3, good_json_values), (2, _texts), (1, long_texts())),
    st.one_of(st.just(MISSING), st.just(MISSING), st.just(None), st.integers(0, 10**9)),
    st.just({}),
)

#: Event types every hub must refuse, by reason (docs/protocol.md#event-types: no
#: CR, LF or NUL; at most 128 characters; ``sse-hub-`` is the hub's own prefix).
EVENT_TYPES_WITH_LINE_ENDS = ["a\rb", "a\nb", "a\x00b", "\r", "\n", "\x00", "end\r\n", "x\r",
                              "sse-hub-gap\n", "\r\n", "a\u0000"]
EVENT_TYPES_BAD_LENGTH = ["", "x" * 129, "😀" * 129, "😀" * 65]  # the last: Zones
RESERVED_EVENT_TYPES = ["sse-hub-gap", "sse-hub-", "sse-hub-anything", "sse-hub-ping"]
_FAULTS: dict[str, st.SearchStrategy[Any]] = {
    "channel": weighted((3, st.sampled_from(INVALID_CHANNELS)), (1, texts)),
    "channel-type": st.sampled_from([None, 7, 1.5, True, ["watch"], {"watch": 1}]),
    "event-line-end": st.sampled_from(EVENT_TYPES_WITH_LINE_ENDS),
    "event-length": st.sampled_from(EVENT_TYPES_BAD_LENGTH),
    "event-type": st.sampled_from([7, True, [], {}, ["a"], 1.5]),
    "event-reserved": st.sampled_from(RESERVED_EVENT_TYPES),
    "event-surrogate": st.sampled_from(["\ud800", "a\udfff", "\udbffx"]),
    "retry": st.one_of(st.sampled_from([-1, 1.5, 1000.0, True, False, "1000", "", [], {}]),
                       st.integers(max_value=-1)),
    "data": st.one_of(st.sampled_from(LONE_SURROGATES),
                      st.builds(lambda s: {"key": s}, st.sampled_from(LONE_SURROGATES)),
                      st.builds(lambda s: [1, s], st.sampled_from(LONE_SURROGATES))),
    "extra": st.sampled_from(["id", "id", "Data", "CHANNEL", "colour", "", "data ", "type",
                              "lastEventId", "retry_ms", "ids"]),
    "no-data": st.none(),
}


@st.composite
def one_fault_items(draw: st.DrawFn) -> dict[str, Any]:
    """A good event with exactly one thing wrong (or, by chance, nothing after all)."""
    item = dict(draw(good_items))
    fault = draw(st.sampled_from(sorted(_FAULTS)))
    value = draw(_FAULTS[fault])
    if fault.startswith("channel"):
        item["channel"] = value
    elif fault.startswith("event"):
        item["event"] = value
    elif fault == "extra":
        item[value] = draw(json_values)
    elif fault == "no-data":
        item.pop("data", None)
    else:
        item[fault] = value
    return item


event_items = weighted((5, good_items), (4, one_fault_items()), (1, fuzzy_items))


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    """An event whose data is nested deep, up to what a 4 KiB body can hold.

    Written as bytes: Python's own ``json`` cannot encode (nor always decode)
    what is nested deeper than its recursion limit, which is part of the point.
    """
    depth: int = draw(weighted((2, st.integers(1, 200)), (1, st.integers(900, 1010)),
                               (1, st.integers(1, 2040))))
    leaf = draw(st.sampled_from([b"[]", b"{}", b"1", b'"x"']))
    opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    channel = draw(st.sampled_from([b"watch", b"fuzz"]))
    return (b'{"channel":"' + channel + b'","data":' + opening * depth + leaf + closing * depth
            + b"}")


@st.composite
def batches_with_one_fault(draw: st.DrawFn) -> list[Any]:
    """Good events and one bad one somewhere: the whole batch must be refused."""
    items = draw(st.lists(good_items, min_size=1, max_size=4))
    items.insert(draw(st.integers(0, len(items))), draw(one_fault_items()))
    return items


body_values = weighted(
    (8, good_items),
    (8, one_fault_items()),
    (2, fuzzy_items),
    (2, st.lists(good_items, min_size=1, max_size=6)),
    (1, batches_with_one_fault()),
    (1, st.lists(event_items, min_size=0, max_size=6)),
    (1, st.lists(st.lists(event_items, max_size=2), min_size=1, max_size=2)),
    (1, _scalars),
)

# -- body bytes -----------------------------------------------------------------------------

JUNK_BODIES = [
    b"", b" ", b"{", b"[", b"}", b"null", b"{}", b"[]", b"[[]]", b"[{}]", b"true", b'""',
    b'{"data":NaN}', b'{"data":Infinity}', b'{"data":-Infinity}', b'{"data":1e400}',
    b"{'data': 1}", b'{"data":1}garbage', b'{"data":1} {"data":2}', b'{"data":01}',
    b'{"data":.5}', b'{"data":1,}', b'{"data":"\\x41"}', b'{"data":"\\u12"}',
    b'{"data":"\\ud800"}', b'{"data":"a\x01b"}', b'{"data":"\xff"}', b'{"data":"\xed\xa0\x80"}',
    b'{"data":"\xc3\x28"}', b'\xef\xbb\xbf{"data":1}', b'{"data":1,"data":2}',
    b'{"channel":"bad name","channel":"watch","data":"dup keys"}', b"\x00",
    b'{"data": 1, "retry": 1e2}', b'{"data": 1, "retry": 1.0}', b'{"data": 1, "retry": -0}',
    b'{"data":' + b"1" * 400 + b"}", b'{"data": 1, "retry": ' + b"9" * 300 + b"}",
    b'{"data":1}\x00', b"\t\r\n {\"data\":\"ws\"} \t\r\n",
    '{"data":1}'.encode("utf-16"), '{"data":2}'.encode("utf-16-le"),
    '{"channel":"watch","data":"utf-32"}'.encode("utf-32"),
    b"[" * 3000 + b"]" * 3000, b'{"a":' * 900 + b"1" + b"}" * 900,
]


def _serialize(value: Any, ensure_ascii: bool, style: int) -> bytes:
    separators = [(",", ":"), (", ", ": "), (" , ", " : ")][style % 3]
    text = json.dumps(value, ensure_ascii=ensure_ascii, separators=separators,
                      indent=2 if style == 3 else None)
    # Lone surrogates (ensure_ascii=False) go out as their 3-byte forms: not UTF-8.
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body``, or a near miss of it: cut, a byte changed, re-encoded, padded."""
    kind = draw(st.sampled_from(range(17)))
    if kind <= 8 or not body:
        return body
    at = draw(st.integers(0, len(body)))
    if kind == 9:
        return body[:at]
    if kind == 10:
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1:]
    if kind == 11:
        return body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at:]
    if kind == 12:
        return b"\xef\xbb\xbf" + body
    if kind == 13:
        try:
            return body.decode("utf-8").encode(draw(st.sampled_from(["utf-16", "utf-16-be"])))
        except UnicodeError:
            return body
    if kind == 14:  # pad with JSON whitespace to around SSE_MAX_PUBLISH_BYTES (4096)
        target = draw(st.sampled_from([4095, 4096, 4097, 4098, 4100]))
        return body + b" " * max(0, target - len(body))
    if kind == 15:
        return b"[" + body + b"]"
    return body + b" " * draw(st.integers(4096, 3 * 4096))


@st.composite
def publish_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(range(21)))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return draw(st.sampled_from(JUNK_BODIES))
    if kind == 2:
        return draw(deep_bodies())
    value = draw(body_values)
    body = _serialize(value, draw(st.booleans()), draw(st.integers(0, 3)))
    return draw(mutated(body))


# -- headers ----------------------------------------------------------------------------

JSON_CONTENT_TYPES = [
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "application/json;charset=UTF-8", "APPLICATION/JSON", "Application/Json ; charset=\"utf-8\"",
    "application/json;", "application/json; charset", "application/json; foo=bar; baz",
]
OTHER_CONTENT_TYPES = [
    None, "", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "text/json", "application/jsonx", "application/json5",
    "application/vnd.api+json", "application/json, text/plain", "json", "*/*", ";",
    "application/javascript", "application/xml", "text/event-stream",
]
#: Header values gunicorn passes on: visible ASCII, obs-text, space, tab.
header_text = st.text(
    alphabet=st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                       st.characters(min_codepoint=0x80, max_codepoint=0xFF),
                       st.just("\t")),
    max_size=40,
)
#: What a cross-site HTML form or a "simple" fetch can send (no CORS preflight):
#: these MUST be refused (415), or any web page could publish.
SIMPLE_CONTENT_TYPES = [None, "text/plain", "text/plain;charset=UTF-8",
                        "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
content_types = weighted(
    (12, st.just("application/json")),
    (5, st.sampled_from(JSON_CONTENT_TYPES)),
    (2, st.sampled_from(SIMPLE_CONTENT_TYPES)),
    (1, st.sampled_from(OTHER_CONTENT_TYPES)),
    (1, st.builds(lambda params: "application/json;" + params, header_text)),
    (1, header_text),
)

#: Headers a proxy adds (README: a publish carrying one is not from loopback).
FORWARDING_HEADERS = ["X-Forwarded-For", "Forwarded", "X-Real-IP", "x-forwarded-for"]
#: Look-alikes that are not among them.
OTHER_HEADERS = ["X-Forwarded-Host", "X-Forwarded-Proto", "Via", "X-Client-IP"]

extra_headers = st.one_of(
    st.just(()), st.just(()), st.just(()), st.just(()), st.just(()), st.just(()),
    st.lists(
        st.tuples(st.sampled_from(FORWARDING_HEADERS + OTHER_HEADERS + ["Authorization"]),
                  st.one_of(st.sampled_from(["203.0.113.7", "127.0.0.1", "for=1.2.3.4",
                                             "Bearer x", "Bearer", ""]), header_text)),
        min_size=1, max_size=2,
    ).map(tuple),
)


@dataclass(frozen=True)
class PublishRequest:
    """One raw ``POST /publish``."""

    body: bytes
    content_type: str | None
    headers: tuple[tuple[str, str], ...] = ()
    #: ``None``: Content-Length framing; else the sizes of the chunks (the last repeats).
    chunks: tuple[int, ...] | None = None

    def encode(self, host: str) -> bytes:
        lines = ["POST /publish HTTP/1.1", f"Host: {host}"]
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.chunks is None:
            lines.append(f"Content-Length: {len(self.body)}")
            payload = self.body
        else:
            lines.append("Transfer-Encoding: chunked")
            payload = _chunked(self.body, self.chunks)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _chunked(body: bytes, sizes: tuple[int, ...]) -> bytes:
    out = []
    at = 0
    index = 0
    while at < len(body):
        size = max(1, sizes[min(index, len(sizes) - 1)])
        piece = body[at: at + size]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        at += size
        index += 1
    return b"".join(out) + b"0\r\n\r\n"


_chunk_sizes = st.one_of(st.none(), st.none(), st.none(),
                        st.lists(st.integers(1, 3000), min_size=1, max_size=4).map(tuple))


@st.composite
def publish_requests(draw: st.DrawFn) -> PublishRequest:
    content_type = draw(content_types)
    if content_type in SIMPLE_CONTENT_TYPES and draw(st.booleans()):
        # A well-formed event under a type a cross-site form can send: the
        # interesting case for the 415 rule.
        body = _serialize(draw(good_items), draw(st.booleans()), 0)
    else:
        body = draw(publish_bodies())
    return PublishRequest(body=body, content_type=content_type, headers=draw(extra_headers),
                          chunks=draw(_chunk_sizes))


# -- GET /stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdSpec:
    """How to make a resume id once the hub's state is known.

    ``kind``: ``known`` (an id the hub handed out, picked by ``fraction``),
    ``zero`` (``<epoch>-0``, the position before the first event), ``ahead``
    (``<epoch>-<last+n>``, never handed out), ``zeros`` (a known id written
    with leading zeros), ``foreign`` (another epoch), ``text`` (``text``
    verbatim: garbage, empty, control characters).
    """

    kind: str
    fraction: float = 0.0
    number: int = 0
    text: str = ""


id_specs = st.one_of(
    st.builds(IdSpec, kind=st.just("known"), fraction=st.floats(0, 1)),
    st.builds(IdSpec, kind=st.just("known"), fraction=st.just(1.0)),
    st.just(IdSpec("zero")),
    st.builds(IdSpec, kind=st.just("ahead"), number=st.integers(1, 10**20)),
    st.builds(IdSpec, kind=st.just("zeros"), fraction=st.floats(0, 1), number=st.integers(1, 3)),
    st.builds(IdSpec, kind=st.just("foreign"), number=st.integers(0, 10**6)),
    st.builds(IdSpec, kind=st.just("text"), text=st.one_of(
        texts, st.sampled_from(["", " ", "-", "0", "-1", "abc-", "-5", "x" * 65, "null",
                                "deadbeef-1", "1", "%", "\x00"]))),
)

#: URL characters that may stay literal in a query value (no ``&``, ``=``, ``+``, ``#``).
_QUERY_SAFE = ["", "-._~", ":/@!$'()*,;", "-._~:/@!$'()*,;"]
QUERY_JUNK = ["", "&", "&&", "=", "==", "%", "%%", "%zz", "%0", "%FF", "%C3%28", "%ED%A0%80",
              "%00", "+", "channel", "channel=", "=watch", "Channel=watch", "CHANNEL=x",
              "channel[]=watch", "lastEventID=1", "Last-Event-ID=1", "chan%6Eel=watch",
              "channel=watch%26channel%3Dfuzz", "channel=%77atch", "channel=wat+ch", "?", "/"]


@dataclass(frozen=True)
class QueryPart:
    """``key=value`` (both already percent-encoded), a resume id to make, or raw junk."""

    key: str
    value: str | None = None
    id_spec: IdSpec | None = None
    safe: str = ""


def _encode_channel(name: str, safe: str, key: str) -> QueryPart:
    return QueryPart(key=key, value=quote(name, safe=safe, errors="surrogatepass"))


channel_keys = st.sampled_from(["channel", "channel", "channel", "%63hannel", "ch%61nnel"])
channel_parts = st.builds(_encode_channel, channel_names, st.sampled_from(_QUERY_SAFE),
                          channel_keys)
id_parts = st.builds(
    lambda key, spec, safe: QueryPart(key=key, id_spec=spec, safe=safe),
    st.sampled_from(["lastEventId", "last_event_id"]), id_specs, st.sampled_from(_QUERY_SAFE),
)
junk_parts = st.builds(lambda raw: QueryPart(key=raw), st.sampled_from(QUERY_JUNK))


@dataclass(frozen=True)
class StreamRequest:
    """One raw ``GET /stream``: query parts and an optional ``Last-Event-ID`` header."""

    parts: tuple[QueryPart, ...]
    header: IdSpec | None = None
    #: Spaces/tabs around the header value (HTTP's optional whitespace).
    header_padding: tuple[str, str] = ("", "")


#: Several valid channels, around SSE_MAX_CHANNELS (4 in the test), some repeated.
many_channels = st.lists(
    st.builds(_encode_channel, st.sampled_from(["watch", "default", "a", "b", "c:d", "e/f", "g"]),
              st.just(""), st.just("channel")),
    min_size=3, max_size=8,
)
stream_requests = st.builds(
    StreamRequest,
    parts=weighted(
        (3, st.lists(weighted((3, channel_parts), (1, id_parts), (1, junk_parts)), max_size=7)),
        (1, st.builds(lambda channels, ids: [*channels, *ids], many_channels,
                      st.lists(id_parts, max_size=2))),
    ).map(tuple),
    header=st.one_of(st.none(), st.none(), id_specs),
    header_padding=st.tuples(st.sampled_from(["", " ", "\t "]), st.sampled_from(["", " \t"])),
)
