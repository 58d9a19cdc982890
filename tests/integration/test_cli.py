# The manual's command line end to end: `iscsifs <command>` run as users run it (a separate
# process) against a real mount of a real tgtd (and isnsd for -isns). Every command of the
# manual, its options, both output formats and each error message; adding a target nobody
# discovered yet, removing a logged-in one, a wrong discovery CHAP secret, a hand-written comment
# that survives the CLI's changes, a stopped daemon and no daemon at all.
#
# One mount and one tgtd serve the whole module (a mount costs seconds); each test removes what
# it added. Tests that change tgtd globally (a discovery CHAP account) use a tgtd of their own.

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testbed

from .conftest import require_tools

NOT_RUNNING = "ERROR. The daemon process does not appear to be running\n"
UNAVAILABLE = "ERROR. The daemon process is temporarily unavailable\n"
ALL_MIXED = 'ERROR. The "All" target names option cannot be used with other target names.\n'

INITIATOR = "iqn.2026-11.org.iscsifs:clitest"
PLAIN1 = "iqn.2024-01.org.iscsifs.test:cli-plain1"
PLAIN2 = "iqn.2024-01.org.iscsifs.test:cli-plain2"
ONEWAY = "iqn.2024-01.org.iscsifs.test:cli-oneway"
MUTUAL = "iqn.2024-01.org.iscsifs.test:cli-mutual"
ONEWAY_CHAP = ("cli-user1", "cli-secret-1111")
MUTUAL_CHAP = ("cli-user2", "cli-secret-2222")
MUTUAL_BACK = ("cli-target2", "cli-secret-3333")
SECRETS = ("cli-secret-1111", "cli-secret-2222", "cli-secret-3333", "wrong-secret-999")

CONFIG = f"""\
# iscsifs setup written by hand for tests/integration/test_cli.py
# (this comment must survive every change the CLI makes)

[initiator]
name = "{INITIATOR}"  # our name
boot_delay = 0

[mount]
point = "{{point}}"
"""


@dataclass
class Result:
    status: int
    out: str
    err: str


class CliMount:
    """A private config, runtime directory and mount point; `iscsifs mount` in the background
    (as a user runs it) and `iscsifs umount`, then SIGKILL by PID if that fails."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "iscsifs.toml"
        self.point = tmp / "mnt"
        self.log = tmp / "iscsifs.log"
        self.env = {**os.environ, "ISCSIFS_RUNTIME_DIR": str(tmp / "run"),
                    "ISCSIFS_CONFIG": str(self.config)}
        self.env.pop("ISCSIFS_TIMEOUT", None)
        self.pid: int | None = None

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        r = subprocess.run([sys.executable, "-m", "iscsifs.cli", *args],
                           env=env or self.env, capture_output=True, text=True, timeout=120)
        for secret in SECRETS:
            assert secret not in r.stdout + r.stderr, f"a secret was printed by {args[0]}"
        assert "Traceback" not in r.stderr
        return Result(r.returncode, r.stdout, r.stderr)

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert (r.status, r.err) == (0, ""), f"iscsifs {' '.join(args)}: {r.err}"
        return r.out

    def start(self) -> None:
        self.point.mkdir()
        self.config.write_text(CONFIG.format(point=self.point))
        self.config.chmod(0o600)
        self.ok("mount", "--config", str(self.config), "--log", str(self.log),
                str(self.point))
        import json

        self.pid = int(json.loads(next((self.tmp / "run").glob("*.json")).read_text())["pid"])

    def stop(self) -> None:
        if self.pid is None:
            return
        r = self.cli("umount", "--config", str(self.config))
        if r.status:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            subprocess.run(["fusermount3", "-uz", str(self.point)], check=False)
        self.pid = None

    def control(self, rel: str, line: str) -> str:
        fd = os.open(self.point / rel, os.O_RDWR)
        try:
            os.write(fd, (line + "\n").encode())
            return os.pread(fd, 65536, 0).decode()
        finally:
            os.close(fd)


@pytest.fixture(scope="module")
def tgt() -> Iterator[testbed.Tgtd]:
    """tgtd with two plain targets, one with one-way CHAP, one with mutual CHAP."""
    require_tools("tgtd", "tgtadm", "timeout", "fusermount3")
    with testbed.Tgtd() as daemon:
        daemon.start()
        daemon.add_target(PLAIN1, (8 << 20,))
        daemon.add_target(PLAIN2, (8 << 20,))
        # tgtd answers None to a digest offer unless the target allows CRC32C
        daemon.add_target(ONEWAY, (8 << 20,), chap=ONEWAY_CHAP,
                          params={"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"})
        daemon.add_target(MUTUAL, (8 << 20,), chap=MUTUAL_CHAP, mutual=MUTUAL_BACK)
        yield daemon


@pytest.fixture(scope="module")
def mnt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliMount]:
    m = CliMount(tmp_path_factory.mktemp("cli"))
    try:
        m.start()
        yield m
    finally:
        m.stop()


@pytest.fixture
def cli(mnt: CliMount, tgt: testbed.Tgtd) -> Iterator[CliMount]:
    """The module's mount, left with no targets added after each test."""
    yield mnt
    for line in (mnt.point / "targets" / "setup").read_text().splitlines():
        name, _tpgt, portal = line.split("\t")[:3]
        with contextlib.suppress(OSError):
            mnt.control("targets/control", f"remove {portal} {name}")


def portal_of(tgt: testbed.Tgtd) -> str:
    return tgt.portal


def tid(tgt: testbed.Tgtd, iqn: str) -> int:
    return next(t.tid for t in tgt.targets.values() if t.iqn == iqn)


def sessions(tgt: testbed.Tgtd, iqn: str) -> list[str]:
    return [n.initiator for n in tgt.sessions(tid(tgt, iqn))]


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------


def test_no_mount_gives_the_manuals_error(tmp_path: Path) -> None:
    m = CliMount(tmp_path)
    for args in (["getInitiatorName"], ["listTargetsSetup", "All"],
                 ["loginTargets", "-address", "127.0.0.1", "All"]):
        assert m.cli(*args) == Result(1, "", NOT_RUNNING)


def test_help_and_version(tmp_path: Path) -> None:
    m = CliMount(tmp_path)
    out = m.ok("help")
    for name in ("addTargets", "discoverTargets", "getInitiatorName", "getBootDelay", "help",
                 "listTargetsSetup", "listTargetsStatus", "loginTargets", "logoutTargets",
                 "removeTargets", "setBootDelay", "setInitiatorName", "version"):
        assert f"\n  {name}" in out
    assert m.ok("version").startswith("iscsifs ")
    r = m.cli("Help")
    assert r.status == 2 and "did you mean help?" in r.err


def test_initiator_name_and_boot_delay_keep_the_hand_written_comments(cli: CliMount) -> None:
    assert cli.ok("getInitiatorName") == INITIATOR + "\n"
    assert cli.ok("getBootDelay") == "0\n"
    try:
        assert cli.ok("setInitiatorName", "renamed-1") == ""
        assert cli.ok("getInitiatorName") == "iqn.2026-11.org.iscsifs:renamed-1\n"
        assert cli.ok("getInitiatorName", "-verbose") == (
            "Initiator Name: iqn.2026-11.org.iscsifs:renamed-1\n"
            "Prefix: iqn.2026-11.org.iscsifs:\n"
            "Suffix: renamed-1 (the part setInitiatorName sets)\n")
        assert cli.ok("setBootDelay", "7") == ""
        assert cli.ok("getBootDelay") == "7\n"
        assert cli.cli("setBootDelay", "-1").status == 2
        assert cli.cli("setInitiatorName", "has space").status == 2
        assert cli.ok("getBootDelay") == "7\n"
        text = cli.config.read_text()
        assert text.startswith("# iscsifs setup written by hand for tests/integration/"
                               "test_cli.py\n# (this comment must survive")
        assert 'name = "iqn.2026-11.org.iscsifs:renamed-1"  # our name\n' in text
        assert "boot_delay = 7\n" in text
        assert (cli.point / "initiator" / "boot_delay").read_text() == "7\n"
    finally:
        cli.ok("setInitiatorName", INITIATOR.split(":", 1)[1])
        cli.ok("setBootDelay", "0")


def test_discover_targets_both_formats(cli: CliMount, tgt: testbed.Tgtd) -> None:
    p = portal_of(tgt)
    lines = cli.ok("discoverTargets", "-address", p).splitlines()
    assert sorted(lines) == sorted(f"{n}\t1\t{p}" for n in (PLAIN1, PLAIN2, ONEWAY, MUTUAL))
    verbose = cli.ok("discoverTargets", "-verbose", "-address", p)
    assert f"***** Name:\n{PLAIN1} Port Group Tag: 1\nAddress: {p}\n" in verbose
    assert verbose.count("***** Name:\n") == 4
    # what the CLI printed is what discovery/targets shows, with how it was found
    shown = (cli.point / "discovery" / "targets").read_text()
    assert f"{PLAIN1}\t1\t{p}\tSendTargets {p}\n" in shown


def test_discovery_errors(cli: CliMount) -> None:
    closed = testbed.free_port()
    r = cli.cli("discoverTargets", "-address", f"127.0.0.1:{closed}")
    assert r.status == 1 and r.out == ""
    assert r.err.startswith(f"ERROR. discovery at 127.0.0.1:{closed} failed: ")
    assert r.err.count("\n") == 1
    for address in ("127.0.0.1:0", "127.0.0.1:70000", "[::1"):
        r = cli.cli("discoverTargets", "-address", address)
        assert r.status == 2 and r.err.startswith("ERROR. -address: ")


def test_lifecycle_add_list_login_status_logout_remove(cli: CliMount, tgt: testbed.Tgtd) -> None:
    p = portal_of(tgt)
    assert cli.ok("addTargets", "-address", p, PLAIN1, PLAIN2) == ""
    assert cli.ok("listTargetsSetup", "All") == (
        f"{PLAIN1}\t1\t{p}\tNo\n{PLAIN2}\t1\t{p}\tNo\n")
    assert cli.ok("listTargetsSetup", "-address", p, "-verbose", PLAIN1) == (
        f"***** Name:\n{PLAIN1} Port Group Tag: 1\nAddress: {p} Auto Login: No\n")
    assert cli.ok("listTargetsStatus", "All") == (
        f"{PLAIN1}\t1\t{p}\tfalse\n{PLAIN2}\t1\t{p}\tfalse\n")

    assert cli.ok("loginTargets", "-address", p, "All") == ""
    assert sessions(tgt, PLAIN1) == [INITIATOR] and sessions(tgt, PLAIN2) == [INITIATOR]
    assert cli.ok("listTargetsStatus", "All") == (
        f"{PLAIN1}\t1\t{p}\ttrue\n{PLAIN2}\t1\t{p}\ttrue\n")
    assert cli.ok("listTargetsStatus", "-verbose", PLAIN2) == (
        f"***** Name:\n{PLAIN2} Port Group Tag: 1\nAddress: {p} Connection Status: true\n")
    # -address: the list comes from the target itself, so targets not added show too
    assert sorted(cli.ok("listTargetsStatus", "-address", p, "All").splitlines()) == sorted([
        f"{PLAIN1}\t1\t{p}\ttrue", f"{PLAIN2}\t1\t{p}\ttrue",
        f"{ONEWAY}\t1\t{p}\tfalse", f"{MUTUAL}\t1\t{p}\tfalse"])
    # logging in again is harmless
    assert cli.ok("loginTargets", "-address", p, PLAIN1) == ""

    assert cli.ok("logoutTargets", "-address", p, PLAIN2) == ""
    wait_until(lambda: sessions(tgt, PLAIN2) == [])
    assert cli.ok("listTargetsStatus", "All") == (
        f"{PLAIN1}\t1\t{p}\ttrue\n{PLAIN2}\t1\t{p}\tfalse\n")
    assert "[[target]]" in cli.config.read_text()

    # removing a logged-in target logs it out and forgets it
    assert cli.ok("removeTargets", "-address", p, PLAIN1) == ""
    wait_until(lambda: sessions(tgt, PLAIN1) == [])
    assert cli.ok("listTargetsSetup", "All") == f"{PLAIN2}\t1\t{p}\tNo\n"
    assert not (cli.point / "targets" / PLAIN1).exists()
    assert cli.ok("removeTargets", p, "All") == ""  # the summary's form, address first
    assert cli.ok("listTargetsSetup", "All") == ""
    assert "[[target]]" not in cli.config.read_text()
    assert cli.config.read_text().startswith("# iscsifs setup written by hand")


def test_add_and_remove_errors(cli: CliMount, tgt: testbed.Tgtd) -> None:
    p = portal_of(tgt)
    missing = "iqn.2024-01.org.iscsifs.test:nowhere"
    assert cli.ok("addTargets", "-address", p, PLAIN1) == ""
    assert cli.cli("addTargets", "-address", p, PLAIN1) == Result(
        1, "", f'ERROR. Target "{PLAIN1}" has already been added.\n')
    # one added, one already there, one nowhere: each failure gets its line
    r = cli.cli("addTargets", "-address", p, PLAIN1, PLAIN2, missing)
    assert r == Result(1, "", f'ERROR. Target "{missing}" was not discovered at {p}.\n'
                              f'ERROR. Target "{PLAIN1}" has already been added.\n')
    assert cli.ok("listTargetsSetup", PLAIN2) == f"{PLAIN2}\t1\t{p}\tNo\n"
    assert cli.cli("addTargets", "-address", p, "All", PLAIN1) == Result(2, "", ALL_MIXED)
    assert cli.cli("loginTargets", "-address", p, PLAIN1, "All") == Result(2, "", ALL_MIXED)
    assert cli.cli("loginTargets", "-address", p, missing) == Result(
        1, "", f'ERROR. Target "{missing}" has not been added at {p}.\n')
    assert cli.cli("logoutTargets", "-address", "127.0.0.9", "All") == Result(
        1, "", "ERROR. No targets have been added at 127.0.0.9:3260.\n")
    assert cli.cli("removeTargets", "-address", p, missing) == Result(
        1, "", f'ERROR. Target "{missing}" has not been added at {p}.\n')
    assert cli.cli("listTargetsSetup", missing) == Result(
        1, "", f'ERROR. Target "{missing}" has not been added.\n')
    r = cli.cli("addTargets", "-Address", p, "All")
    assert r.status == 2 and "did you mean -address?" in r.err


def test_add_a_target_nobody_discovered_yet(cli: CliMount, tgt: testbed.Tgtd) -> None:
    # created after every other discovery: addTargets must discover it itself
    late = "iqn.2024-01.org.iscsifs.test:cli-late"
    tgt.add_target(late, (4 << 20,))
    assert late not in (cli.point / "discovery" / "targets").read_text()
    p = portal_of(tgt)
    assert cli.ok("addTargets", "-address", p, late, "-autoLogin", "Yes") == ""
    assert cli.ok("listTargetsSetup", late) == f"{late}\t1\t{p}\tYes\n"
    text = cli.config.read_text()
    assert f'name = "{late}"' in text and "auto_login = true" in text
    assert cli.ok("loginTargets", "-address", p, late) == ""
    assert (cli.point / "targets" / late / p / "status").read_text().startswith("connected\n")
    assert cli.ok("logoutTargets", "-address", p, late) == ""


def test_chap_login_with_session_and_connection_options(cli: CliMount,
                                                        tgt: testbed.Tgtd) -> None:
    p = portal_of(tgt)
    user, secret = ONEWAY_CHAP
    assert cli.ok("addTargets", "-address", p, ONEWAY,
                  "-security", f"CHAP,TargetUserName={user},TargetSecret={secret}",
                  "-session", "ImmediateData=No,MaxBurstLength=131072,FirstBurstLength=65536",
                  "-connection", "HeaderDigest=CRC32C,DataDigest=CRC32C,"
                                 "MaxRecvDataSegmentLength=65536") == ""
    assert cli.ok("loginTargets", "-address", p, ONEWAY) == ""
    assert sessions(tgt, ONEWAY) == [INITIATOR]
    params = dict(line.split("=", 1) for line in
                  (cli.point / "targets" / ONEWAY / p / "params").read_text().splitlines())
    assert params["HeaderDigest"] == "CRC32C" and params["DataDigest"] == "CRC32C"
    assert params["MaxBurstLength"] == "131072" and params["ImmediateData"] == "No"
    setup = (cli.point / "targets" / ONEWAY / p / "setup").read_text()
    assert f"security: CHAP,TargetUserName={user}\n" in setup
    assert cli.ok("listTargetsStatus", ONEWAY) == f"{ONEWAY}\t1\t{p}\ttrue\n"
    # the secret is saved for the next start, in a file only we can read
    assert cli.config.stat().st_mode & 0o777 == 0o600
    assert f'target_secret = "{secret}"' in cli.config.read_text()


def test_mutual_chap_with_separate_discovery_security(cli: CliMount,
                                                      tgt: testbed.Tgtd) -> None:
    p = portal_of(tgt)
    security = (f"CHAP,TargetUserName={MUTUAL_CHAP[0]},TargetSecret={MUTUAL_CHAP[1]},"
                f"InitiatorUserName={MUTUAL_BACK[0]},InitiatorSecret={MUTUAL_BACK[1]},"
                "MutualAuthentication=Yes")
    assert cli.ok("addTargets", "-address", p, MUTUAL, "-security", security,
                  "-discoverySecurity", "NONE") == ""
    assert cli.ok("loginTargets", "-address", p, "All") == ""
    assert sessions(tgt, MUTUAL) == [INITIATOR]
    setup = (cli.point / "targets" / MUTUAL / p / "setup").read_text()
    assert "discovery security: None\n" in setup
    assert "MutualAuthentication=Yes" in setup


def test_login_with_a_wrong_chap_secret(cli: CliMount, tgt: testbed.Tgtd) -> None:
    p = portal_of(tgt)
    assert cli.ok("addTargets", "-address", p, ONEWAY, "-security",
                  f"CHAP,TargetUserName={ONEWAY_CHAP[0]},TargetSecret=wrong-secret-999") == ""
    r = cli.cli("loginTargets", "-address", p, ONEWAY)
    assert r.status == 1 and r.out == "" and r.err.count("\n") == 1
    assert r.err.startswith("ERROR. ") and "auth" in r.err.lower()
    assert sessions(tgt, ONEWAY) == []
    assert cli.ok("listTargetsStatus", ONEWAY) == f"{ONEWAY}\t1\t{p}\tfalse\n"


def test_discovery_chap(cli: CliMount, tgtd: testbed.Tgtd,
                        make_target: Callable[..., testbed.Target]) -> None:
    """A tgtd whose discovery sessions need CHAP (a global account binding)."""
    target = make_target(luns=(4 << 20,))
    tgtd.tgtadm("--lld", "iscsi", "--mode", "account", "--op", "new", "--user", "cli-disc",
                "--password", "cli-secret-2222")
    tgtd.tgtadm("--lld", "iscsi", "--mode", "account", "--op", "bind", "--user", "cli-disc")
    p = tgtd.portal
    wrong = "CHAP,TargetUserName=cli-disc,TargetSecret=wrong-secret-999"
    right = "CHAP,TargetUserName=cli-disc,TargetSecret=cli-secret-2222"
    r = cli.cli("discoverTargets", "-address", p, "-security", wrong)
    assert r.status == 1 and r.out == "" and r.err.count("\n") == 1
    assert r.err.startswith(f"ERROR. discovery at {p} failed: ") and "auth" in r.err.lower()
    r = cli.cli("discoverTargets", "-address", p)
    assert r.status == 1 and r.err.startswith(f"ERROR. discovery at {p} failed: ")
    assert cli.ok("discoverTargets", "-address", p, "-security", right) == (
        f"{target.iqn}\t1\t{p}\n")
    assert cli.ok("listTargetsStatus", "-address", p, "-discoverySecurity", right, "All") == (
        f"{target.iqn}\t1\t{p}\tfalse\n")
    assert cli.cli("listTargetsStatus", "-address", p, "-discoverySecurity", wrong,
                   "All").status == 1
    # the target itself needs no CHAP: discovery security only (-security left out)
    assert cli.ok("addTargets", "-address", p, "All", "-discoverySecurity", right) == ""
    assert cli.ok("loginTargets", "-address", p, "All") == ""
    assert cli.ok("listTargetsStatus", "-address", p, "-discoverySecurity", right, "All") == (
        f"{target.iqn}\t1\t{p}\ttrue\n")


def test_isns_discovery(cli: CliMount, tgt: testbed.Tgtd, isnsd: testbed.Isnsd) -> None:
    host, port = tgt.portal.rsplit(":", 1)
    isnsd.register("cli-entity", host, int(port), PLAIN2, pgt=1)
    out = cli.ok("discoverTargets", "-isns", "-address", isnsd.address)
    assert out == f"{PLAIN2}\t1\t{tgt.portal}\n"
    assert cli.ok("discoverTargets", "-verbose", "-isns", "-address", isnsd.address) == (
        f"***** Name:\n{PLAIN2} Port Group Tag: 1\nAddress: {tgt.portal}\n")
    assert f"iSNS {isnsd.address}" in (cli.point / "discovery" / "targets").read_text()
    assert cli.ok("addTargets", "-address", tgt.portal, PLAIN2) == ""
    assert cli.ok("listTargetsSetup", PLAIN2) == f"{PLAIN2}\t1\t{tgt.portal}\tNo\n"
    r = cli.cli("discoverTargets", "-isns", "-address", f"127.0.0.1:{testbed.free_port()}")
    assert r.status == 1 and r.err.startswith("ERROR. iSNS discovery at 127.0.0.1:")


def test_a_stopped_daemon_is_temporarily_unavailable(cli: CliMount) -> None:
    assert cli.pid is not None
    os.kill(cli.pid, signal.SIGSTOP)
    try:
        r = cli.cli("getBootDelay", env={**cli.env, "ISCSIFS_TIMEOUT": "1"})
    finally:
        os.kill(cli.pid, signal.SIGCONT)
    assert r == Result(1, "", UNAVAILABLE)
    assert cli.ok("getBootDelay") == "0\n"


def test_a_host_name_address(cli: CliMount, tgt: testbed.Tgtd) -> None:
    # tgtd answers SendTargets with its IP address; "localhost" must still find it
    port = tgt.port
    named = f"localhost:{port}"
    p = f"127.0.0.1:{port}"
    assert cli.ok("addTargets", "-address", named, PLAIN1) == ""
    assert cli.ok("listTargetsSetup", "-address", named, "All") == f"{PLAIN1}\t1\t{p}\tNo\n"
    assert cli.ok("loginTargets", "-address", named, PLAIN1) == ""
    assert cli.ok("listTargetsStatus", "-address", named, PLAIN1) == f"{PLAIN1}\t1\t{p}\ttrue\n"
    assert cli.ok("removeTargets", "-address", named, "All") == ""
    wait_until(lambda: sessions(tgt, PLAIN1) == [])
    assert cli.ok("listTargetsSetup", "All") == ""


def test_ipv6_addresses(cli: CliMount) -> None:
    require_tools("tgtd")
    with testbed.Tgtd(hosts=("::1",)) as six:
        six.start()
        target = six.add_target("iqn.2024-01.org.iscsifs.test:cli-six", (4 << 20,))
        p = f"[::1]:{six.port}"
        assert cli.ok("discoverTargets", "-address", p) == f"{target.iqn}\t1\t{p}\n"
        assert cli.ok("addTargets", "-address", p, "All") == ""
        assert cli.ok("listTargetsSetup", "-address", f"[0::1]:{six.port}", "All") == (
            f"{target.iqn}\t1\t{p}\tNo\n")
        assert cli.ok("loginTargets", "-address", p, "All") == ""
        assert [n.initiator for n in six.sessions(target.tid)] == [INITIATOR]
        assert cli.ok("listTargetsStatus", target.iqn) == f"{target.iqn}\t1\t{p}\ttrue\n"
        assert cli.ok("removeTargets", "-address", p, target.iqn) == ""
        wait_until(lambda: six.sessions(target.tid) == [])
