# Fixtures that bring up the real test bed (scripts/testbed.py): tgtd, isnsd and tshark captures
# on loopback, one set per test, torn down by PID afterwards. Owns marking every test in this
# directory `integration`. Must never skip for a missing tool: CI installs them with
# scripts/setup, so a missing tool is a broken set-up and the fixture FAILS saying so.

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import testbed

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def require_tools(*commands: str) -> None:
    """Fail (never skip) when a test-bed tool is missing."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.fail(
            f"test bed tool(s) missing: {', '.join(missing)}; run scripts/setup as root "
            "(it installs tgt, open-isns, libiscsi-bin, tshark, ...)",
            pytrace=False,
        )


def _slug(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", request.node.name.lower()).strip("-")[:40] or "t"


@pytest.fixture
def tgtd() -> Iterator[testbed.Tgtd]:
    """A started tgtd on 127.0.0.1 (free port, free control index), no targets yet."""
    require_tools("tgtd", "tgtadm", "timeout")
    with testbed.Tgtd() as daemon:
        daemon.start()
        yield daemon


@pytest.fixture
def make_target(
    tgtd: testbed.Tgtd, request: pytest.FixtureRequest
) -> Callable[..., testbed.Target]:
    """Factory: make_target(luns=(64 MiB,), *, iqn=None, chap=None, mutual=None, params=None)
    adds a target to the `tgtd` fixture; the IQN defaults to one unique to the test."""
    numbers = count(1)

    def make(
        luns: Any = (64 << 20,),
        *,
        iqn: str | None = None,
        chap: tuple[str, str] | None = None,
        mutual: tuple[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> testbed.Target:
        name = iqn or f"iqn.2024-01.org.iscsifs.test:{_slug(request)}-{next(numbers)}"
        return tgtd.add_target(name, luns, chap=chap, mutual=mutual, params=params)

    return make


@pytest.fixture
def isnsd() -> Iterator[testbed.Isnsd]:
    """A started isnsd on 127.0.0.1 (free port, in-memory, no security, default DD)."""
    require_tools("isnsd", "isnsadm", "timeout")
    with testbed.Isnsd() as server:
        server.start()
        yield server


@pytest.fixture
def capture() -> Iterator[Callable[..., testbed.Capture]]:
    """Factory: capture(port) -> a started testbed.Capture of that TCP port on lo; stop it
    (or leave its `with` block) before analyze(). All captures are removed after the test."""
    require_tools("tshark")
    made: list[testbed.Capture] = []

    def start(port: int | list[int]) -> testbed.Capture:
        cap = testbed.Capture(port)
        made.append(cap)
        return cap.start()

    yield start
    for cap in made:
        cap.cleanup()
