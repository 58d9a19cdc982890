# Access to the mount by other users (issue 7, part 4), on a real mount of a real tgtd target:
# by default an unprivileged user can neither list the tree nor read or write a LUN file or a
# control file (FUSE without allow_other); with allow_other the file modes (0400/0600, owned by
# the mounting user, default_permissions) still refuse them. Commands run as `nobody` through
# setpriv, from a directory that user can reach, so each refusal comes from the mount and not
# from the path leading to it. And the config file that holds CHAP secrets is repaired to 0600,
# with a warning in the log, when group or others could read or write it.

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit
from testbed import free_port

from .conftest import require_tools
from .mounting import Mount, PortalSpec

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
REFUSED = {"EACCES", "EPERM"}

# Run by /usr/bin/python3 as nobody: try each operation, report the errno name (or "ok").
PROBE = r"""
import errno, json, os, sys
def attempt(op, path):
    try:
        if op == "list":
            os.listdir(path)
        elif op == "stat":
            os.stat(path)
        elif op == "read":
            with open(path, "rb") as f:
                f.read(4096)
        elif op == "write":
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, sys.argv[1].encode())
            finally:
                os.close(fd)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps([attempt(op, path) for op, path in json.loads(sys.stdin.read())]))
"""


def as_nobody(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=60,
                          input=stdin, cwd="/")


def probe(ops: list[tuple[str, Path]], payload: str = "login\n") -> list[str]:
    r = as_nobody("/usr/bin/python3", "-c", PROBE, payload,
                  stdin=json.dumps([(op, str(p)) for op, p in ops]))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory (0755 under /tmp) that nobody may enter: pytest's tmp_path is 0700."""
    require_tools("setpriv")
    path = Path(tempfile.mkdtemp(prefix="iscsifs-access-", dir="/tmp"))
    path.chmod(0o755)
    who = as_nobody("id", "-u")
    assert who.stdout.strip() == "65534", who.stderr
    assert as_nobody("ls", str(path)).returncode == 0, "nobody cannot even reach the test dir"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mount_with(shared: Path, tgtd, target, **mount_keys: object) -> Mount:  # type: ignore[no-untyped-def]
    host, port = tgtd.portal.rsplit(":", 1)
    m = Mount(shared, [PortalSpec(target.iqn, host, int(port))])
    if mount_keys:
        doc = tomlkit.parse(m.config.read_text())
        for key, value in mount_keys.items():
            doc["mount"][key] = value  # type: ignore[index]
        m.config.write_text(tomlkit.dumps(doc))
    m.start()
    m.portal = m.portal_dir(target.iqn, host, int(port))  # type: ignore[attr-defined]
    m.wait_for(m.portal / "lun1")  # type: ignore[attr-defined]
    return m


def _operations(m: Mount) -> list[tuple[str, Path]]:
    portal: Path = m.portal  # type: ignore[attr-defined]
    return [
        ("read", portal / "status"),
        ("read", portal / "lun1"),
        ("write", portal / "lun1"),
        ("write", portal / "control"),
        ("read", portal / "params"),
        ("write", m.point / "discovery" / "control"),
        ("write", m.point / "targets" / "control"),
        ("read", m.point / "log"),
    ]


def test_nobody_cannot_use_a_default_mount(shared_dir: Path, tgtd, make_target) -> None:
    target = make_target(luns=(8 << 20,))
    before = Path(target.lun_path(1)).read_bytes()[:4096]
    m = _mount_with(shared_dir, tgtd, target)
    try:
        portal: Path = m.portal  # type: ignore[attr-defined]
        # The owner (root here) can: the refusals below are about who asks.
        assert (portal / "status").read_text().startswith("connected")
        results = probe([("list", m.point), ("stat", m.point / "version"),
                         *_operations(m)], payload="login\n")
        assert set(results) <= REFUSED, dict(zip(
            ["list mount", "stat version", *[f"{o} {p.name}" for o, p in _operations(m)]],
            results, strict=True))
        # The same with the everyday tools, as a user would try.
        for argv in (["cat", str(portal / "status")], ["cat", str(portal / "lun1")],
                     ["ls", str(m.point)], ["ls", str(portal)],
                     ["sh", "-c", f"echo login > '{portal / 'control'}'"],
                     ["sh", "-c", f"echo logout > '{portal / 'control'}'"],
                     ["dd", "if=/dev/zero", f"of={portal / 'lun1'}", "bs=4096", "count=1",
                      "conv=notrunc", "status=none"]):
            r = as_nobody(*argv)
            assert r.returncode != 0, f"nobody ran {argv[:2]}"
            assert "Permission denied" in r.stderr or "not permitted" in r.stderr, r.stderr
        # Nothing nobody tried had an effect.
        assert (portal / "status").read_text().startswith("connected")
    finally:
        m.stop()
    assert Path(target.lun_path(1)).read_bytes()[:4096] == before


def test_with_allow_other_the_file_modes_still_refuse_nobody(shared_dir: Path, tgtd,
                                                             make_target) -> None:
    """allow_other opens the tree for reading directories; files stay the owner's (0400/0600
    with default_permissions)."""
    target = make_target(luns=(8 << 20,))
    m = _mount_with(shared_dir, tgtd, target, allow_other=True)
    try:
        portal: Path = m.portal  # type: ignore[attr-defined]
        assert as_nobody("ls", str(portal)).returncode == 0, "allow_other did not take effect"
        for node in (portal / "status", portal / "lun1", portal / "control"):
            st = node.stat()
            assert st.st_uid == os.getuid() and not stat.S_IMODE(st.st_mode) & 0o077, node
        results = probe(_operations(m), payload="logout\n")
        assert set(results) <= REFUSED, dict(zip(
            [f"{o} {p.name}" for o, p in _operations(m)], results, strict=True))
        assert (portal / "status").read_text().startswith("connected")
    finally:
        m.stop()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o666])
def test_a_config_with_secrets_that_others_can_read_is_repaired(tmp_path: Path,
                                                                mode: int) -> None:
    """As ssh does with keys, but repairing: the daemon sets 0600 and says so in its log,
    without the secret. (No target needed: the portal is never logged in to.)"""
    secret = "repair-Secret-7f3a9c2e"
    m = Mount(tmp_path, [PortalSpec("iqn.2024-01.org.iscsifs.test:repair", "127.0.0.1",
                                    free_port(), auto_login=False,
                                    chap=("repairuser", secret))])
    m.config.chmod(mode)
    m.start()
    try:
        assert stat.S_IMODE(m.config.stat().st_mode) == 0o600
    finally:
        m.stop()
    log = m.log.read_text()
    assert f"(mode {mode:04o}); changed its mode to 0600" in log
    assert secret not in log


def test_a_config_without_secrets_keeps_its_mode(tmp_path: Path) -> None:
    m = Mount(tmp_path, [PortalSpec("iqn.2024-01.org.iscsifs.test:plain", "127.0.0.1",
                                    free_port(), auto_login=False)])
    m.config.chmod(0o644)
    m.start()
    try:
        assert stat.S_IMODE(m.config.stat().st_mode) == 0o644
    finally:
        m.stop()
    assert "changed its mode" not in m.log.read_text()
