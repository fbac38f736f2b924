"""Every README.md code block that can run is run, so the README cannot drift.

The blocks are extracted from README.md (fenced, indented ones included) and
each must be claimed by exactly one entry of :data:`KINDS`, which names the
test that exercises it; a new, changed or removed block fails
:func:`test_every_readme_block_is_claimed_by_exactly_one_test` until a test
handles it. Here, through Flask's test client and plain tooling:

* the ``python`` library example, written to a module and imported: its view
  answers 201 with an event id a subscriber receives, its ``@sse.authorize``
  refuses ``admin…`` channels with 403;
* the PyJWT snippet (given only ``SSE_JWT_SECRET``): its token subscribes and
  publishes exactly what its ``sse`` claim says on a hub with that secret;
* the ``js`` blocks: ``node --check`` (syntax), and the stream path and event
  name match the library example;
* the ``nginx`` blocks: parsed (balanced blocks, statements ended), buffering
  off and the read timeout on the stream location; not run;
* the Sentinel command: its settings exist and its ``SSE_REDIS_SENTINELS`` is
  ``host:port,...``; not run (it needs a master, replicas and three Sentinels);
* the layout block: every file it names exists;
* every ``SSE_*`` name in any block is a real setting, every ``[extra]`` in
  ``pip install 'flask-sse-hub[...]'`` exists in setup.cfg.

The ``sh`` blocks run elsewhere against real processes:
``tests/integration/test_readme_commands.py`` (``make run`` + the ``curl``
commands, the Redis command) and ``tests/integration/test_installed.py`` (the
"From PyPI" commands in a fresh virtualenv).
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from flask import Flask

import flask_sse_hub
from flask_sse_hub import SSEBlueprint
from flask_sse_hub.config import DEFAULTS
from tests.support.flask_stream import OpenStream

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
#: Every document whose code blocks are run or checked here: the front page and docs/.
DOCUMENTS = (README, *(REPO_ROOT / "docs" / name for name in (
    "security.md", "deployment.md", "operations.md", "clients.md",
)))
EVENT_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    lang: str
    text: str  # without the fence's indentation
    line: int  # of the opening fence, 1-based
    source: str = "README.md"

    def __str__(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"{self.source}:{self.line} ```{self.lang} ({first[:50]!r})"


def readme_blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of every document (or of ``text``), in order."""
    if text is not None:
        return _blocks(text, "README.md")
    return [
        block for path in DOCUMENTS
        for block in _blocks(path.read_text(), str(path.relative_to(REPO_ROOT)))
    ]


def _blocks(text: str, source: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, start = len(opening["indent"]), index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            line = lines[index]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            index += 1
        assert index < len(lines), f"{source}:{start + 1}: code block never closed"
        blocks.append(Block(opening["lang"], "\n".join(body) + "\n", start + 1, source))
        index += 1
    return blocks


def _sh(*needles: str, without: str = "") -> Callable[[Block], bool]:
    return lambda block: (block.lang == "sh" and all(n in block.text for n in needles)
                          and not (without and without in block.text))


#: What each README block is, and the test that runs (or checks) it.
KINDS: dict[str, tuple[Callable[[Block], bool], str]] = {
    "checkout commands": (
        _sh("make run", "make test"),
        "tests/integration/test_readme_commands.py::test_make_run_then_the_curl_commands"),
    "from PyPI": (
        _sh("pip install flask-sse-hub", "python:flask_sse_hub.gunicorn_config"),
        "tests/integration/test_installed.py::test_readme_from_pypi_commands_run_as_written"),
    "curl subscribe and publish": (
        _sh("curl -N", "curl -X POST"),
        "tests/integration/test_readme_commands.py::test_make_run_then_the_curl_commands"),
    "library example": (
        lambda b: b.lang == "python" and "register_blueprint(sse" in b.text,
        "test_library_example_runs_as_written"),
    "JWT minting": (
        lambda b: b.lang == "python" and "jwt.encode(" in b.text,
        "test_jwt_snippet_mints_a_token_the_hub_accepts"),
    "browser EventSource": (
        lambda b: b.lang == "js" and "fetchNewToken" not in b.text,
        "test_js_blocks_are_valid_javascript_for_the_library_example"),
    "browser token refresh": (
        lambda b: b.lang == "js" and "fetchNewToken" in b.text,
        "test_js_blocks_are_valid_javascript_for_the_library_example"),
    "nginx, one hub": (
        lambda b: b.lang == "nginx" and "upstream" not in b.text,
        "test_nginx_blocks_parse"),
    "nginx, several hubs": (
        lambda b: b.lang == "nginx" and "upstream" in b.text,
        "test_nginx_blocks_parse"),
    "Redis workers": (
        _sh("flask-sse-hub[redis]", "SSE_REDIS_URL=", "WEB_CONCURRENCY=",
            without="SSE_REDIS_SENTINELS"),
        "tests/integration/test_readme_commands.py::test_the_redis_command_serves_four_workers"),
    "Redis Sentinel": (
        _sh("SSE_REDIS_SENTINELS=", "flask-sse-hub"),
        "test_sentinel_command_names_real_settings (not run: needs Sentinels)"),
    "layout": (
        lambda b: b.lang == "" and "flask_sse_hub/" in b.text and "wsgi.py" in b.text,
        "test_layout_block_names_files_that_exist"),
    "metrics view": (
        lambda b: b.lang == "python" and "sse.metrics_view" in b.text,
        "test_operations_blocks_run_against_an_app"),
    "demo view": (
        lambda b: b.lang == "python" and "sse.demo_view" in b.text,
        "test_operations_blocks_run_against_an_app"),
    "presence calls": (
        lambda b: b.lang == "python" and "hub.occupancy(" in b.text,
        "test_operations_blocks_run_against_an_app"),
    "identify": (
        lambda b: b.lang == "python" and "@sse.identify" in b.text,
        "test_operations_blocks_run_against_an_app"),
    "disconnect calls": (
        lambda b: b.lang == "python" and "hub.disconnect(subject=" in b.text,
        "test_operations_blocks_run_against_an_app"),
    "python listener": (
        lambda b: b.lang == "python" and "from flask_sse_hub.client import listen" in b.text,
        "test_client_blocks_use_what_exists"),
    "tail commands": (
        _sh("flask-sse-hub tail"),
        "test_client_blocks_use_what_exists"),
    "sse-hub.js page": (
        lambda b: b.lang == "html" and "SSEHubSource" in b.text,
        "test_client_blocks_use_what_exists"),
}


def readme_block(kind: str) -> Block:
    """The one README block of ``kind`` (a key of :data:`KINDS`)."""
    matches = [block for block in readme_blocks() if KINDS[kind][0](block)]
    assert len(matches) == 1, f"{len(matches)} blocks of kind {kind!r}: " + ", ".join(
        map(str, matches))
    return matches[0]


def test_every_readme_block_is_claimed_by_exactly_one_test() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= len(KINDS)
    problems = []
    for block in blocks:
        kinds = [kind for kind, (matches, _) in KINDS.items() if matches(block)]
        if len(kinds) != 1:
            problems.append(f"{block}: claimed by {kinds or 'no test'} (see KINDS)")
    for kind, (matches, test) in KINDS.items():
        count = sum(1 for block in blocks if matches(block))
        if count != 1:
            problems.append(f"{kind!r} ({test}) matches {count} blocks, not 1")
    assert not problems, "\n".join(problems)


def test_the_extractor_sees_indented_blocks() -> None:
    text = "a\n\n* item\n\n  ```js\n  let x = 1;\n    y();\n  ```\n\n```\nplain\n```\n"
    assert readme_blocks(text) == [Block("js", "let x = 1;\n  y();\n", 5),
                                   Block("", "plain\n", 10)]


# -- python ---------------------------------------------------------------------------


def _import_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # Flask(__name__) finds its root
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def readme_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The library example imported from a file; the shared ``sse`` blueprint restored after."""
    # The example decorates the package's own ``sse`` blueprint: keep that out of other tests.
    monkeypatch.setattr(flask_sse_hub.sse, "_authorizers", [])
    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    path = tmp_path / "readme_library_example.py"
    path.write_text(readme_block("library example").text)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = _import_file(path, monkeypatch)
    try:
        yield module
    finally:
        for hub in flask_sse_hub.hubs(module.app).values():
            hub.broker.stop()


def test_library_example_runs_as_written(readme_app: Any) -> None:
    app: Flask = readme_app.app
    client = app.test_client()
    stream = OpenStream(client.get("/stream?channel=orders", buffered=False))
    try:
        created = client.post("/orders")
        assert created.status_code == 201, created.get_data(as_text=True)
        event_id = created.get_json()["event_id"]
        assert EVENT_ID.fullmatch(event_id), event_id
        (event,) = stream.read(1)
        assert (event.type, event.last_event_id) == ("order-created", event_id)
        assert event.data == '{"order":42}'
    finally:
        stream.close()
    refused = client.get("/stream?channel=admin-panel")
    assert refused.status_code == 403, refused.get_data(as_text=True)
    assert "admin-panel" in refused.get_json()["error"]
    assert readme_app.may_subscribe("admin") is False
    assert readme_app.may_subscribe("orders") is True


def test_jwt_snippet_mints_a_token_the_hub_accepts(
    make_app: Callable[..., Flask],
) -> None:
    pytest.importorskip("jwt")
    secret = "a-secret-of-at-least-32-bytes-for-hs256"
    # Self-contained but for the secret: any other undefined name is a NameError.
    namespace: dict[str, Any] = {"SSE_JWT_SECRET": secret}
    block = readme_block("JWT minting")
    exec(compile(block.text, block.source, "exec"), namespace)
    token = namespace["token"]
    assert isinstance(token, str)
    client = make_app(standalone=True, SSE_JWT_SECRET=secret).test_client()
    bearer = {"Authorization": f"Bearer {token}"}

    def publish(channel: str) -> int:
        answer = client.post("/publish", json={"channel": channel, "data": "x"}, headers=bearer)
        return answer.status_code

    assert publish("user:42:outbox") == 202
    assert publish("orders") == 403
    for channel in ("orders", "user:42:inbox"):
        OpenStream(client.get(f"/stream?channel={channel}&token={token}",
                              buffered=False)).close()
    assert client.get(f"/stream?channel=user:43:inbox&token={token}").status_code == 403
    assert client.get("/stream?channel=orders").status_code == 401


# -- js -------------------------------------------------------------------------------


def test_js_blocks_are_valid_javascript_for_the_library_example(tmp_path: Path) -> None:
    example = readme_block("library example").text
    prefix = re.search(r'register_blueprint\(sse, url_prefix="([^"]+)"\)', example)
    event = re.search(r'event="([^"]+)"', example)
    assert prefix and event, example
    browser = readme_block("browser EventSource").text
    assert f'new EventSource("{prefix[1]}?channel=orders")' in browser, browser
    assert f'"{event[1]}"' in browser, "the browser block listens for another event"
    assert "/stream?" in readme_block("browser token refresh").text
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the js blocks' syntax is not checked")
    for kind in ("browser EventSource", "browser token refresh"):
        script = tmp_path / f"{kind.replace(' ', '_')}.js"
        script.write_text(readme_block(kind).text)
        checked = subprocess.run([node, "--check", str(script)], capture_output=True,
                                 text=True, timeout=30, check=False)
        assert checked.returncode == 0, f"{readme_block(kind)}:\n{checked.stderr}"


# -- nginx ----------------------------------------------------------------------------


def parse_nginx(text: str) -> list[Any]:
    """A tiny nginx config parser: ``[(directive, [args], children | None), ...]``."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))
    stack: list[list[Any]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            assert words, "empty statement"
            stack[-1].append((words[0], words[1:], None))
            words = []
        elif token == "{":
            assert words, "block without a name"
            children: list[Any] = []
            stack[-1].append((words[0], words[1:], children))
            stack.append(children)
            words = []
        elif token == "}":
            assert not words, f"statement not ended by ';': {words}"
            assert len(stack) > 1, "unbalanced '}'"
            stack.pop()
        else:
            words.append(token)
    assert not words, f"statement not ended by ';': {words}"
    assert len(stack) == 1, "unclosed block"
    return stack[0]


def _locations(tree: list[Any]) -> Iterator[tuple[list[str], list[Any]]]:
    for name, args, children in tree:
        if children is not None:
            if name == "location":
                yield args, children
            yield from _locations(children)


def test_nginx_blocks_parse() -> None:
    from flask_sse_hub import gunicorn_config

    with pytest.raises(AssertionError):
        parse_nginx("location /stream { proxy_pass x }")  # the parser does catch mistakes
    single = parse_nginx(readme_block("nginx, one hub").text)
    several = parse_nginx(readme_block("nginx, several hubs").text)
    for tree in (single, several):
        streams = [children for args, children in _locations(tree) if args == ["/stream"]]
        assert len(streams) == 1, tree
        settings = {name: args for name, args, _ in streams[0]}
        assert settings["proxy_buffering"] == ["off"]
        assert settings["proxy_http_version"] == ["1.1"]
        assert "proxy_read_timeout" in settings
        assert "proxy_pass" in settings
    single_stream = next(children for args, children in _locations(single)
                         if args == ["/stream"])
    target = {name: args for name, args, _ in single_stream}["proxy_pass"][0]
    assert target == f"http://{gunicorn_config.bind}", "nginx should point at the default bind"
    upstreams = [args for name, args, _ in several if name == "upstream"]
    passes = {args[0] for _, children in _locations(several)
              for name, args, _ in children if name == "proxy_pass"}
    assert passes == {f"http://{upstreams[0][0]}"}, (upstreams, passes)


# -- sh -------------------------------------------------------------------------------


def _gunicorn_settings() -> set[str]:
    """The ``SSE_*`` environment variables the packaged gunicorn settings read."""
    source = (REPO_ROOT / "flask_sse_hub" / "gunicorn_config.py").read_text()
    return set(re.findall(r'environ\.get\("(SSE_[A-Z0-9_]+)"', source))


def test_sentinel_command_names_real_settings() -> None:
    lines = readme_block("Redis Sentinel").text.replace("\\\n", " ")
    words = shlex.split(lines, comments=True)
    assignments = dict(word.split("=", 1) for word in words if re.match(r"[A-Z_]+=", word))
    command = [word for word in words if not re.match(r"[A-Z_]+=", word)]
    assert command == ["flask-sse-hub"], command
    for key in assignments:
        assert key in DEFAULTS or key == "WEB_CONCURRENCY", key
    assert re.fullmatch(r"[\w.-]+:\d+(,[\w.-]+:\d+)*", assignments["SSE_REDIS_SENTINELS"])
    assert int(assignments["SSE_REDIS_MIN_REPLICAS"]) >= 0


def test_every_setting_named_in_a_block_exists() -> None:
    known = set(DEFAULTS) | _gunicorn_settings()
    assert "SSE_BIND" in known
    for block in readme_blocks():
        for name in re.findall(r"\bSSE_[A-Z0-9_]+", block.text):
            assert name in known, f"{block} names {name}, which is no setting"


def test_every_pip_extra_in_the_documents_exists() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    extras = set(setup["options.extras_require"])
    named = [
        group for path in DOCUMENTS
        for group in re.findall(r"flask-sse-hub\[([\w,-]+)\]", path.read_text())
    ]
    assert {"redis", "client"} <= set(named), f"the documents name the extras {named}"
    for group in named:
        for extra in group.split(","):
            assert extra in extras, f"a document names the extra [{extra}], not in {extras}"
    comment_extras = re.findall(r"\[(\w+)\]", readme_block("Redis workers").text)
    assert set(comment_extras) <= extras, comment_extras


def test_layout_block_names_files_that_exist() -> None:
    """Each first-column entry, and each entry indented by two under a directory, exists."""
    directory = REPO_ROOT
    checked: list[Path] = []
    for line in readme_block("layout").text.splitlines():
        indented = line.startswith("  ") and not line.startswith("   ")
        if not line.strip() or (line.startswith(" ") and not indented):
            continue  # a description's continuation
        words = line.split()
        names = [words.pop(0)]
        while names[-1].endswith(",") and words:  # "wsgi.py, gunicorn.conf.py"
            names.append(words.pop(0))
        for name in (name.rstrip(",") for name in names):
            path = (directory if indented else REPO_ROOT) / name
            assert path.exists(), f"the README's layout names {path.relative_to(REPO_ROOT)}"
            checked.append(path)
            if indented and name.endswith("/"):  # "backends/  memory.py, redis.py"
                for module in re.findall(r"[\w.]+\.py", " ".join(words)):
                    assert (path / module).exists(), f"the README's layout names {name}{module}"
                    checked.append(path / module)
        if not indented and names[0].endswith("/"):
            directory = REPO_ROOT / names[0]
    assert len(checked) >= 10, checked


# -- docs/operations.md and docs/clients.md ---------------------------------------------


def test_operations_blocks_run_against_an_app(make_app: Callable[..., Flask]) -> None:
    sse = SSEBlueprint("sse", __name__)
    app = make_app(sse)
    namespace: dict[str, Any] = {"app": app, "sse": sse, "flask_sse_hub": flask_sse_hub}
    with app.app_context():
        for kind in ("metrics view", "demo view", "presence calls", "identify",
                     "disconnect calls"):
            block = readme_block(kind)
            namespace["hub"] = flask_sse_hub.hubs(app)["sse"]
            exec(compile(block.text, block.source, "exec"), namespace)
    client = app.test_client()
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and b"sse_hub_streams" in metrics.data
    demo = client.get("/sse-demo").get_data(as_text=True)
    assert '"presence": "/sse-presence"' in demo  # the page found the mounted view
    assert namespace["who"].__name__ == "who"  # registered by @sse.identify


def test_client_blocks_use_what_exists(make_app: Callable[..., Flask]) -> None:
    listener = readme_block("python listener")
    compile(listener.text, listener.source, "exec")  # it runs forever against a hub
    from flask_sse_hub import client

    gap = client.Gap("sse-hub-gap", '{"last_event_id": "x"}', "1")
    for name in re.findall(r"event\.(\w+)", listener.text):
        assert hasattr(gap, name), f"{listener} uses event.{name}, which does not exist"
    help_text = client.tail_command().get_help(click.Context(client.tail_command()))
    for option in re.findall(r"\s(--?[a-z][\w-]*)", readme_block("tail commands").text):
        assert option in help_text, f"tail has no option {option}"
    page = readme_block("sse-hub.js page").text
    script = re.search(r'<script src="([^"]+)">', page)
    assert script, page
    served = make_app(flask_sse_hub.sse).test_client().get(script[1])
    assert served.status_code == 200 and b"SSEHubSource" in served.data
