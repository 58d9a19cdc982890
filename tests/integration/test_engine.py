# The initiator engine (session, discovery, LUN block device; no FUSE) against the real tgtd of
# the test bed: login in every authentication mode tgtd offers, login failures as one-line errors
# that name the cause and never a secret, SendTargets discovery, data integrity through
# BlockDevice with transfers that cross FirstBurstLength / MaxBurstLength and end unaligned
# (compared with tgtd's backing file), with digests and every ImmediateData / InitialR2T
# combination, 32 commands in flight on one session, and UNIT ATTENTION handling.
# Must not reach into engine internals: only the public API and the `connector` hook.

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import testbed
import trio

from iscsifs import scsi
from iscsifs.engine.discovery import send_targets
from iscsifs.engine.lun import BlockDevice, LunInfo, discover, probe, report_luns
from iscsifs.engine.session import Listener, Session, SessionSettings, login_exchange
from iscsifs.engine.transport import Transport, TransportError
from iscsifs.proto.chap import ChapAlgorithm, ChapCredentials, Secret
from iscsifs.proto.connection import Task
from iscsifs.proto.login import (
    AuthenticationFailed,
    LoginComplete,
    LoginConfig,
    LoginError,
    LoginStateMachine,
    MutualAuthenticationFailed,
    TargetNotFound,
    default_offers,
)

pytestmark = pytest.mark.integration

KiB = 1 << 10
MiB = 1 << 20
LUN_SIZE = 64 * MiB
HOST = "127.0.0.1"
INITIATOR = "iqn.2024-01.org.iscsifs.test:engine-initiator"
#: Every test finishes in seconds; this only turns a hang into a failure.
DEADLINE = 60

# Test-only CHAP accounts (tgtd's accounts are global to the daemon, so names are per role).
USER, SECRET = "engine-user", "engine-secret-0123"
TARGET_USER, TARGET_SECRET = "engine-target", "engine-target-secret-4567"
WRONG_SECRET = "not-the-secret-89ab"

#: Transfer sizes around tgtd's FirstBurstLength (64 KiB), MaxBurstLength (256 KiB), its 8 KiB
#: MaxRecvDataSegmentLength, and our 8 MiB per-command limit, none of them block multiples.
ODD_SIZES = (1, 511, 513, 8191, 8193, 65535, 65537, 262143, 262145, MiB + 3, 8 * MiB - 1)


def creds(user: str, secret: str) -> ChapCredentials:
    return ChapCredentials(user=user, secret=Secret(secret))


def settings(target: testbed.Target, port: int, **kw: Any) -> SessionSettings:
    return SessionSettings(initiator_name=INITIATOR, target_name=target.iqn, host=HOST,
                           port=port, **kw)


@asynccontextmanager
async def logged_in(s: SessionSettings, **kw: Any) -> AsyncIterator[Session]:
    """A session logged in for the block's duration, logged out (cleanly) after it."""
    session = Session(s, **kw)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            err = await nursery.start(session.run)
            assert err is None, f"login failed: {err}"
            try:
                yield session
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    await session.logout()


async def failed_login(s: SessionSettings) -> BaseException:
    """The error an interactive (non-persistent) login reports."""
    session = Session(s)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            err = await nursery.start(session.run)
    assert err is not None, "login unexpectedly succeeded"
    assert not session.connected
    return err


def assert_one_line_without_secrets(err: BaseException, *needles: str, log: str = "") -> None:
    text = str(err)
    assert text and "\n" not in text, repr(text)
    for secret in (SECRET, TARGET_SECRET, WRONG_SECRET):
        assert secret not in text and secret not in repr(err), text
        assert secret not in log
    for needle in needles:
        assert needle in text, text


async def data_lun(session: Session, number: int = 1) -> BlockDevice:
    info = await probe(session, number)
    assert info.is_block_device, info
    return BlockDevice(session, info)


def file_sha256(path: str, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left is None or left > 0:
            chunk = f.read(MiB if left is None else min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Login: authentication modes and CHAP algorithms.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "one-way", "mutual"])
async def test_login_in_each_auth_mode_and_read_a_block(make_target, tgtd, mode):
    chap = (USER, SECRET) if mode != "none" else None
    mutual = (TARGET_USER, TARGET_SECRET) if mode == "mutual" else None
    target = make_target(chap=chap, mutual=mutual)
    s = settings(target, tgtd.port, chap=creds(*chap) if chap else None,
                 mutual=creds(*mutual) if mutual else None)
    async with logged_in(s) as session:
        info = session.login_info
        assert isinstance(info, LoginComplete)
        assert info.auth_method == ("None" if mode == "none" else "CHAP")
        # tgtd picks the first CHAP_A it knows from our list (8, 6, 5, 7): MD5.
        assert info.chap_algorithm == (None if mode == "none" else ChapAlgorithm.MD5)
        assert info.tsih != 0
        assert session.connected
        bd = await data_lun(session)
        assert bd.size == LUN_SIZE and bd.block == 512
        assert bytes(await bd.read(0, 512)) == bytes(512)  # a new sparse LUN reads zeros
    assert not session.connected
    # tgtd saw our session and has let it go after the logout.
    assert await trio.to_thread.run_sync(tgtd.sessions, target.tid) == []


async def _login_with_algorithms(
    port: int, target: testbed.Target, algorithms: tuple[ChapAlgorithm, ...]
) -> LoginComplete:
    """One login through the proto state machine with a chosen CHAP_A list: Session has no
    setting for the list, so this drives login_exchange over a real Transport."""
    config = LoginConfig(
        initiator_name=INITIATOR, target_name=target.iqn, isid=b"\x80" + os.urandom(5),
        cmdsn=1, itt=0, chap=creds(USER, SECRET), mutual_chap=creds(TARGET_USER, TARGET_SECRET),
        chap_algorithms=algorithms, operational_offers=default_offers("Normal"),
    )
    transport = await Transport.connect(HOST, port, timeout=10)
    try:
        with trio.fail_after(DEADLINE):
            result, _ = await login_exchange(transport, LoginStateMachine(config,
                                                                          random=os.urandom))
    finally:
        transport.close()
    assert isinstance(result, LoginComplete)
    return result


async def test_chap_md5_is_the_algorithm_tgtd_and_we_share(make_target, tgtd):
    # tgtd 1.0.85 knows CHAP_A 5 (MD5) and 7, which it takes for SHA-1 (IANA, open-iscsi,
    # LIO and we number 7 SHA-256). MD5 alone, mutual, works.
    target = make_target(chap=(USER, SECRET), mutual=(TARGET_USER, TARGET_SECRET))
    done = await _login_with_algorithms(tgtd.port, target, (ChapAlgorithm.MD5,))
    assert done.chap_algorithm is ChapAlgorithm.MD5 and done.auth_method == "CHAP"


async def test_chap_a_7_first_is_refused_by_tgtd_which_reads_it_as_sha1(make_target, tgtd):
    # Why DEFAULT_ALGORITHMS puts SHA-256 (7) after MD5: offered first, tgtd picks it, hashes
    # with SHA-1 and rejects our SHA-256 answer. tgtd's SHA-1 cannot be reached at all: our
    # SHA-1 is 6, which it does not know (and 6 or 8 alone are refused locally: RFC 7143
    # 12.1.3 makes MD5 mandatory in every offer).
    target = make_target(chap=(USER, SECRET))
    with pytest.raises(LoginError) as caught:
        await _login_with_algorithms(tgtd.port, target,
                                     (ChapAlgorithm.SHA256, ChapAlgorithm.MD5))
    assert_one_line_without_secrets(caught.value, target.iqn)


# --------------------------------------------------------------------------------------------
# Login failures: one line naming the cause, never a secret.
# --------------------------------------------------------------------------------------------


async def test_wrong_secret_says_authentication_failed(make_target, tgtd, caplog):
    caplog.set_level(logging.DEBUG, logger="iscsifs")
    target = make_target(chap=(USER, SECRET))
    err = await failed_login(settings(target, tgtd.port, chap=creds(USER, WRONG_SECRET)))
    assert isinstance(err, AuthenticationFailed)
    assert_one_line_without_secrets(err, "authentication failed", target.iqn, log=caplog.text)


async def test_no_credentials_for_a_chap_target_says_so(make_target, tgtd, caplog):
    caplog.set_level(logging.DEBUG, logger="iscsifs")
    target = make_target(chap=(USER, SECRET))
    err = await failed_login(settings(target, tgtd.port))
    assert isinstance(err, AuthenticationFailed)
    assert_one_line_without_secrets(err, "authentication failed", log=caplog.text)


async def test_target_failing_mutual_chap_is_refused(make_target, tgtd, caplog):
    # tgtd knows TARGET_SECRET; we expect another one, so its answer must not convince us.
    caplog.set_level(logging.DEBUG, logger="iscsifs")
    target = make_target(chap=(USER, SECRET), mutual=(TARGET_USER, TARGET_SECRET))
    err = await failed_login(settings(target, tgtd.port, chap=creds(USER, SECRET),
                                      mutual=creds(TARGET_USER, WRONG_SECRET)))
    assert isinstance(err, MutualAuthenticationFailed)
    assert_one_line_without_secrets(err, "CHAP", log=caplog.text)


async def test_mutual_chap_to_a_target_without_chap_names_the_refused_method(make_target, tgtd):
    # Mutual CHAP offers AuthMethod=CHAP alone; a target with no CHAP account answers
    # AuthMethod=Reject with status 0x0201 in its first response. The user must learn that
    # the target does not do CHAP, not that their secret is wrong.
    target = make_target()
    err = await failed_login(settings(target, tgtd.port, chap=creds(USER, SECRET),
                                      mutual=creds(TARGET_USER, TARGET_SECRET)))
    assert isinstance(err, AuthenticationFailed)
    assert_one_line_without_secrets(err, "authentication failed")
    assert "user name or secret" not in str(err)
    assert "method" in str(err).lower()


async def test_unknown_target_says_target_not_found(make_target, tgtd):
    make_target()
    missing = "iqn.2024-01.org.iscsifs.test:no-such-target"
    s = SessionSettings(initiator_name=INITIATOR, target_name=missing, host=HOST,
                        port=tgtd.port)
    err = await failed_login(s)
    assert isinstance(err, TargetNotFound)
    assert_one_line_without_secrets(err, "target not found", missing)


async def test_closed_port_names_the_portal():
    port = testbed.free_port(HOST)
    s = SessionSettings(initiator_name=INITIATOR, target_name="iqn.2024-01.org.iscsifs.test:x",
                        host=HOST, port=port)
    err = await failed_login(s)
    assert isinstance(err, TransportError)
    assert_one_line_without_secrets(err, f"{HOST}:{port}")


# --------------------------------------------------------------------------------------------
# Discovery.
# --------------------------------------------------------------------------------------------


async def test_send_targets_lists_the_target_with_portal_and_tag(make_target, tgtd):
    first, second = make_target(), make_target(luns=(4 * MiB,))
    with trio.fail_after(DEADLINE):
        found = await send_targets(HOST, tgtd.port, initiator_name=INITIATOR)
    by_name = {t.name: t for t in found}
    assert set(by_name) == {first.iqn, second.iqn}
    for t in by_name.values():
        assert [(p.address, p.port, p.tpgt) for p in t.portals] == [(HOST, tgtd.port, 1)]


async def test_discovery_with_one_way_chap_credentials_on_tgtd(make_target, tgtd):
    # tgtd 1.0.85 cannot demand discovery CHAP: tgtadm refuses an account bound to tid 0 or
    # to its global tid (-1 / 4294967295), so it answers our "AuthMethod=CHAP,None" with None.
    # Configured one-way credentials must not stop discovery from working there.
    target = make_target(chap=(USER, SECRET))
    with pytest.raises(testbed.TgtadmError):
        tgtd.tgtadm("--lld", "iscsi", "--mode", "account", "--op", "bind", "--tid", "0",
                    "--user", USER)
    with trio.fail_after(DEADLINE):
        found = await send_targets(HOST, tgtd.port, initiator_name=INITIATOR,
                                   chap=creds(USER, SECRET))
    assert [t.name for t in found] == [target.iqn]


async def test_discovery_with_mutual_chap_fails_cleanly_on_tgtd(make_target, tgtd, caplog):
    # Mutual CHAP offers CHAP alone (the target must prove itself); tgtd has no discovery
    # account to do so and refuses with an authentication failure: one line, no secret.
    caplog.set_level(logging.DEBUG, logger="iscsifs")
    make_target(chap=(USER, SECRET), mutual=(TARGET_USER, TARGET_SECRET))
    with trio.fail_after(DEADLINE), pytest.raises(AuthenticationFailed) as caught:
        await send_targets(HOST, tgtd.port, initiator_name=INITIATOR, chap=creds(USER, SECRET),
                           mutual=creds(TARGET_USER, TARGET_SECRET))
    assert_one_line_without_secrets(caught.value, "authentication failed", "discovery",
                                    log=caplog.text)


async def test_discovery_of_a_closed_port_names_the_portal():
    port = testbed.free_port(HOST)
    with trio.fail_after(DEADLINE), pytest.raises(TransportError) as caught:
        await send_targets(HOST, port, initiator_name=INITIATOR, timeout=5)
    assert_one_line_without_secrets(caught.value, f"{HOST}:{port}")


# --------------------------------------------------------------------------------------------
# Data integrity through BlockDevice.
# --------------------------------------------------------------------------------------------


def odd_layout(size: int) -> list[tuple[int, int]]:
    """(offset, length) for every ODD_SIZES entry at an odd offset, ranges apart, the largest
    ending exactly at the end of the LUN."""
    out = []
    offset = 3
    for n in ODD_SIZES[:-1]:
        out.append((offset, n))
        offset += n + 4097
    out.append((size - ODD_SIZES[-1], ODD_SIZES[-1]))
    assert offset < size - ODD_SIZES[-1]
    return out


async def exercise(bd: BlockDevice, path: str) -> None:
    """Write the whole LUN in one call, overwrite odd ranges, read it back in pieces and whole,
    and compare everything with the model and tgtd's backing file."""
    size = bd.size
    model = bytearray(os.urandom(size))
    assert await bd.write(0, model) == size  # one 64 MiB call
    layout = odd_layout(size)
    for offset, n in layout:
        chunk = os.urandom(n)
        assert await bd.write(offset, chunk) == n
        model[offset : offset + n] = chunk
    await bd.sync()
    for offset, n in layout:
        # Read each range shifted by an odd amount, so head and tail straddle other data.
        start = max(0, offset - 1)
        got = await bd.read(start, n + 2)
        want = model[start : start + n + 2]
        assert len(got) == len(want) and got == want, (offset, n)
    # Past the end: short, then empty.
    assert bytes(await bd.read(size - 5, 100)) == model[size - 5 :]
    assert len(await bd.read(size, 10)) == 0
    whole = await bd.read(0, size)  # one 64 MiB call
    assert sha256(whole) == sha256(model)
    on_disk = await trio.to_thread.run_sync(file_sha256, path)
    assert on_disk == sha256(model)


VARIANTS: Mapping[str, tuple[dict[str, str], dict[str, str], dict[str, bool]]] = {
    # name: (tgtd target params, our offers, what session.params must say)
    "defaults": ({}, {}, dict(header_digest=False, data_digest=False, initial_r2t=True,
                              immediate_data=True)),
    "digests": ({"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"},
                {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"},
                dict(header_digest=True, data_digest=True, initial_r2t=True,
                     immediate_data=True)),
    "unsolicited": ({"InitialR2T": "No"}, {"InitialR2T": "No", "ImmediateData": "Yes"},
                    dict(header_digest=False, data_digest=False, initial_r2t=False,
                         immediate_data=True)),
    "no-immediate": ({}, {"ImmediateData": "No"},
                     dict(initial_r2t=True, immediate_data=False)),
    "unsolicited-no-immediate": ({"InitialR2T": "No"}, {"ImmediateData": "No"},
                                 dict(initial_r2t=False, immediate_data=False)),
    "digests-unsolicited": ({"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None",
                             "InitialR2T": "No"},
                            {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"},
                            dict(header_digest=True, data_digest=True, initial_r2t=False,
                                 immediate_data=True)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_64mib_unaligned_transfers_match_the_backing_file(make_target, tgtd, variant):
    target_params, offers, expect = VARIANTS[variant]
    target = make_target(luns=(LUN_SIZE,), params=target_params)
    async with logged_in(settings(target, tgtd.port, offers=offers)) as session:
        params = session.params
        assert params is not None
        assert {k: getattr(params, k) for k in expect} == expect
        # The sizes above cross these limits only if tgtd settled on its defaults.
        assert (params.first_burst_length, params.max_burst_length) == (64 * KiB, 256 * KiB)
        bd = await data_lun(session)
        await exercise(bd, target.lun_path(1))
        assert session.bytes_written >= LUN_SIZE + sum(ODD_SIZES)
        assert session.bytes_read >= LUN_SIZE + sum(ODD_SIZES)


# --------------------------------------------------------------------------------------------
# Concurrency.
# --------------------------------------------------------------------------------------------


class SamplingTransport(Transport):
    """A Transport that calls on_receive(self) each time the session's reader gets bytes,
    before they are decoded."""

    on_receive: Any = None

    def recv_nowait(self, view: memoryview) -> int:
        n = super().recv_nowait(view)
        if n and self.on_receive is not None:
            self.on_receive(self)
        return n

    async def recv_into(self, view: memoryview, *, wait_first: bool = False) -> int:
        n = await super().recv_into(view, wait_first=wait_first)
        if self.on_receive is not None:
            self.on_receive(self)
        return n


class InFlightProbe:
    def __init__(self) -> None:
        self.session: Session | None = None
        self.peak = 0

    def sample(self, transport: Transport) -> None:
        # Counted only when nothing waits in the transport's send queue (commands issued
        # while others are in flight are batched for the writer task): then every command
        # in session.in_flight is on the wire, and the target is answering while they are
        # all outstanding.
        if self.session is not None and transport.send_backlog == 0:
            self.peak = max(self.peak, self.session.in_flight)

    async def connect(self, host: str, port: int, *, timeout: float) -> Transport:
        transport = await SamplingTransport.connect(host, port, timeout=timeout)
        transport.on_receive = self.sample
        return transport


QD = 32
#: The first command of a burst goes out alone at once; the rest, issued while it is in
#: flight, are batched for the writer task. trio may run the reader first in the next round,
#: and the first (a quick READ) can complete before the batch is sent: so QD + 1 are issued
#: to have QD outstanding together for certain.
ISSUED = QD + 1
IO = 256 * KiB + 512  # more than one burst per command, so writes need several R2Ts


async def test_32_commands_in_flight_on_one_session(make_target, tgtd):
    target = make_target(luns=(LUN_SIZE,))
    probe_ = InFlightProbe()
    async with logged_in(settings(target, tgtd.port), connector=probe_.connect) as session:
        probe_.session = session
        bd = await data_lun(session)
        assert bd.max_blocks * bd.block >= IO  # each transfer is one command
        datas = [os.urandom(IO) for _ in range(ISSUED)]
        probe_.peak = 0
        async with trio.open_nursery() as nursery:
            for i, data in enumerate(datas):
                nursery.start_soon(bd.write, i * 2 * IO, data)
        writes_peak = probe_.peak

        got: dict[int, bytes] = {}

        async def read(i: int) -> None:
            got[i] = bytes(await bd.read(i * 2 * IO, IO))

        probe_.peak = 0
        async with trio.open_nursery() as nursery:
            for i in range(ISSUED):
                nursery.start_soon(read, i)
        reads_peak = probe_.peak
        assert session.in_flight == 0
    assert [got[i] == datas[i] for i in range(ISSUED)] == [True] * ISSUED
    with open(target.lun_path(1), "rb") as f:
        for i, data in enumerate(datas):
            f.seek(i * 2 * IO)
            assert f.read(IO) == data, i
    # tgtd answered while at least 32 commands were on the wire (its MaxCmdSN window of 128
    # held none back).
    assert writes_peak >= QD and reads_peak >= QD, (writes_peak, reads_peak)
    assert max(writes_peak, reads_peak) <= ISSUED


# --------------------------------------------------------------------------------------------
# UNIT ATTENTION.
# --------------------------------------------------------------------------------------------


async def test_first_command_unit_attention_is_retried_transparently(make_target, tgtd):
    target = make_target()
    # The premise: tgtd answers a new session's first command to a data LUN with UA 29/00
    # (its controller LUN 0 never does).
    async with logged_in(settings(target, tgtd.port)) as session:
        task = await session.execute(Task(lun=scsi.encode_lun(1), cdb=scsi.test_unit_ready()))
        assert task.status == scsi.ScsiStatus.CHECK_CONDITION
        sense = scsi.decode_sense(task.sense)
        assert (sense.sense_key, sense.asc, sense.ascq) == (scsi.SenseKey.UNIT_ATTENTION, 0x29, 0x00)
    # The behaviour: command() retries it; the caller sees GOOD after two commands.
    async with logged_in(settings(target, tgtd.port)) as session:
        task = await session.command(1, scsi.test_unit_ready())
        assert task.status == scsi.ScsiStatus.GOOD
        assert session.commands_done == 2
        await session.command(1, scsi.test_unit_ready())
        assert session.commands_done == 3


class LunWatcher(Listener):
    def __init__(self) -> None:
        self.changes = 0

    def luns_changed(self, session: Session) -> None:
        self.changes += 1


async def test_new_lun_gives_unit_attention_3f0e_and_is_probed(make_target, tgtd):
    # tgtd queues 3F/0E (REPORTED LUNS DATA HAS CHANGED) on the LUNs a session already used,
    # except its controller LUN 0: REPORT LUNS itself is answered GOOD with the new list, and
    # the next command to LUN 1 gets the unit attention.
    target = make_target(luns=(8 * MiB,))
    watcher = LunWatcher()
    async with logged_in(settings(target, tgtd.port), listener=watcher) as session:
        before = await discover(session)
        assert [i.number for i in before] == [0, 1]
        old = BlockDevice(session, before[1])
        first = os.urandom(5000)
        await old.write(77, first)
        assert watcher.changes == 0
        added = await trio.to_thread.run_sync(partial(tgtd.add_lun, target.tid, 4 * MiB))
        assert added.lun == 2
        done = session.commands_done
        assert bytes(await old.read(77, len(first))) == first  # UA 3F/0E, retried
        assert session.commands_done == done + 2
        assert watcher.changes == 1
        # What the owner does when told: REPORT LUNS and probe what is new.
        assert await report_luns(session) == (0, 1, 2)
        info: LunInfo = await probe(session, 2)
        assert info.is_block_device and info.size == 4 * MiB
        bd = BlockDevice(session, info)
        data = os.urandom(3 * MiB + 7)
        await bd.write(1001, data)
        assert bytes(await bd.read(1001, len(data))) == data
        with open(added.path, "rb") as f:
            f.seek(1001)
            assert f.read(len(data)) == data
        assert watcher.changes == 1
