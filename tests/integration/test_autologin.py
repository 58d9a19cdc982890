# Auto-login at mount: after the boot delay, every visible auto-login portal logs in; one that
# cannot be reached shows `unavailable` and keeps being retried, so it logs in by itself when
# the target comes up. Real tgtd, real mount.

from __future__ import annotations

import time

import testbed

from .mounting import Mount, PortalSpec

IQN = "iqn.2026-11.org.iscsifs.test:autologin"


def first_line(path) -> str:
    return path.read_text().splitlines()[0]


def test_unreachable_portal_is_retried_until_the_target_appears(tmp_path):
    port = testbed.free_port()
    spec = PortalSpec(IQN, "127.0.0.1", port,
                      timeouts={"connect_timeout": 2, "login_timeout": 3})
    with Mount(tmp_path, [spec]) as m:
        portal = m.portal_dir(IQN, "127.0.0.1", port)
        status = portal / "status"
        deadline = time.monotonic() + 20
        while "last error: -" in status.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = status.read_text()
        assert text.splitlines()[0] == "unavailable", text
        assert "ECONNREFUSED" in text or "cannot connect" in text
        assert not (portal / "lun1").exists()
        # The target comes up on that port: the retrying session finds it by itself.
        with testbed.Tgtd() as tgtd:
            tgtd.start(port)
            tgtd.add_target(IQN, (8 << 20,))
            m.wait_for(portal / "lun1", timeout=40)
            assert first_line(status) == "connected"
            assert (portal / "lun1").stat().st_size == 8 << 20
            m.stop()


def test_boot_delay_then_auto_login(tmp_path, tgtd, make_target):
    target = make_target(luns=(4 << 20,))
    m = Mount(tmp_path, [PortalSpec(target.iqn, "127.0.0.1", tgtd.port)])
    text = m.config.read_text().replace('[initiator]\n', '[initiator]\nboot_delay = 3\n', 1)
    m.config.write_text(text)
    with m:
        portal = m.portal_dir(target.iqn, "127.0.0.1", tgtd.port)
        assert first_line(portal / "status") == "not connected"
        assert (m.point / "initiator" / "boot_delay").read_text().strip() == "3"
        m.wait_for(portal / "lun1", timeout=30)
        assert first_line(portal / "status") == "connected"
        assert "boot delay" in (m.point / "log").read_text()


def test_portal_without_auto_login_stays_down_until_asked(tmp_path, tgtd, make_target):
    manual = make_target(luns=(4 << 20,))
    auto = make_target(luns=(4 << 20,))
    specs = [PortalSpec(manual.iqn, "127.0.0.1", tgtd.port, auto_login=False),
             PortalSpec(auto.iqn, "127.0.0.1", tgtd.port)]
    with Mount(tmp_path, specs) as m:
        manual_dir = m.portal_dir(manual.iqn, "127.0.0.1", tgtd.port)
        # The auto-login pass goes through every portal in one sweep: once the auto-login
        # one is in, the other has been passed over.
        m.wait_for(m.portal_dir(auto.iqn, "127.0.0.1", tgtd.port) / "lun1")
        assert first_line(manual_dir / "status") == "not connected"
        assert tgtd.sessions(manual.tid) == []
        (manual_dir / "control").write_text("login\n")
        assert (manual_dir / "lun1").exists()
