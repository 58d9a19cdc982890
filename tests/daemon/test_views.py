# The texts of the tree's files (daemon/views.py) from state built by hand: the formats the
# README documents and the CLI parses, and that no secret shows.

from __future__ import annotations

from types import SimpleNamespace

from iscsifs.config import PortalSetup, Security, TargetSetup, Timeouts
from iscsifs.daemon import views
from iscsifs.proto.discovery import DiscoveredTarget, Portal

IQN = "iqn.2024-01.org.example:disk"
SECRET = "a-secret-of-16ch"


def target(**kw: object) -> TargetSetup:
    return TargetSetup(name=IQN, portals=(PortalSetup(address="::1", port=3261, tpgt=2),),
                       **kw)  # type: ignore[arg-type]


def test_setup_shows_the_saved_setup_and_no_secret() -> None:
    t = target(security=Security(method="CHAP", target_user="me", target_secret=SECRET),
               timeouts=Timeouts(hold_time=30))
    text = views.setup(t, t.portals[0])
    assert text.splitlines()[:8] == [
        f"target: {IQN}", "alias: -", "portal: [::1]:3261", "portal group tag: 2",
        "visible: Yes", "auto login: No", "security: CHAP,TargetUserName=me",
        "discovery security: same as security"]
    assert "HeaderDigest: None" in text and "hold_time: 30" in text
    assert SECRET not in text


def portal_state(word: str, *, visible: bool = True) -> SimpleNamespace:
    p = PortalSetup(address="127.0.0.1", port=3260, tpgt=None, visible=visible)
    return SimpleNamespace(iqn=IQN, portal=p, dirname="127.0.0.1:3260",
                           state_word=lambda: word)


def test_targets_setup_lists_every_portal_and_status_the_visible_ones() -> None:
    states = [portal_state("connected"), portal_state("not connected", visible=False)]
    assert views.targets_setup(states) == (  # type: ignore[arg-type]
        f"{IQN}\t-\t127.0.0.1:3260\tNo\tYes\n{IQN}\t-\t127.0.0.1:3260\tNo\tNo\n")
    assert views.targets_status(states) == (  # type: ignore[arg-type]
        f"{IQN}\t-\t127.0.0.1:3260\tconnected\n")


def test_an_idle_portal_has_a_short_status() -> None:
    state = portal_state("not connected")
    state.session = None
    state.hold_time = 120.0
    state.last_login_error = None
    text = views.status(state, now=0.0, wall=0.0)  # type: ignore[arg-type]
    assert text.splitlines() == [
        "not connected", f"target: {IQN}", "portal: 127.0.0.1:3260", "portal group tag: -",
        "state: idle", "since: -", "reconnects: 0", "commands in flight: 0",
        "commands waiting: 0", "outage: -", "hold time: 120 s", "last error: -"]


def test_discovered_targets_one_line_a_portal() -> None:
    found = (DiscoveredTarget(IQN, (Portal("10.0.0.1", 3260, 1), Portal("::1", 3260, None))),
             DiscoveredTarget("iqn.2024-01.org.example:none", ()))
    assert views.discovery_reply(found) == (
        f"{IQN}\t1\t10.0.0.1:3260\n{IQN}\t-\t[::1]:3260\niqn.2024-01.org.example:none\t-\t-\n")
    record = views.DiscoveryRecord(found[0], "SendTargets 10.0.0.1:3260")
    assert views.discovered([record]) == (
        f"{IQN}\t1\t10.0.0.1:3260\tSendTargets 10.0.0.1:3260\n"
        f"{IQN}\t-\t[::1]:3260\tSendTargets 10.0.0.1:3260\n")
