# What the tree's text files say: pure functions from the daemon's state (and the clock values
# passed in) to the text of status, params, luns, setup, targets/setup, targets/status and
# discovery/targets. The formats are documented in the README and parsed by the CLI.
# Must not change state, do I/O, or show a secret (format_security shows user names only).

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import PortalSetup, TargetSetup
from ..proto.discovery import DiscoveredTarget, Portal
from ..syntax import format_address, format_security

if TYPE_CHECKING:
    from .portal import PortalState


@dataclass
class DiscoveryRecord:
    target: DiscoveredTarget
    how: str  # "SendTargets 127.0.0.1:3260" or "iSNS 127.0.0.1:3205"
    when: float = field(default_factory=time.time)


def _tag(p: PortalSetup | Portal | None) -> str:
    return str(p.tpgt) if p is not None and p.tpgt is not None else "-"


def _yes(value: bool) -> str:
    return "Yes" if value else "No"


def _utc(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- a portal's files ------------------------------------------------------------------------


def status(p: PortalState, *, now: float, wall: float) -> str:
    """`status`: the manual's word first, then "key: value" lines. now: the engine's clock
    (trio.current_time), wall: time.time(), both taken once by the caller."""
    s = p.session
    lines = [p.state_word(), f"target: {p.iqn}", f"portal: {p.dirname}",
             f"portal group tag: {_tag(p.portal)}"]
    if s is None:
        lines += ["state: idle", "since: -", "reconnects: 0", "commands in flight: 0",
                  "commands waiting: 0", "outage: -", f"hold time: {p.hold_time:g} s",
                  f"last error: {p.last_login_error or '-'}"]
        return "\n".join(lines) + "\n"
    outage = "-" if s.outage_since is None else f"{now - s.outage_since:.1f} s"
    info = s.login_info
    lines += [
        f"state: {s.state.value}",
        f"since: {_utc(wall - (now - s.since))} ({now - s.since:.0f} s ago)",
        f"reconnects: {s.reconnects}",
        f"commands in flight: {s.in_flight}",
        f"commands waiting: {s.waiting}",
        f"outage: {outage}",
        f"hold time: {s.hold_time:g} s",
        f"last error: {s.last_error or p.last_login_error or '-'}",
        f"tsih: {info.tsih if info is not None and s.connected else '-'}",
        f"commands done: {s.commands_done}",
        f"bytes read: {s.bytes_read}",
        f"bytes written: {s.bytes_written}",
        f"luns: {' '.join(f'lun{n}' for n in sorted(p.devices)) or '-'}",
    ]
    return "\n".join(lines) + "\n"


def params(p: PortalState) -> str:
    """`params`: the negotiated login parameters, Key=Value, while connected."""
    s = p.session
    if s is None or not s.connected or s.params is None:
        return ""
    return "".join(f"{k}={v}\n" for k, v in s.params.as_pairs())


def luns(p: PortalState) -> str:
    """`luns`: number, bytes, block size, vendor, product, serial, device type."""
    out = []
    for info in p.luns:
        size = info.size if info.is_block_device else 0
        out.append(f"{info.number}\t{size}\t{info.block_size}\t{info.vendor}\t"
                   f"{info.product}\t{info.serial or '-'}\t{info.type_name}\n")
    return "".join(out)


def setup(t: TargetSetup, p: PortalSetup) -> str:
    """A portal's `setup`: the saved setup, no secrets."""
    dsec = ("same as security" if t.discovery_security is None
            else format_security(t.discovery_security))
    lines = [
        f"target: {t.name}",
        f"alias: {t.alias or '-'}",
        f"portal: {format_address(p.address, p.port)}",
        f"portal group tag: {_tag(p)}",
        f"visible: {_yes(p.visible)}",
        f"auto login: {_yes(p.auto_login)}",
        f"security: {format_security(t.security)}",
        f"discovery security: {dsec}",
    ]
    lines += [f"{key}: {value}" for key, value in t.params.to_offers().items()]
    for name in ("hold_time", "noop_interval", "noop_timeout", "command_timeout",
                 "connect_timeout", "login_timeout"):
        lines.append(f"{name}: {getattr(t.timeouts, name):g}")
    return "\n".join(lines) + "\n"


# -- the whole tree's files ------------------------------------------------------------------


def targets_setup(states: Iterable[PortalState]) -> str:
    """targets/setup: every added portal: iqn, tag, address:port, auto-login, visible."""
    return "".join(f"{s.iqn}\t{_tag(s.portal)}\t{s.dirname}\t{_yes(s.portal.auto_login)}\t"
                   f"{_yes(s.portal.visible)}\n" for s in states)


def targets_status(states: Iterable[PortalState]) -> str:
    """targets/status: every visible portal: iqn, tag, address:port, state."""
    return "".join(f"{s.iqn}\t{_tag(s.portal)}\t{s.dirname}\t{s.state_word()}\n"
                   for s in states if s.portal.visible)


def discovered(records: Iterable[DiscoveryRecord]) -> str:
    """discovery/targets: every discovered portal: iqn, tag, address:port, how."""
    return "".join(line.rstrip("\n") + f"\t{r.how}\n"
                   for r in records for line in discovery_reply((r.target,)).splitlines())


def discovery_reply(found: Sequence[DiscoveredTarget]) -> str:
    """The reply to a discovery command: iqn, tag, address:port (- for a target with no
    portal)."""
    out = []
    for t in found:
        for p in t.portals or (None,):
            where = format_address(p.address, p.port) if p is not None else "-"
            out.append(f"{t.name}\t{_tag(p)}\t{where}\n")
    return "".join(out)
