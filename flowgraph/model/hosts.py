"""Hosts a run spreads over: ``--hosts h1,h2`` or ``--hosts @FILE``, as plain data.

A host is an ssh destination, ``[user@]host[:port]`` (or an alias of your
ssh config), or ``localhost`` for processes on this machine without ssh. A
hosts file has one host a line, with optional settings after it::

    # name                 settings
    alice@10.0.0.2         python=/opt/venv/bin/python slots=2
    10.0.0.3:2222          address=192.168.1.3
    localhost

- ``python=``: the interpreter on that host that has flowgraph installed
  (default: ``--remote-python``, else ``python3``);
- ``slots=``: how many turns the host takes when replicas are dealt out
  (default 1);
- ``address=``: the address other hosts use to reach this host's data
  sockets (default: the address the launcher's ssh connection reached).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import HostError

LOCALHOST = "localhost"
_SETTINGS = ("python", "slots", "address")
_DESTINATION = re.compile(r"^(?:[^@\s:]+@)?(?:[^@\s:\[\]]+|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?$")


@dataclass(frozen=True)
class Host:
    """One host of a run."""

    name: str
    """As written in ``--hosts``: what ``context().host`` and messages show."""
    python: str | None = None
    slots: int = 1
    address: str | None = None

    @property
    def is_local(self) -> bool:
        return self.name == LOCALHOST

    @property
    def destination(self) -> str:
        """The ssh destination: ``[user@]host`` without the port."""
        name = self.name
        if name.endswith("]") or ":" not in name.rsplit("]", 1)[-1]:
            return name
        return name.rsplit(":", 1)[0]

    @property
    def port(self) -> int | None:
        tail = self.name.rsplit("]", 1)[-1]
        return int(tail.rsplit(":", 1)[1]) if ":" in tail else None


def parse_hosts(argument: str | Iterable[str]) -> tuple[Host, ...]:
    """Hosts from ``h1,h2``, ``@FILE`` or a list of names; raises ``HostError`` naming the bad one."""
    if isinstance(argument, str):
        if argument.startswith("@"):
            return read_hosts_file(argument[1:])
        names = [name.strip() for name in argument.split(",") if name.strip()]
    else:
        names = list(argument)
    if not names:
        raise HostError("no hosts given; --hosts takes h1,h2,... or @FILE")
    return tuple(_host(name, {}, "--hosts") for name in names)


def read_hosts_file(path: str) -> tuple[Host, ...]:
    """Hosts from a hosts file (see the module docstring)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise HostError(f"cannot read hosts file {path!r}: {error.strerror}") from error
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}:{number}"
        settings = {}
        for word in words[1:]:
            key, equals, value = word.partition("=")
            if not equals or key not in _SETTINGS or not value:
                raise HostError(f"{where}: {word!r} is not a host setting; expected one of "
                                f"{', '.join(k + '=...' for k in _SETTINGS)}")
            settings[key] = value
        hosts.append(_host(words[0], settings, where))
    if not hosts:
        raise HostError(f"hosts file {path!r} names no hosts")
    return tuple(hosts)


def _host(name: str, settings: dict[str, str], where: str) -> Host:
    if name != LOCALHOST and not _DESTINATION.match(name):
        raise HostError(f"{where}: {name!r} is not a host; expected [user@]host[:port] or localhost")
    slots = settings.get("slots", "1")
    if not slots.isdigit() or int(slots) < 1:
        raise HostError(f"{where}: slots of {name!r} must be an integer >= 1, not {slots!r}")
    return Host(name, python=settings.get("python"), slots=int(slots), address=settings.get("address"))


def deal(hosts: tuple[Host, ...], count: int, start: int = 0) -> list[Host]:
    """``count`` hosts dealt round robin from position ``start``, a host with N slots taking N turns."""
    turns = [host for host in hosts for _ in range(host.slots)]
    return [turns[(start + index) % len(turns)] for index in range(count)]
