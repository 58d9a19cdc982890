# The tree, as one table: every file of the mount, what reading it shows and what writing it
# does. Adding a file to the tree is one entry here (docs/design.md "The tree is one table").
# The README's "The tree" section documents each file; keep the two in step.
# Must hold no logic of its own beyond choosing the parser and the handler of each file.

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from ..fs import File, Kind
from . import commands as C
from . import views
from .portal import LUN_FILE, PORTAL_DIR, PortalState

if TYPE_CHECKING:
    from .core import Daemon

READ = 0o400
WRITE = 0o200
CONTROL = 0o600  # written to, and its reply read back on the same descriptor


def table(d: Daemon) -> tuple[File, ...]:
    P = PORTAL_DIR
    cfg = lambda: d.config  # noqa: E731 - the setup changes: read it at each call
    return (
        File("version", READ, read=lambda _: f"iscsifs {__version__}\n"),
        File("log", READ, read=lambda _: d.log_text()),
        File("initiator/name", CONTROL, read=lambda _: cfg().initiator.name + "\n",
             write=lambda _, line: d.set_initiator_name(C.parse_initiator_name(line))),
        File("initiator/boot_delay", CONTROL,
             read=lambda _: f"{cfg().initiator.boot_delay}\n",
             write=lambda _, line: d.set_boot_delay(C.parse_boot_delay(line))),
        File("initiator/isns", CONTROL,
             read=lambda _: f"{cfg().initiator.isns}\n" if cfg().initiator.isns else "",
             write=lambda _, line: d.set_isns(C.parse_isns(line))),
        File("discovery/control", CONTROL, write=lambda _, line: d.discovery_command(line)),
        File("discovery/targets", READ, read=lambda _: views.discovered(d.discovered.values())),
        File("targets/control", CONTROL, write=lambda _, line: d.targets_command(line)),
        File("targets/setup", READ, read=lambda _: views.targets_setup(d.states.values())),
        File("targets/status", READ, read=lambda _: views.targets_status(d.states.values())),
        File(f"{P}/control", CONTROL, write=PortalState.control),
        File(f"{P}/status", READ, read=d.status_text),
        File(f"{P}/params", READ, read=views.params),
        File(f"{P}/luns", READ, read=views.luns),
        File(f"{P}/setup", READ, read=lambda p: views.setup(p.target, p.portal)),
        File(f"{P}/hold_time", CONTROL, read=lambda p: f"{p.hold_time:g}\n",
             write=PortalState.set_hold_time),
        File(LUN_FILE, CONTROL, kind=Kind.LUN),
    )
