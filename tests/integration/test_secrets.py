# Secrets stay secret through a whole run that uses them (issue 7, part 3): a real tgtd target
# with mutual CHAP, a real mount that logs in to it, a login that fails on a wrong secret, the
# CLI's discovery and listings with -security strings, a target added through the CLI (which
# makes the daemon save the config), every file of the tree, the daemon's log file, its stderr
# and the CLI's stdout/stderr. Every byte of all that is scanned for every secret used, in raw,
# hex and base64 forms. Also: the saved config is mode 0600, and a short secret draws the
# manual's warning without being shown.

from __future__ import annotations

import base64
import errno
import os
import secrets
import stat
import time
from pathlib import Path

import pytest

from iscsifs.proto.chap import Secret, secret_warnings

from .mounting import Mount, PortalSpec

MiB = 1 << 20


def _token(prefix: str) -> str:
    # Printable, no spaces, > 12 characters (the manual's rules), unique to this run so that a
    # hit in the scanned output cannot be a coincidence.
    return f"{prefix}{secrets.token_hex(8)}"


def secret_forms(secret: str) -> dict[str, bytes]:
    raw = secret.encode()
    b64 = base64.b64encode(raw)
    return {
        "raw": raw,
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "0x-hex": b"0x" + raw.hex().encode(),
        "base64": b64,
        "base64 unpadded": b64.rstrip(b"="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


class Transcript:
    """Everything a user or an administrator could see during the run, by where it came from."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def add(self, where: str, data: str | bytes) -> None:
        self.parts.append((where, data.encode("utf-8", "surrogateescape")
                           if isinstance(data, str) else data))

    def cli(self, mount: Mount, *args: str, timeout: float = 90) -> tuple[int, str, str]:
        r = mount.cli(*args, timeout=timeout)
        label = "iscsifs " + " ".join(a if "Secret=" not in a else "<-security>" for a in args)
        self.add(f"stdout of {label}", r.stdout)
        self.add(f"stderr of {label}", r.stderr)
        assert "Traceback" not in r.stdout + r.stderr, f"{label} printed a traceback"
        return r.returncode, r.stdout, r.stderr

    def read_tree(self, root: Path) -> int:
        """Read every file under the mount except LUN contents; return how many were read."""
        n = 0
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if name.startswith("lun") and name[3:].isdigit():
                    continue
                try:
                    data = path.read_bytes()
                except OSError as e:
                    data = f"<{e.strerror}>".encode()
                self.add(f"tree file {path.relative_to(root)}", data)
                n += 1
        return n

    def leaks(self, named_secrets: dict[str, str]) -> list[str]:
        found = []
        for label, secret in named_secrets.items():
            for form, needle in secret_forms(secret).items():
                for where, data in self.parts:
                    if needle in data:
                        found.append(f"{label} ({form}) in {where}")
        return found


def _wait(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _security(user: str, secret: str, mutual: tuple[str, str] | None = None) -> str:
    out = f"CHAP,TargetUserName={user},TargetSecret={secret}"
    if mutual is not None:
        out += (f",InitiatorUserName={mutual[0]},InitiatorSecret={mutual[1]},"
                "MutualAuthentication=Yes")
    return out


def test_a_run_with_secrets_never_shows_one(tmp_path: Path, tgtd, make_target) -> None:
    host, port_text = tgtd.portal.rsplit(":", 1)
    port = int(port_text)
    at = f"{host}:{port}"
    named = {
        "target secret": _token("tgtSecret-"),
        "mutual secret": _token("mutSecret-"),
        "wrong secret": _token("badSecret-"),
        "second target secret": _token("t2Secret-"),
        "added target secret": _token("addSecret-"),
        "added mutual secret": _token("addMutual-"),
        "short secret": "Zq7#x9!k",
    }
    good = make_target(chap=("fuzzinit", named["target secret"]),
                       mutual=("fuzztgt", named["mutual secret"]))
    refused = make_target(chap=("otherinit", named["second target secret"]))
    added = make_target(chap=("addinit", named["added target secret"]),
                        mutual=("addtgt", named["added mutual secret"]))
    portals = [
        PortalSpec(good.iqn, host, port, chap=("fuzzinit", named["target secret"]),
                   mutual=("fuzztgt", named["mutual secret"])),
        PortalSpec(refused.iqn, host, port, chap=("otherinit", named["wrong secret"])),
        # Never logged in: only there so the config holds a secret that breaks the guidelines.
        PortalSpec("iqn.2024-01.org.iscsifs.test:short-secret", host, port, auto_login=False,
                   chap=("shortinit", named["short secret"])),
    ]
    out = Transcript()
    mount = Mount(tmp_path, portals)
    try:
        mount.start()
        good_dir = mount.portal_dir(good.iqn, host, port)
        refused_dir = mount.portal_dir(refused.iqn, host, port)

        # A real login with mutual CHAP, and real I/O through it.
        mount.wait_for(good_dir / "lun1")
        with open(good_dir / "lun1", "rb") as f:
            assert len(f.read(MiB)) == MiB
        assert (good_dir / "status").read_text().splitlines()[0] == "connected"

        # The wrong secret: the automatic login fails, and so does an explicit one.
        _wait(lambda: "authentication" in (refused_dir / "status").read_text(),
              "the failed login to show in status")
        with pytest.raises(OSError) as failed:
            (refused_dir / "control").write_text("login\n")
        out.add("errno text of a failed login", f"{failed.value}")
        assert not (refused_dir / "lun1").exists()

        # The CLI: discovery with and without the right secrets, listings, an addition.
        # tgtd 1.0.85 has no discovery authentication (no accounts for "tid 0"): offered
        # CHAP or None, it picks None; offered only CHAP (mutual), it answers Reject.
        one_way = _security("fuzzinit", named["target secret"])
        code, stdout, stderr = out.cli(mount, "discoverTargets", "-address", at, "-security",
                                       one_way)
        assert code == 0 and good.iqn in stdout, stdout + stderr
        mutual_sec = _security("fuzzinit", named["target secret"],
                               ("fuzztgt", named["mutual secret"]))
        code, stdout, stderr = out.cli(mount, "discoverTargets", "-address", at, "-verbose",
                                       "-security", mutual_sec)
        assert code != 0 and "CHAP" in stderr, stdout + stderr
        out.cli(mount, "discoverTargets", "-address", at, "-security",
                _security("fuzzinit", named["wrong secret"], ("fuzztgt", named["mutual secret"])))
        out.cli(mount, "discoverTargets", "-address", at, "-security",
                _security("fuzzinit", named["wrong secret"]))
        # Broken -security strings: the error must not echo what may be a secret.
        for broken in (f"CHAP,TargetUserName=u,TargetSecret={named['wrong secret']},junk",
                       f"CHAP,TargetSecret={named['wrong secret']}",
                       f"{named['wrong secret']},TargetUserName=u",
                       f"CHAP,TargetUserName=u,TargetSecret=ab,{named['wrong secret']}",
                       f"CHAP,TargetUserName=u,TargetSecret={named['wrong secret']}\\q"):
            code, _, _ = out.cli(mount, "discoverTargets", "-address", at, "-security", broken)
            assert code == 2
        # The same through the control file, as `echo` would write it.
        with pytest.raises(OSError) as refused_discovery:
            (mount.point / "discovery" / "control").write_text(
                f"sendtargets {at} -security {mutual_sec}\n")
        out.add("errno text of a refused discovery", f"{refused_discovery.value}")
        code, _, stderr = out.cli(
            mount, "addTargets", "-address", at, "-autoLogin", "Yes",
            "-security", _security("addinit", named["added target secret"],
                                   ("addtgt", named["added mutual secret"])),
            "-discoverySecurity", _security("addinit", named["added target secret"]),
            added.iqn)
        assert code == 0, stderr
        added_dir = mount.portal_dir(added.iqn, host, port)
        if not (added_dir / "lun1").exists():
            out.cli(mount, "loginTargets", "-address", at, added.iqn)
        mount.wait_for(added_dir / "lun1")
        for args in (("listTargetsSetup", "-verbose", "All"), ("listTargetsStatus", "All"),
                     ("listTargetsStatus", "-verbose", "All"), ("getInitiatorName", "-verbose"),
                     ("listTargetsStatus", "-address", at, "-discoverySecurity", one_way,
                      "All")):
            out.cli(mount, *args)

        # The daemon saved the config with the added target's secrets: owner-only.
        mode = stat.S_IMODE(mount.config.stat().st_mode)
        assert mode == 0o600, f"config saved with mode {mode:04o}"
        saved = mount.config.read_text()
        assert named["added target secret"] in saved  # it is the store; hence the mode

        assert out.read_tree(mount.point) >= 20
    finally:
        mount.stop()
        if mount.proc is not None and mount.proc.stderr is not None:
            out.add("the daemon's stderr", mount.proc.stderr.read())
    log = mount.log.read_bytes()
    out.add("the daemon's log file", log)
    assert b"Traceback" not in log, "the daemon logged a traceback"
    # The short secret drew the manual's warning, without being shown.
    assert b"longer than 12 characters" in log
    leaks = out.leaks(named)
    assert not leaks, "secrets shown:\n" + "\n".join(leaks)


def test_secret_warnings_follow_the_manual_without_showing_the_secret() -> None:
    short = "Zq7#x9!k"
    warnings = secret_warnings(Secret(short))
    assert any("longer than 12 characters" in w for w in warnings)
    assert not any(short in w for w in warnings)
    spaced = "has a space in it 1234"
    warned = secret_warnings(Secret(spaced))
    assert any("space" in w for w in warned) and not any(spaced in w for w in warned)
    odd = "n\u00f6n-ascii-secret-123"
    warned = secret_warnings(odd)
    assert any("printable ASCII" in w for w in warned) and not any(odd in w for w in warned)
    assert secret_warnings(Secret("Good-Secret-1234")) == []


def test_the_scan_finds_each_form_it_looks_for() -> None:
    """The scanner itself: a secret in any of its forms, anywhere, is reported."""
    secret = "probe-Secret-0123"
    for form, needle in secret_forms(secret).items():
        t = Transcript()
        t.add("clean", "nothing to see")
        t.add("dirty", b"x" + needle + b"y")
        assert f"probe ({form}) in dirty" in t.leaks({"probe": secret})
        assert not any("clean" in hit for hit in t.leaks({"probe": secret}))


@pytest.mark.parametrize("where, line", [
    ("portal", "unmap lun\u00b2 0 4096"),
    ("discovery", 'sendtargets "127.0.0.1 -security CHAP,TargetUserName=u,'
                  "TargetSecret=quote-Secret-1234"),
    ("targets", "add 127.0.0.1 'iqn.2024-01.x:y"),
    ("portal", "unmap lun1 x y"),
    ("portal", "login now"),
    ("discovery", "sendtargets 127.0.0.1 -security CHAP,TargetSecret=quote-Secret-1234"),
])
def test_bad_control_lines_get_a_one_line_error(tmp_path: Path, tgtd, make_target,
                                                where: str, line: str) -> None:
    """A malformed command written to a control file fails that write with EINVAL and one log
    line; no traceback (which is where a secret typed in the line could end up)."""
    target = make_target(luns=(8 << 20,))
    host, port = tgtd.portal.rsplit(":", 1)
    with Mount(tmp_path, [PortalSpec(target.iqn, host, int(port))]) as m:
        portal = m.portal_dir(target.iqn, host, int(port))
        m.wait_for(portal / "lun1")
        control = {"portal": portal / "control", "discovery": m.point / "discovery" / "control",
                   "targets": m.point / "targets" / "control"}[where]
        with pytest.raises(OSError) as e:
            control.write_text(line + "\n")
        assert e.value.errno == errno.EINVAL, e.value
    log = m.log.read_text()
    assert "Traceback" not in log
    assert "quote-Secret-1234" not in log
