# Keeps the layers honest (docs/design.md rules 1 and 10): iscsifs/proto/ is sans-I/O, so
# it imports no trio, socket, pyfuse3, clock, threads, processes or OS access, and nothing above
# it in the package; iscsifs/scsi.py knows nothing of the engine, the FUSE side or trio. Reads the
# sources with ast (imports anywhere in a module, including inside functions, and literal
# __import__ / importlib.import_module calls), so it never imports the code it checks.

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "iscsifs"
PROTO = PACKAGE / "proto"

PROTO_BANNED = {
    "trio",
    "socket",
    "pyfuse3",
    "time",
    "asyncio",
    "logging.config",
    "select",
    "selectors",
    "threading",
    "subprocess",
    "os",
}
SCSI_BANNED = {
    "iscsifs.engine",
    "iscsifs.fs",
    "iscsifs.daemon",
    "iscsifs.cli",
    "trio",
    "pyfuse3",
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every absolute dotted name a module imports, with its line: `from a.b import c` gives
    both a.b and a.b.c (c may be a submodule); relative imports are resolved against module."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def offending(
    imports: list[tuple[int, str]], banned: set[str], allowed_own: str | None = None
) -> list[tuple[int, str, str]]:
    """(line, name, why) for each banned name (or a submodule of one) imported; with
    allowed_own, also for every iscsifs import outside that subpackage."""
    out: set[tuple[int, str, str]] = set()
    for line, name in imports:
        hit = next((b for b in banned if name == b or name.startswith(b + ".")), None)
        if hit is not None:
            out.add((line, name, f"banned: {hit}"))
        elif (
            allowed_own is not None
            and (name == "iscsifs" or name.startswith("iscsifs."))
            and not (name == allowed_own or name.startswith(allowed_own + "."))
        ):
            out.add((line, name, f"only {allowed_own} may be imported here"))
    return sorted(out)


def violations(
    path: Path, banned: set[str], allowed_own: str | None = None, root: Path = ROOT
) -> list[str]:
    """'file:line imports NAME (why)' for each offending import of a source file."""
    imports = imported_names(
        path.read_text(), module_name(path, root), is_package=path.name == "__init__.py"
    )
    rel = path.relative_to(root)
    found = offending(imports, banned, allowed_own)
    return [f"{rel}:{line} imports {name} ({why})" for line, name, why in found]


PROTO_FILES = sorted(PROTO.rglob("*.py"))


def test_the_protocol_core_is_where_the_scan_looks() -> None:
    names = {p.name for p in PROTO_FILES}
    assert {"__init__.py", "errors.py"} <= names


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: str(p.relative_to(PROTO)))
def test_proto_module_is_sans_io(path: Path) -> None:
    bad = violations(path, PROTO_BANNED, allowed_own="iscsifs.proto")
    assert not bad, "sans-I/O core imports I/O or a higher layer:\n" + "\n".join(bad)


def test_scsi_knows_nothing_of_engine_fuse_or_trio() -> None:
    path = PACKAGE / "scsi.py"
    assert path.exists(), "iscsifs/scsi.py is missing"
    bad = violations(path, SCSI_BANNED)
    assert not bad, "scsi.py reaches above its layer:\n" + "\n".join(bad)


# The checker itself: each of these must be caught, and the clean forms must not be.


def check_source(source: str) -> list[tuple[int, str, str]]:
    imports = imported_names(source, "iscsifs.proto.fake")
    return offending(imports, PROTO_BANNED, allowed_own="iscsifs.proto")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import trio\n", "trio"),
        ("import os.path\n", "os.path"),
        ("from time import monotonic\n", "time"),
        ("import logging.config\n", "logging.config"),
        ("from logging import config\n", "logging.config"),
        ("from logging.config import dictConfig\n", "logging.config"),
        ("def f():\n    import socket\n", "socket"),
        ("import importlib\nimportlib.import_module('subprocess')\n", "subprocess"),
        ("__import__('threading')\n", "threading"),
        ("from selectors import DefaultSelector\n", "selectors"),
        ("import asyncio, pyfuse3\n", "pyfuse3"),
        ("from .. import engine\n", "iscsifs.engine"),
        ("from ..engine.session import Session\n", "iscsifs.engine.session"),
        ("from iscsifs import fs\n", "iscsifs.fs"),
    ],
)
def test_checker_catches(source: str, name: str) -> None:
    assert name in [n for _, n, _ in check_source(source)]


@pytest.mark.parametrize(
    "source",
    [
        "import logging\n",
        "import struct, enum\n",
        "from . import serial\n",
        "from .errors import RemoteProtocolError\n",
        "from iscsifs.proto.text import parse_number\n",
        "from crc32c import crc32c\n",
        "import ostruct\n",  # a name that merely starts like a banned one
    ],
)
def test_checker_lets_clean_imports_through(source: str) -> None:
    assert check_source(source) == []


def test_failure_names_file_line_and_import(tmp_path: Path) -> None:
    fake = tmp_path / "iscsifs" / "proto" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import struct\nfrom time import sleep\nfrom ..fs import Ops\n")
    assert violations(fake, PROTO_BANNED, "iscsifs.proto", root=tmp_path) == [
        "iscsifs/proto/x.py:2 imports time (banned: time)",
        "iscsifs/proto/x.py:2 imports time.sleep (banned: time)",
        "iscsifs/proto/x.py:3 imports iscsifs.fs (only iscsifs.proto may be imported here)",
        "iscsifs/proto/x.py:3 imports iscsifs.fs.Ops (only iscsifs.proto may be imported here)",
    ]


def test_the_cli_loads_no_trio_engine_or_fuse_code() -> None:
    """The CLI is a client of the tree: importing it (and the daemon's process side it uses
    for mount and umount) must not load the event loop, the engine or the FUSE layer."""
    import subprocess
    import sys

    code = ("import sys, iscsifs.cli; "
            "print(' '.join(m for m in sys.modules if m == 'trio' or m.startswith("
            "('trio.', 'iscsifs.engine', 'iscsifs.fuse', 'iscsifs.fs', 'iscsifs.daemon.core'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "fs").rglob("*.py")),
                         ids=lambda p: p.name)
def test_the_tree_knows_nothing_of_the_daemon_or_the_cli(path: Path) -> None:
    bad = violations(path, {"iscsifs.daemon", "iscsifs.cli", "iscsifs.config"})
    assert not bad, "fs/ reaches above its layer:\n" + "\n".join(bad)
