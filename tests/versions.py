"""The suite under other interpreters and under the lowest dependency versions.

Standard library only: it runs before any virtualenv exists.

``python tests/versions.py min --python PY --venv .venv-min -- PYTEST_ARGS...``
    A virtualenv of its own with the project installed (``-e '.[test,redis,rsa]'``)
    and every runtime dependency pinned to the lower bound ``setup.cfg`` gives it
    (``install_requires`` and the ``redis`` and ``rsa`` extras; a test tool keeps
    its latest version). Checks that pip installed exactly those versions and
    that ``pip check`` is clean, then runs pytest with ``PYTEST_ARGS``.

``python tests/versions.py pythons --exclude PY -- PYTEST_ARGS...``
    Every CPython >= 3.10 on the machine (pyenv's versions, ``python3.1x`` on
    PATH), one per minor version, except the minor version of ``--exclude``
    (the interpreter of ``.venv``, which ``make test`` covers): a
    ``.venv-py3.X`` each, the same install, the same pytest run, one after
    another. A supported minor version that is not found is skipped, said so.

``python tests/versions.py requirements``
    Print the pins ``min`` installs.

A virtualenv is reused while ``setup.cfg``, ``pyproject.toml``, the pins and
the interpreter are unchanged (a stamp file in it records them); pip's cache
makes a fresh one cheap. Exit status 1 if any install or test run failed; a
summary (pytest's own summary lines included) comes last.
"""

from __future__ import annotations

import argparse
import configparser
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_CFG = ROOT / "setup.cfg"
#: The extras whose requirements are runtime dependencies (pinned to their lower bound).
RUNTIME_EXTRAS = ("redis", "rsa")
#: The extras installed everywhere (the test tools stay at their latest versions).
INSTALL_EXTRAS = "test,redis,rsa,client"
#: The oldest supported minor version, and the newest one that must be looked for.
OLDEST = (3, 10)
NEWEST_EXPECTED = (3, 13)
#: Bounds on one install and one pytest run (pytest-timeout bounds each test too).
INSTALL_TIMEOUT = 900
PYTEST_TIMEOUT = 1200
#: Distributions whose installed versions the ``min`` run reports.
REPORTED = (
    "flask", "werkzeug", "gunicorn", "gevent", "greenlet", "pyjwt", "cryptography",
    "redis", "packaging", "prometheus-client",
)

REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?"
    r"\s*(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.*))?$"
)
SUMMARY = re.compile(r"\b(passed|failed|errors?|skipped|no tests ran)\b.* in [0-9.]+s")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """``"3.1"`` and ``"3.1.0"`` alike: the release numbers without trailing zeros."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"not a release version: {version!r}")
    numbers = [int(part) for part in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


# -- the lowest versions setup.cfg allows -----------------------------------------------


@dataclass
class Pin:
    name: str  # as setup.cfg spells it first
    extras: set[str] = field(default_factory=set)
    lower: str | None = None  # the highest of the lower bounds given
    sources: list[str] = field(default_factory=list)

    def requirement(self) -> str:
        extras = f"[{','.join(sorted(self.extras))}]" if self.extras else ""
        return f"{self.name}{extras}=={self.lower}" if self.lower else f"{self.name}{extras}"


def requirement_lines(value: str) -> list[str]:
    lines = []
    for raw in value.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def lower_bound(spec: str, where: str) -> str | None:
    """The lowest version ``spec`` allows, or None when it has no lower bound."""
    lowest: str | None = None
    for clause in filter(None, (part.strip() for part in spec.split(","))):
        match = re.match(r"^(>=|==|~=|===|>|<=|<|!=)\s*(\S+)$", clause)
        if not match:
            raise SystemExit(f"setup.cfg: cannot read the version clause {clause!r} ({where})")
        operator, version = match.groups()
        if operator == ">":
            raise SystemExit(
                f"setup.cfg: {where} has an exclusive lower bound ({clause}); "
                "the lowest allowed version is not a number this script can pin"
            )
        if operator in (">=", "==", "~=", "===") and (
            lowest is None or release(version) > release(lowest)
        ):
            lowest = version
    return lowest


def minimum_pins(setup_cfg: Path = SETUP_CFG) -> list[Pin]:
    """One pin per runtime dependency, in setup.cfg's order."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(setup_cfg, encoding="utf-8")
    sections = [("install_requires", config.get("options", "install_requires", fallback=""))]
    extras = config["options.extras_require"] if config.has_section(
        "options.extras_require") else {}
    sections += [(f"[{extra}]", extras.get(extra, "")) for extra in RUNTIME_EXTRAS]
    runtime = [(where, line) for where, value in sections for line in requirement_lines(value)]
    # A test extra that names a runtime dependency (pyjwt[crypto]) is pinned with it.
    tests = [("[test]", line) for line in requirement_lines(extras.get("test", ""))]
    pins: dict[str, Pin] = {}
    for where, line in runtime + tests:
        match = REQUIREMENT.match(line)
        if not match:
            raise SystemExit(f"setup.cfg: cannot read the requirement {line!r} ({where})")
        key = canonical(match["name"])
        if where == "[test]" and key not in pins:
            continue  # a test tool: its latest version
        pin = pins.setdefault(key, Pin(match["name"]))
        if match["extras"]:
            pin.extras.update(e.strip() for e in match["extras"].split(",") if e.strip())
        bound = lower_bound(match["spec"], f"{line} in {where}")
        if bound is not None and (pin.lower is None or release(bound) > release(pin.lower)):
            pin.lower = bound
        pin.sources.append(f"{where} {line}")
    return list(pins.values())


# -- finding the interpreters ------------------------------------------------------------


@dataclass
class Interpreter:
    path: str
    version: str  # e.g. "3.12.1"
    minor: tuple[int, int]
    label: str  # "3.12" (or "3.13t" for a free-threaded build)


PROBE = (
    "import json, platform, sys, sysconfig; print(json.dumps({"
    "'impl': platform.python_implementation(), 'version': platform.python_version(), "
    "'executable': sys.executable, "
    "'minor': list(sys.version_info[:2]), "
    "'freethreaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED'))}))"
)


def probe(path: str) -> Interpreter | None:
    """What ``path`` is, if it runs and is a CPython; None otherwise (a pyenv shim of a
    version that is not selected fails to run, for instance)."""
    try:
        done = subprocess.run(
            [path, "-c", PROBE], capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )
        info = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not info or info["impl"] != "CPython":
        return None
    minor = (info["minor"][0], info["minor"][1])
    label = f"{minor[0]}.{minor[1]}" + ("t" if info["freethreaded"] else "")
    # sys.executable: the real interpreter behind a pyenv shim or a symlink.
    return Interpreter(info["executable"] or path, info["version"], minor, label)


def candidate_paths() -> list[str]:
    paths: list[str] = []
    roots = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            root = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        if root:
            roots.append(root)
    roots += [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    for root in filter(None, roots):
        # Newest patch release first, so it is the one kept for its minor version.
        found = glob.glob(os.path.join(root, "versions", "*", "bin", "python3"))
        paths += sorted(found, key=lambda p: version_key(Path(p).parents[1].name), reverse=True)
    for minor in range(OLDEST[1], 30):
        for name in (f"python3.{minor}", f"python3.{minor}t"):
            found_on_path = shutil.which(name)
            if found_on_path:
                paths.append(found_on_path)
    unique: list[str] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


def version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in re.findall(r"\d+", name))
    except ValueError:
        return ()


def find_pythons(exclude: Interpreter | None) -> tuple[list[Interpreter], list[str]]:
    """The interpreters to run (one per minor version, oldest first) and the skip notes."""
    chosen: dict[str, Interpreter] = {}
    for path in candidate_paths():
        found = probe(path)
        if found is None or found.minor < OLDEST or found.label in chosen:
            continue
        chosen[found.label] = found
    notes = []
    if exclude is not None and exclude.label in chosen:
        notes.append(
            f"Python {exclude.label}: covered by `make test` (.venv, {exclude.version}), "
            "not run again"
        )
        del chosen[exclude.label]
    newest = max([NEWEST_EXPECTED, *(i.minor for i in chosen.values())])
    for minor in range(OLDEST[1], newest[1] + 1):
        label = f"3.{minor}"
        if label not in chosen and (exclude is None or exclude.label != label):
            notes.append(f"Python {label}: not found on this machine, SKIPPED")
    ordered = sorted(chosen.values(), key=lambda i: (i.minor, i.label))
    return ordered, notes


# -- virtualenvs and runs ----------------------------------------------------------------


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    lines: list[str] = field(default_factory=list)  # pytest's summary lines, or the error


def run(command: list[str], *, env: dict[str, str] | None = None, timeout: float,
        keep: list[str] | None = None, echo: bool = True) -> int:
    """Run ``command`` in ROOT, its output passed through (and kept in ``keep``);
    killed with its process group after ``timeout`` seconds. With ``echo`` false
    the output is shown only if the command fails (pip's build chatter)."""
    held: list[str] = []
    print("+ " + " ".join(command), flush=True)
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if echo:
                sys.stdout.write(line)
            else:
                held.append(line)
            if keep is not None:
                keep.append(line.rstrip("\n"))
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(command, timeout)
        code = process.wait(max(deadline - time.monotonic(), 1))
        if code != 0 and not echo:
            sys.stdout.writelines(held)
        return code
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        sys.stdout.writelines(held)
        print(f"!! killed after {timeout} s: {' '.join(command)}", flush=True)
        if keep is not None:
            keep.append(f"killed after {timeout} s")
        return -9
    finally:
        sys.stdout.flush()


def stamp_of(interpreter: Interpreter, pins: list[str]) -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "setup.cfg", ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(json.dumps([interpreter.path, interpreter.version, pins]).encode())
    return digest.hexdigest()


def prepare_venv(venv: Path, interpreter: Interpreter, pins: list[str]) -> str | None:
    """Create (or reuse) ``venv`` with the project installed; the error, if any."""
    stamp_file = venv / ".installed"
    stamp = stamp_of(interpreter, pins)
    python = venv / "bin" / "python"
    if stamp_file.exists() and stamp_file.read_text() == stamp and python.exists():
        print(f"{venv.name}: up to date (reused)", flush=True)
        return None
    if run([interpreter.path, "-m", "venv", "--clear", str(venv)], timeout=300) != 0:
        return f"could not create {venv.name} with {interpreter.path}"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    if run([*pip, "--upgrade", "pip"], timeout=INSTALL_TIMEOUT, echo=False) != 0:
        return f"{venv.name}: pip install --upgrade pip failed"
    if run([*pip, "-e", f".[{INSTALL_EXTRAS}]", *pins], timeout=INSTALL_TIMEOUT,
           echo=False) != 0:
        return f"{venv.name}: pip install -e '.[{INSTALL_EXTRAS}]' {' '.join(pins)} failed"
    stamp_file.write_text(stamp)
    return None


def installed_versions(venv: Path) -> dict[str, str]:
    script = (
        "import json, importlib.metadata as m, re; print(json.dumps({"
        "re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version "
        "for d in m.distributions()}))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True,
        timeout=60, check=True,
    )
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def run_pytest(name: str, venv: Path, pytest_args: list[str], started: float) -> Result:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONHOME", None)
    output: list[str] = []
    # No cache provider: these runs leave .pytest_cache (the main .venv's --lf) alone.
    code = run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *pytest_args],
        env=env, timeout=PYTEST_TIMEOUT, keep=output,
    )
    lines = [line for line in output if line.startswith(("FAILED ", "ERROR "))]
    summary = [line for line in output if SUMMARY.search(line)]
    lines += summary[-1:] or [f"pytest exited {code} without a summary line"]
    return Result(name, code == 0, time.monotonic() - started, lines)


def banner(text: str) -> None:
    print(f"\n{'=' * 20} {text} {'=' * 20}", flush=True)


def report(title: str, results: list[Result], notes: list[str]) -> int:
    banner(f"{title}: summary")
    for note in notes:
        print(f"  {note}")
    for result in results:
        state = "passed" if result.ok else "FAILED"
        print(f"  {result.name}: {state} in {result.seconds:.0f} s")
        for line in result.lines:
            print(f"      {line}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"{title}: FAILED under {', '.join(failed)}", flush=True)
        return 1
    if not results:
        print(f"{title}: nothing was run", flush=True)
    return 0


def command_min(args: argparse.Namespace) -> int:
    started = time.monotonic()
    interpreter = probe(args.python) if shutil.which(args.python) or Path(
        args.python).exists() else None
    if interpreter is None:
        print(f"test-min: {args.python} is not a CPython that runs", flush=True)
        return 1
    pins = minimum_pins()
    requirements = [pin.requirement() for pin in pins]
    venv = (ROOT / args.venv).resolve()
    name = f"lowest versions (Python {interpreter.version}, {venv.name})"
    banner(name)
    for pin in pins:
        bound = f"=={pin.lower}" if pin.lower else "latest (setup.cfg gives no lower bound)"
        print(f"  {pin.name}: {bound}    from {'; '.join(pin.sources)}")
    error = prepare_venv(venv, interpreter, requirements)
    if error:
        return report("test-min", [Result(name, False, time.monotonic() - started, [error])], [])
    versions = installed_versions(venv)
    wrong = []
    for pin in pins:
        got = versions.get(canonical(pin.name))
        if got is None or (pin.lower and release(got) != release(pin.lower)):
            wrong.append(f"{pin.name}: {got} installed, {pin.lower} pinned")
    print("installed: " + ", ".join(
        f"{n} {versions[n]}" for n in REPORTED if n in versions), flush=True)
    check_output: list[str] = []
    if run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "check"],
           timeout=120, keep=check_output) != 0:
        wrong += [f"pip check: {line}" for line in check_output]
    if wrong:
        return report("test-min", [Result(name, False, time.monotonic() - started, wrong)], [])
    result = run_pytest(name, venv, args.pytest_args, started)
    result.lines.insert(0, "installed: " + ", ".join(
        f"{n} {versions[n]}" for n in REPORTED if n in versions))
    return report("test-min", [result], [])


def command_pythons(args: argparse.Namespace) -> int:
    exclude = probe(args.exclude) if args.exclude else None
    if args.exclude and exclude is None:
        print(f"test-pythons: --exclude {args.exclude} does not run", flush=True)
        return 1
    interpreters, notes = find_pythons(exclude)
    for note in notes:
        print(note, flush=True)
    results = []
    for interpreter in interpreters:
        started = time.monotonic()
        venv = ROOT / f".venv-py{interpreter.label}"
        name = f"Python {interpreter.version} ({interpreter.path}, {venv.name})"
        banner(name)
        error = prepare_venv(venv, interpreter, [])
        if error:
            results.append(Result(name, False, time.monotonic() - started, [error]))
            continue
        versions = installed_versions(venv)
        result = run_pytest(name, venv, args.pytest_args, started)
        result.lines.insert(0, "installed: " + ", ".join(
            f"{n} {versions[n]}" for n in REPORTED if n in versions))
        results.append(result)
    return report("test-pythons", results, notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lowest = commands.add_parser("min", help="the lowest versions setup.cfg allows")
    lowest.add_argument("--python", default=sys.executable)
    lowest.add_argument("--venv", default=".venv-min")
    lowest.add_argument("pytest_args", nargs="*")
    pythons = commands.add_parser("pythons", help="every other CPython >= 3.10")
    pythons.add_argument("--exclude", help="an interpreter whose minor version is skipped")
    pythons.add_argument("pytest_args", nargs="*")
    commands.add_parser("requirements", help="print the pins `min` installs")
    args = parser.parse_args(argv)
    if args.command == "requirements":
        for pin in minimum_pins():
            print(pin.requirement())
        return 0
    if not args.pytest_args:
        parser.error("give the pytest arguments after --")
    return command_min(args) if args.command == "min" else command_pythons(args)


if __name__ == "__main__":
    sys.exit(main())
