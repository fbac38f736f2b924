"""Clients that vanish without a word: iptables rules that drop a loopback address's packets.

A client that closes sends FIN or RST; one whose machine loses power or
network sends nothing at all. On one machine that is made with a dedicated
source address on the loopback interface (all of 127.0.0.0/8 is local on
Linux) and rules that drop every packet to and from it: its connections stay
ESTABLISHED on both ends, and only the server's own timeouts can notice.

:func:`iptables_or_skip` finds ``iptables`` (installing Debian's package when
it is missing and we are root) and checks that rules can be listed;
:func:`dropped` inserts the rules for the duration of a ``with`` block and
always deletes them after it, also when the block fails. Only the exact
rules inserted here are ever deleted, and only on ``lo``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

__all__ = ["dropped", "iptables_or_skip"]

#: How long installing the package may take (an apt-get update included).
_INSTALL_SECONDS = 300


def _run(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )


def _install_iptables() -> str:
    """Try ``apt-get install -y iptables`` (then again after ``apt-get update``); a log."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    outputs = []
    for steps in ([["install", "-y", "iptables"]],
                  [["update"], ["install", "-y", "iptables"]]):
        for step in steps:
            try:
                done = subprocess.run(
                    [apt, *step], capture_output=True, text=True, env=env,
                    timeout=_INSTALL_SECONDS, check=False, stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                outputs.append(f"apt-get {' '.join(step)}: timed out")
                break
            outputs.append(f"apt-get {' '.join(step)} -> {done.returncode}: "
                           f"{(done.stdout + done.stderr)[-400:]}")
        if shutil.which("iptables"):
            break
    return "\n".join(outputs)


def iptables_or_skip() -> str:
    """The path of a usable ``iptables``; skips (saying why) when there is none."""
    if os.geteuid() != 0:
        pytest.skip("dropping a client's packets needs root (iptables)")
    iptables = shutil.which("iptables")
    if iptables is None:
        log = _install_iptables()
        iptables = shutil.which("iptables")
        if iptables is None:
            pytest.skip(f"iptables is not installed and could not be installed:\n{log}")
    listed = _run(iptables, "-S", "OUTPUT")
    if listed.returncode != 0:
        pytest.skip(f"iptables cannot be used here ({iptables} -S OUTPUT -> "
                    f"{listed.returncode}): {listed.stderr.strip()}")
    return iptables


def _rules(address: str) -> list[list[str]]:
    """Every packet from the server to ``address``, and from ``address``, on loopback."""
    return [
        ["OUTPUT", "-o", "lo", "-d", f"{address}/32", "-j", "DROP"],
        ["INPUT", "-i", "lo", "-s", f"{address}/32", "-j", "DROP"],
    ]


@contextlib.contextmanager
def dropped(iptables: str, address: str) -> Iterator[None]:
    """Inside the block, every packet to and from ``address`` on ``lo`` is dropped.

    The rules are deleted in a ``finally`` (each one inserted, exactly), and
    a leftover copy of them (a run killed inside the block) first.
    """
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"only a loopback address may be cut off, not {address}")
    rules = _rules(address)
    for rule in rules:  # leftovers of a killed run: the same rule, exactly
        while _run(iptables, "-C", *rule).returncode == 0:
            _run(iptables, "-D", *rule)
    inserted: list[list[str]] = []
    try:
        for rule in rules:
            done = _run(iptables, "-I", *rule)
            if done.returncode != 0:
                pytest.fail(f"iptables -I {' '.join(rule)} -> {done.returncode}: "
                            f"{done.stderr.strip()}")
            inserted.append(rule)
        yield
    finally:
        failures = []
        for rule in reversed(inserted):
            done = _run(iptables, "-D", *rule)
            if done.returncode != 0:
                failures.append(f"iptables -D {' '.join(rule)} -> {done.returncode}: "
                                f"{done.stderr.strip()}")
        if failures:
            raise RuntimeError("could not remove the test's iptables rules:\n"
                               + "\n".join(failures))
