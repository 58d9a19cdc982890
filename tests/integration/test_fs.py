# LUNs as files, through a real mount of a real tgtd: dd, loop devices with ext4, logout/login,
# several LUNs, the file semantics at the edges (end of LUN, partial blocks, concurrent
# writers), control files, and that umount leaves nothing behind.

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from .mounting import Mount, PortalSpec, alive, mounted

MiB = 1 << 20


def sha(path: str | Path, length: int | None = None, offset: int = 0) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = f.read(MiB if left is None else min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


@pytest.fixture
def target(make_target):
    return make_target(luns=(64 * MiB,))


@pytest.fixture
def mount(tmp_path, tgtd, target):
    host, port = tgtd.portal.rsplit(":", 1)
    with Mount(tmp_path, [PortalSpec(target.iqn, host, int(port))]) as m:
        m.portal = m.portal_dir(target.iqn, host, int(port))
        m.wait_for(m.portal / "lun1")
        yield m


def test_dd_pattern_matches_backing_file(mount, target, tmp_path):
    pattern = tmp_path / "pattern"
    pattern.write_bytes(os.urandom(24 * MiB + 12345))
    lun = mount.portal / "lun1"
    subprocess.run(["dd", f"if={pattern}", f"of={lun}", "bs=1M", "conv=fsync,notrunc",
                    "status=none"], check=True)
    back = tmp_path / "back"
    subprocess.run(["dd", f"if={lun}", f"of={back}", "bs=1M", "count=25", "status=none"],
                   check=True)
    size = pattern.stat().st_size
    assert sha(back, size) == sha(pattern)
    assert sha(target.lun_path(1), size) == sha(pattern)


def test_o_direct_dd_both_ways(mount, target, tmp_path):
    lun = mount.portal / "lun1"
    pattern = tmp_path / "pattern"
    pattern.write_bytes(os.urandom(16 * MiB))
    subprocess.run(["dd", f"if={pattern}", f"of={lun}", "bs=1M", "oflag=direct",
                    "conv=notrunc", "status=none"], check=True)
    out = subprocess.run(["dd", f"if={lun}", "bs=1M", "count=16", "iflag=direct",
                          "status=none"], check=True, capture_output=True).stdout
    assert hashlib.sha256(out).hexdigest() == sha(pattern)
    assert sha(target.lun_path(1), 16 * MiB) == sha(pattern)


def test_ext4_on_a_loop_device_survives_remount_and_fsck(mount, tmp_path):
    lun = mount.portal / "lun1"
    dev = mount.losetup(lun)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    fs = tmp_path / "fs"
    fs.mkdir()
    payload = {f"f{i}": os.urandom(100_000 + i * 7777) for i in range(8)}
    subprocess.run(["mount", dev, str(fs)], check=True)
    try:
        for name, data in payload.items():
            (fs / name).write_bytes(data)
    finally:
        subprocess.run(["umount", str(fs)], check=True)
    mount.detach(dev)
    dev = mount.losetup(lun)
    fsck = subprocess.run(["fsck.ext4", "-fn", dev], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    subprocess.run(["mount", "-o", "ro", dev, str(fs)], check=True)
    try:
        for name, data in payload.items():
            assert (fs / name).read_bytes() == data
    finally:
        subprocess.run(["umount", str(fs)], check=True)
    mount.detach(dev)


def test_logout_hides_luns_and_login_brings_them_back(mount):
    lun = mount.portal / "lun1"
    data = os.urandom(MiB)
    with open(lun, "r+b") as f:
        f.seek(3 * MiB)
        f.write(data)
    (mount.portal / "control").write_text("logout\n")
    assert not lun.exists()
    assert (mount.portal / "status").read_text().splitlines()[0] == "not connected"
    assert (mount.portal / "params").read_text() == ""
    (mount.portal / "control").write_text("login\n")
    mount.wait_for(lun)
    assert (mount.portal / "status").read_text().splitlines()[0] == "connected"
    with open(lun, "rb") as f:
        f.seek(3 * MiB)
        assert f.read(MiB) == data
    params = dict(line.split("=", 1) for line in
                  (mount.portal / "params").read_text().splitlines())
    assert params["HeaderDigest"] == "None"
    assert int(params["MaxBurstLength"]) > 0


def test_two_luns_of_different_sizes(tmp_path, tgtd, make_target):
    target = make_target(luns=(16 * MiB, 40 * MiB))
    host, port = tgtd.portal.rsplit(":", 1)
    with Mount(tmp_path, [PortalSpec(target.iqn, host, int(port))]) as m:
        portal = m.portal_dir(target.iqn, host, int(port))
        m.wait_for(portal / "lun2")
        assert (portal / "lun1").stat().st_size == 16 * MiB
        assert (portal / "lun2").stat().st_size == 40 * MiB
        luns = [line.split("\t") for line in (portal / "luns").read_text().splitlines()]
        sizes = {int(n): int(size) for n, size, *_ in luns}
        assert sizes == {0: 0, 1: 16 * MiB, 2: 40 * MiB}
        assert luns[1][3:5] == ["IET", "VIRTUAL-DISK"]


def test_edges_of_a_lun_file(mount, target):
    lun = mount.portal / "lun1"
    size = lun.stat().st_size
    assert size == 64 * MiB
    fd = os.open(lun, os.O_RDWR)
    try:
        # Reads past the end are short, then empty.
        assert len(os.pread(fd, 4096, size - 100)) == 100
        assert os.pread(fd, 4096, size) == b""
        # A write crossing the end is short; one starting at the end fails.
        assert os.pwrite(fd, b"x" * 300, size - 100) == 100
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"y", size)
        assert e.value.errno in (errno.ENOSPC, errno.EFBIG)
        # Partial blocks: read-modify-write keeps the neighbours.
        os.pwrite(fd, b"A" * 4096, 8192)
        os.pwrite(fd, b"BC", 8192 + 511)
        assert os.pread(fd, 4096, 8192) == b"A" * 511 + b"BC" + b"A" * 3583
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(target.lun_path(1), "rb") as f:
        f.seek(8192)
        assert f.read(4096) == b"A" * 511 + b"BC" + b"A" * 3583


def test_concurrent_unaligned_writers_never_tear_a_block(mount):
    lun = mount.portal / "lun1"
    # Eight writers each own every eighth byte pair inside the same 4 blocks: every write is
    # a read-modify-write of a shared block, so without serialisation updates get lost.
    base = 20 * MiB
    fds = [os.open(lun, os.O_RDWR) for _ in range(8)]

    def writer(i: int) -> None:
        for k in range(64):
            os.pwrite(fds[i], bytes([65 + i]) * 2, base + (k * 8 + i) * 2)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = os.pread(fds[0], 1024, base)
    for fd in fds:
        os.close(fd)
    expect = b"".join(bytes([65 + i]) * 2 for _ in range(64) for i in range(8))
    assert got == expect


def test_control_files(mount):
    control = mount.portal / "control"
    with pytest.raises(OSError) as e:
        control.write_text("dance\n")
    assert e.value.errno == errno.EINVAL
    # The reply to a command is read back on the same open file.
    fd = os.open(control, os.O_RDWR)
    try:
        with pytest.raises(OSError):
            os.write(fd, b"frobnicate\n")
        assert os.read(fd, 4096).decode().startswith("ERROR. unknown command")
    finally:
        os.close(fd)
    assert "dance" in (mount.point / "log").read_text()
    assert (mount.point / "initiator" / "name").read_text().strip() == (
        "iqn.2026-11.org.iscsifs:test")
    status = (mount.portal / "status").read_text().splitlines()
    fields = dict(line.split(": ", 1) for line in status[1:])
    assert {"since", "reconnects", "commands in flight", "last error"} <= set(fields)
    assert (mount.portal / "hold_time").read_text().strip() == "120"
    (mount.portal / "hold_time").write_text("45\n")
    assert (mount.portal / "hold_time").read_text().strip() == "45"
    assert "hold time: 45 s" in (mount.portal / "status").read_text()


def test_modes_keep_the_tree_private(mount):
    assert oct((mount.portal / "lun1").stat().st_mode & 0o777) == "0o600"
    assert oct((mount.portal / "control").stat().st_mode & 0o777) == "0o600"
    assert (mount.point / "targets").stat().st_uid == 0
    with open("/proc/self/mounts") as f:
        line = next(ln for ln in f if ln.split()[1] == str(mount.point))
    assert "allow_other" not in line


def test_umount_leaves_nothing_behind(tmp_path, tgtd, target):
    host, port = tgtd.portal.rsplit(":", 1)
    m = Mount(tmp_path, [PortalSpec(target.iqn, host, int(port))], foreground=False).start()
    try:
        portal = m.portal_dir(target.iqn, host, int(port))
        m.wait_for(portal / "lun1")
        dev = m.losetup(portal / "lun1")
        m.detach(dev)
        pid = m.pid
        assert pid is not None and alive(pid)
        r = m.cli("umount", "--config", str(m.config))
        assert r.returncode == 0, r.stderr
        assert not alive(pid)
        assert not mounted(m.point)
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        assert str(m.point) not in loops
        assert not list(m.runtime.glob("*.json"))
        # And the target saw a clean logout: no session left.
        assert tgtd.sessions(target.tid) == []
    finally:
        m.stop()


def test_control_reply_reads_both_ways(mount):
    control = mount.portal / "control"
    # As the CLI does: write, then pread from 0 in small chunks.
    fd = os.open(control, os.O_RDWR)
    try:
        os.write(fd, b"rescan\n")
        chunks, off = [], 0
        while chunk := os.pread(fd, 7, off):
            chunks.append(chunk)
            off += len(chunk)
        assert b"".join(chunks) == (mount.portal / "luns").read_bytes()
    finally:
        os.close(fd)
    # As a shell does on one descriptor: exec 3<>control; echo logout >&3; cat <&3.
    fd = os.open(control, os.O_RDWR)
    try:
        os.write(fd, b"logout\n")
        assert os.read(fd, 4096) == b"not connected\n"
        assert os.read(fd, 4096) == b""
    finally:
        os.close(fd)


def test_punch_hole_unmaps_on_a_thin_lun(tmp_path, tgtd, make_target):
    target = make_target(luns=(16 * MiB,))
    tgtd.tgtadm("--lld", "iscsi", "--mode", "logicalunit", "--op", "update", "--tid",
                str(target.tid), "--lun", "1", "--params", "thin_provisioning=1")
    with open(target.lun_path(1), "r+b") as f:
        f.write(b"\xaa" * (4 * MiB))
    host, port = tgtd.portal.rsplit(":", 1)
    with Mount(tmp_path, [PortalSpec(target.iqn, host, int(port))]) as m:
        lun = m.portal_dir(target.iqn, host, int(port)) / "lun1"
        m.wait_for(lun)
        subprocess.run(["fallocate", "--punch-hole", "--keep-size", "--offset", str(MiB),
                        "--length", str(MiB), str(lun)], check=True)
        with open(lun, "rb") as f:
            f.seek(MiB - 512)
            assert f.read(512 + MiB + 512) == b"\xaa" * 512 + bytes(MiB) + b"\xaa" * 512
    with open(target.lun_path(1), "rb") as f:
        f.seek(MiB)
        assert f.read(MiB) == bytes(MiB)


def test_punch_hole_without_thin_provisioning_is_refused(mount):
    r = subprocess.run(["fallocate", "--punch-hole", "--keep-size", "--offset", "0",
                        "--length", str(MiB), str(mount.portal / "lun1")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "unsupported" in r.stderr.lower()  # util-linux words EOPNOTSUPP so
