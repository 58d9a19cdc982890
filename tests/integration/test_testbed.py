# Proves the test bed (scripts/testbed.py) with a reference initiator, libiscsi's tools and
# QEMU's libiscsi block driver (qemu-io): never a dependency of iscsifs, only the witness that
# the targets, CHAP, LUN sizes, faults, iSNS registrations and captures the bed sets up are
# what other tests believe they are. Owns no product code.

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testbed

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TOOL_TIMEOUT = 30
MiB = 1 << 20


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    if check:
        assert r.returncode == 0, f"{argv}: rc={r.returncode} {r.stdout!r} {r.stderr!r}"
    return r


def capacity(url: str) -> int:
    out = run("iscsi-readcapacity16", "-s", url).stdout.split()
    return int(out[-1])


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll a state with a deadline (readiness, not timing: nothing asserts how long)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


# ----------------------------------------------------------------------------- tgtd


def test_no_auth_target_answers_iscsi_ls_and_inquiry(tgtd, make_target) -> None:
    target = make_target([64 * MiB])
    listing = run("iscsi-ls", "-s", tgtd.url(target)).stdout
    assert f"Target:{target.iqn} Portal:{tgtd.portal},1" in listing
    assert "Lun:1    Type:DIRECT_ACCESS" in listing
    inquiry = run("iscsi-inq", tgtd.url(target, 1)).stdout
    assert "Peripheral Device Type:DIRECT_ACCESS" in inquiry
    assert "Vendor:IET" in inquiry
    # The exact tgtadm commands are recorded, the required ACL bind among them.
    bind = [
        "tgtadm",
        "-C",
        str(tgtd.control),
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "bind",
        "--tid",
        str(target.tid),
        "--initiator-address",
        "ALL",
    ]
    assert bind in tgtd.commands


def test_two_luns_report_their_exact_sizes(tgtd, make_target) -> None:
    target = make_target([64 * MiB, "32M"])
    assert capacity(tgtd.url(target, 1)) == 64 * MiB
    assert capacity(tgtd.url(target, 2)) == 32 * MiB
    (info,) = tgtd.show()
    assert info.iqn == target.iqn
    assert [(lun.lun, lun.type) for lun in info.luns] == [
        (0, "controller"),
        (1, "disk"),
        (2, "disk"),
    ]
    assert [lun.backing_path for lun in info.luns[1:]] == [target.lun_path(1), target.lun_path(2)]
    # Sparse backing files on /dev/shm with the bed's own prefix.
    for lun in target.luns.values():
        st = os.stat(lun.path)
        assert lun.path.startswith("/dev/shm/iscsifs-tb-")
        assert st.st_size == lun.size and st.st_blocks == 0


def test_add_and_remove_lun(tgtd, make_target) -> None:
    target = make_target([8 * MiB])
    lun = tgtd.add_lun(target.tid, 16 * MiB)
    assert lun.lun == 2
    assert capacity(tgtd.url(target, 2)) == 16 * MiB
    tgtd.remove_lun(target.tid, 2)
    assert [x.lun for x in tgtd.show()[0].luns] == [0, 1]
    assert "Lun:2" not in run("iscsi-ls", "-s", tgtd.url(target)).stdout


def test_one_way_chap_right_secret_works_wrong_and_none_fail(tgtd, make_target) -> None:
    target = make_target(chap=("alice", "alicesecret12"))
    assert run("iscsi-inq", tgtd.url(target, 1)).returncode == 0
    wrong = run("iscsi-inq", tgtd.url(target, 1, chap=("alice", "notthesecret")), check=False)
    assert wrong.returncode != 0
    assert "Authentication failure" in wrong.stderr
    bare = f"iscsi://{tgtd.portal}/{target.iqn}/1"
    assert run("iscsi-inq", bare, check=False).returncode != 0
    (info,) = tgtd.show()
    assert info.accounts == ["alice"]


def test_mutual_chap(tgtd, make_target) -> None:
    target = make_target(chap=("bob", "bobsecret1234"), mutual=("tgt", "targetsecret1"))
    url = tgtd.url(target, 1)
    assert "target_user=tgt&target_password=targetsecret1" in url
    assert run("iscsi-inq", url).returncode == 0
    bad = run("iscsi-inq", tgtd.url(target, 1, mutual=("tgt", "wrongsecret99")), check=False)
    assert bad.returncode != 0
    assert "CHAP_R" in bad.stderr  # the initiator rejects the target's answer
    (info,) = tgtd.show()
    assert info.accounts == ["bob", "tgt (outgoing)"]


def test_several_portals_ipv4_and_ipv6() -> None:
    with testbed.Tgtd(hosts=["127.0.0.1", "127.0.0.2", "::1"]) as daemon:
        daemon.start()
        target = daemon.add_target("iqn.2024-01.org.iscsifs.test:portals", [4 * MiB])
        assert daemon.portals == [
            f"127.0.0.1:{daemon.port}",
            f"127.0.0.2:{daemon.port}",
            f"[::1]:{daemon.port}",
        ]
        for host, portal in zip(daemon.hosts, daemon.portals, strict=True):
            listing = run("iscsi-ls", daemon.url(target, host=host)).stdout
            # SendTargets answers with the portal the discovery connection came in on.
            assert f"Portal:{portal},1" in listing


def test_restart_keeps_data_and_configuration(tgtd, make_target) -> None:
    target = make_target([16 * MiB], chap=("carol", "carolsecret12"), params={"nop_interval": 5})
    url = tgtd.url(target, 1)
    # Written through iSCSI (QEMU's libiscsi driver) ...
    run("qemu-io", "-f", "raw", "-c", "write -P 0xa5 4096 65536", url)
    # ... and straight into the backing file.
    with open(target.lun_path(1), "r+b") as f:
        f.seek(MiB)
        f.write(b"\x5a" * 8192)
    old_pid, port, control = tgtd.pid, tgtd.port, tgtd.control
    # A session open across the kill: the port must still be free to bind again at once.
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: tgtd.sessions(target.tid), "a session appears")
        tgtd.restart()
    finally:
        holder.kill()
        holder.wait()
    assert gone(old_pid)
    assert (tgtd.port, tgtd.control) == (port, control) and tgtd.pid != old_pid
    assert run("qemu-io", "-f", "raw", "-c", "read -P 0xa5 4096 65536", url).returncode == 0
    assert run("qemu-io", "-f", "raw", "-c", f"read -P 0x5a {MiB} 8192", url).returncode == 0
    mismatch = run("qemu-io", "-f", "raw", "-c", "read -P 0xa6 4096 4096", url, check=False)
    assert mismatch.returncode != 0  # the pattern check can fail: it did compare
    (info,) = tgtd.show()
    assert (info.tid, info.iqn, info.accounts, info.acl) == (
        target.tid,
        target.iqn,
        ["carol"],
        ["ALL"],
    )
    nop = [
        "tgtadm",
        "-C",
        str(control),
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "update",
        "--tid",
        str(target.tid),
        "--name",
        "nop_interval",
        "--value",
        "5",
    ]
    assert tgtd.commands.count(nop) == 2  # set again after the restart


def test_kill_refuses_connections(tgtd, make_target) -> None:
    target = make_target()
    pid = tgtd.pid
    tgtd.kill()
    assert gone(pid)
    assert run("iscsi-ls", tgtd.url(target), check=False).returncode != 0


def test_stop_and_cont(tgtd, make_target) -> None:
    target = make_target()
    tgtd.stop()
    assert tgtd.state == "T"
    tgtd.cont()
    assert tgtd.state in ("S", "R")
    assert run("iscsi-inq", tgtd.url(target, 1)).returncode == 0


def test_sessions_update_and_delete_connection(tgtd, make_target) -> None:
    target = make_target()
    tgtd.update(target.tid, "MaxRecvDataSegmentLength", 65536)
    assert target.params == {"MaxRecvDataSegmentLength": "65536"}
    with pytest.raises(testbed.TgtadmError, match="--name NoSuchKey"):
        tgtd.update(target.tid, "NoSuchKey", 1)
    # qemu-io logs in when it opens the image and then waits on its stdin: an idle session.
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", tgtd.url(target, 1)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: tgtd.sessions(target.tid), "a session appears")
        (nexus,) = tgtd.sessions(target.tid)
        assert nexus.initiator.startswith("iqn.")
        assert [c.ip for c in nexus.connections] == ["127.0.0.1"]
        tgtd.delete_connection(target.tid, nexus.sid, nexus.connections[0].cid)
        wait_for(
            lambda: nexus.sid not in [n.sid for n in tgtd.sessions(target.tid)],
            "the session is gone",
        )
    finally:
        holder.kill()
        holder.wait()


def test_delete_target_and_clear_tgtadm_errors(tgtd, make_target) -> None:
    target = make_target()
    tgtd.delete_target(target.tid)
    assert tgtd.show() == []
    assert target.iqn not in run("iscsi-ls", f"iscsi://{tgtd.portal}", check=False).stdout
    with pytest.raises(testbed.TgtadmError) as err:
        tgtd.delete_target(target.tid)
    assert "--op delete" in str(err.value) and err.value.stderr  # names command and cause
    account = [
        "--lld",
        "iscsi",
        "--mode",
        "account",
        "--op",
        "new",
        "--user",
        "dave",
        "--password",
        "s3cr3tvalue99",
    ]
    tgtd.tgtadm(*account)
    with pytest.raises(testbed.TgtadmError) as err:
        tgtd.tgtadm(*account)  # the account exists: refused
    assert "s3cr3tvalue99" not in str(err.value) and "--password '***'" in str(err.value)


def test_control_index_clash_is_reported(tgtd) -> None:
    with testbed.Tgtd() as other, pytest.raises(testbed.TestbedError, match="another tgtd"):
        other.start(control=tgtd.control)
    assert testbed.free_control_index() != tgtd.control


# ----------------------------------------------------------------------------- isnsd


def test_isns_registration_is_visible_to_an_initiator(isnsd) -> None:
    iqn = "iqn.2024-01.org.iscsifs.test:isns-target"
    args = isnsd.register("ent-a", "127.0.0.1", 3260, iqn, pgt=1, extra_portals=[("::1", 3261, 2)])
    assert args == [
        "--register",
        "entity=ent-a",
        f"target={iqn}",
        "portal=127.0.0.1:3260/tcp",
        "pg,pgt=1",
        "portal=[::1]:3261/tcp",
        "pg,pgt=2",
    ]
    seen = isnsd.discover_targets("iqn.2024-01.org.iscsifs.test:initiator")
    nodes = [o for o in seen if o.kind == "iSCSI Storage Node"]
    assert [(n.get("iSCSI name"), n.get("iSCSI node type")) for n in nodes] == [(iqn, "Target")]
    groups = {
        (g.get("Portal group address"), g.get("Portal group port"), g.get("Portal group tag"))
        for g in seen
        if g.kind == "iSCSI Portal Group"
    }
    assert groups == {("127.0.0.1", "3260/tcp", "1"), ("::1", "3261/tcp", "2")}
    entities = [e.get("Entity identifier") for e in isnsd.list_objects("entities")]
    assert "ent-a" in entities  # beside the one isnsd made for the registered initiator
    isnsd.deregister("ent-a")
    assert "ent-a" not in [e.get("Entity identifier") for e in isnsd.list_objects("entities")]
    assert isnsd.discover_targets("iqn.2024-01.org.iscsifs.test:initiator") == []


def test_two_isnsd_at_once_do_not_clash(isnsd) -> None:
    # The default PID file would make the second one refuse to start.
    with testbed.Isnsd() as second:
        second.start()
        assert second.port != isnsd.port
        assert (second.host, second.port) in testbed.listening_sockets(second.pid)


# ----------------------------------------------------------------------------- tshark


def test_capture_of_an_iscsi_ls_session(tgtd, make_target, capture) -> None:
    target = make_target()
    with capture(tgtd.port) as cap:
        run("iscsi-ls", "-s", tgtd.url(target))
    report = cap.analyze()
    assert report.pdus["Login Request"] >= 2  # discovery session, then the LUN listing one
    assert report.pdus["Login Response"] == report.pdus["Login Request"]
    assert report.pdus["Text Request"] >= 1 and report.pdus["Text Response"] >= 1
    assert report.pdus["SCSI Command"] >= 1 and report.pdus["SCSI Response"] >= 1
    assert report.pdus["Logout Request"] >= 1
    assert report.problems == []
    assert report.dropped == 0 and report.packets > report.total_pdus / 2


# ----------------------------------------------------------------------------- teardown


def test_teardown_leaves_no_process_or_file() -> None:
    with testbed.Tgtd() as daemon:
        daemon.start()
        target = daemon.add_target("iqn.2024-01.org.iscsifs.test:teardown", ["1M"])
        files = [lun.path for lun in target.luns.values()]
        control = daemon.control
        with testbed.Isnsd() as server, testbed.Capture(daemon.port) as cap:
            server.start()
            pids = [daemon.pid, server.pid, cap.pid, *cap.child_pids()]
            assert len(pids) == 4 and not any(gone(p) for p in pids)
        cap.cleanup()
        daemon.stop()  # even a SIGSTOPped tgtd must go
    assert all(gone(p) for p in pids)
    assert not any(os.path.exists(f) for f in files)
    assert not Path(f"/var/run/tgtd/socket.{control}").exists()
    assert testbed._LIVE == {}


def test_cli_up_and_down() -> None:
    up = run(
        sys.executable,
        str(SCRIPTS / "testbed.py"),
        "tgtd",
        "up",
        "--target",
        "iqn.2024-01.org.iscsifs.test:cli=8M,4M",
        "--json",
    )
    info = json.loads(up.stdout)
    try:
        url = f"iscsi://127.0.0.1:{info['port']}/iqn.2024-01.org.iscsifs.test:cli/2"
        assert capacity(url) == 4 * MiB
    finally:
        run(sys.executable, str(SCRIPTS / "testbed.py"), "tgtd", "down", "--pid", str(info["pid"]))
    assert gone(info["pid"])
    assert not any(os.path.exists(lun["path"]) for lun in info["targets"][0]["luns"].values())
    isn = json.loads(
        run(sys.executable, str(SCRIPTS / "testbed.py"), "isnsd", "up", "--json").stdout
    )
    run(sys.executable, str(SCRIPTS / "testbed.py"), "isnsd", "down", "--pid", str(isn["pid"]))
    assert gone(isn["pid"]) and not os.path.exists(isn["conf"])
    refused = run(
        sys.executable,
        str(SCRIPTS / "testbed.py"),
        "tgtd",
        "down",
        "--pid",
        str(os.getpid()),
        check=False,
    )
    assert refused.returncode != 0 and "not a tgtd process" in refused.stderr


def test_sizes() -> None:
    assert [testbed.parse_size(s) for s in ("4096", "64M", "1g", "512KiB", 7)] == [
        4096,
        64 * MiB,
        1 << 30,
        512 << 10,
        7,
    ]
    with pytest.raises(ValueError):
        testbed.parse_size("lots")


def test_teardown_stops_only_its_own_tgtd() -> None:
    # By PID, never by name: a tgtd the bed did not start survives the bed's teardown.
    control = testbed.free_control_index()
    stray = subprocess.Popen(
        ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{testbed.free_port()}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with testbed.Tgtd() as daemon:
            daemon.start()
            mine = daemon.pid
        assert gone(mine)
        assert stray.poll() is None
    finally:
        stray.kill()
        stray.wait()
        for name in (f"socket.{control}", f"socket.{control}.lock"):
            Path("/var/run/tgtd", name).unlink(missing_ok=True)


def test_sigterm_of_the_test_process_still_stops_the_bed() -> None:
    # `timeout pytest` or a CI stop kill with SIGTERM, which skips atexit: the bed hooks it.
    script = (
        f"import sys, time; sys.path.insert(0, {str(SCRIPTS)!r}); import testbed\n"
        "t = testbed.Tgtd().start(); lun = t.add_target('iqn.2024-01.test:term', ['1M']).luns[1]\n"
        "print(t.pid, t.control, lun.path, flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, control, path = child.stdout.readline().split()
        assert not gone(int(pid))
        child.terminate()
        assert child.wait(timeout=TOOL_TIMEOUT) == -15  # it still dies of SIGTERM
    finally:
        child.kill()
        child.wait()
    assert gone(int(pid))
    assert not os.path.exists(path)
    assert not Path(f"/var/run/tgtd/socket.{control}").exists()
