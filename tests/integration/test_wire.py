# What the engine puts on the wire, judged by an independent decoder: one whole small session
# with the real tgtd (SendTargets discovery, login with CRC32C header and data digests, LUN
# probing, reads, writes answered with R2Ts, logout), captured live on loopback with tshark
# (testbed.Capture), must decode with no malformed packet and no iSCSI/SCSI expert warning, with
# every PDU kind we expect present and every digest a good CRC32. Must stay small: tshark drops
# packets at loopback speed under heavy traffic.

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from iscsifs.engine.discovery import send_targets
from iscsifs.engine.lun import BlockDevice, discover

from .test_engine import HOST, INITIATOR, logged_in, settings

pytestmark = pytest.mark.integration

KiB = 1 << 10
MiB = 1 << 20
DIGESTS = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}
OFFERS = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"}
#: Bigger than tgtd's MaxBurstLength (256 KiB): with its InitialR2T=Yes and our immediate data
#: (8 KiB, its MaxRecvDataSegmentLength) the rest needs two R2Ts, 256 KiB and 36 KiB.
WRITE = 300 * KiB

LOGIN_REQUEST, LOGIN_RESPONSE = 0x03, 0x23
TEXT_REQUEST, TEXT_RESPONSE = 0x04, 0x24
SCSI_COMMAND, SCSI_RESPONSE = 0x01, 0x21
DATA_OUT, DATA_IN, R2T = 0x05, 0x25, 0x31
LOGOUT_REQUEST, LOGOUT_RESPONSE = 0x06, 0x26
#: TCP flow-control notes at loopback speed (tgtd reads more slowly than we send): warnings in
#: tshark's expert system, but about TCP windows, not about what we sent.
BENIGN_TCP = ("TCP window specified by the receiver is now completely full",
              "TCP Zero Window segment", "TCP window update")


@dataclass
class Pdu:
    stream: int
    opcode: int
    header_digest: str | None = None  # tshark's verdict, e.g. "Good CRC32"
    data_digest: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def tshark(path: Path, port: int, *args: str) -> str:
    done = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-d", f"tcp.port=={port},iscsi",
         "-o", "tcp.desegment_tcp_streams:TRUE", "-o", "iscsi.desegment_iscsi_messages:TRUE",
         *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def verdict(element: ET.Element | None) -> str | None:
    if element is None:
        return None
    m = re.search(r"\((Good|Bad) CRC32\)", element.get("showname", ""))
    return f"{m.group(1)} CRC32" if m else element.get("showname", "?")


def dissect(path: Path, port: int) -> list[Pdu]:
    """Every iSCSI PDU tshark found, in order, with its TCP stream and digest verdicts."""
    root = ET.fromstring(tshark(path, port, "-T", "pdml"))
    pdus: list[Pdu] = []
    for packet in root.iter("packet"):
        stream_field = packet.find("proto[@name='tcp']/field[@name='tcp.stream']")
        stream = int(stream_field.get("show", "-1")) if stream_field is not None else -1
        for proto in packet.findall("proto[@name='iscsi']"):
            op = proto.find(".//field[@name='iscsi.opcode']")
            assert op is not None, ET.tostring(proto)[:300]
            pdus.append(Pdu(
                stream=stream,
                opcode=int(op.get("show", "0"), 0),
                header_digest=verdict(proto.find(".//field[@name='iscsi.headerdigest32']")),
                data_digest=verdict(proto.find(".//field[@name='iscsi.datadigest32']")),
            ))
    return pdus


def expert_problems(path: Path, port: int) -> list[str]:
    """Malformed frames, and expert entries of warning or worse other than TCP flow control."""
    bad = [line for line in tshark(path, port, "-Y", "_ws.malformed", "-T", "fields",
                                   "-e", "frame.number", "-e", "_ws.col.Info").splitlines()
           if line.strip()]
    text = tshark(path, port, "-q", "-z", "expert,warn")
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+(\S+)\s+(.*\S)\s*$", line)
        if not m or m.group(1) == "Frequency":
            continue
        _freq, _group, protocol, summary = m.groups()
        if protocol == "TCP" and summary.startswith(BENIGN_TCP):
            continue
        bad.append(line.strip())
    return bad


async def test_a_whole_session_decodes_cleanly_in_wireshark(make_target, tgtd, capture):
    target = make_target(luns=(8 * MiB,), params=DIGESTS)
    cap = await trio.to_thread.run_sync(capture, tgtd.port)
    payload = os.urandom(WRITE)
    small = os.urandom(1000)
    with trio.fail_after(60):
        found = await send_targets(HOST, tgtd.port, initiator_name=INITIATOR)
        assert [t.name for t in found] == [target.iqn]
        async with logged_in(settings(target, tgtd.port, offers=OFFERS)) as session:
            assert session.params is not None
            assert session.params.header_digest and session.params.data_digest
            luns = await discover(session)
            bd = BlockDevice(session, luns[1])
            await bd.write(0, payload)
            await bd.write(MiB + 5, small)  # read-modify-write of two blocks
            assert bytes(await bd.read(0, WRITE)) == payload
            assert bytes(await bd.read(MiB + 5, len(small))) == small
    report = await trio.to_thread.run_sync(cap.analyze)
    path = cap.path
    assert report.dropped == 0, "tshark dropped packets: the capture is incomplete"

    pdus = await trio.to_thread.run_sync(dissect, path, tgtd.port)
    assert len(pdus) == report.total_pdus
    streams = sorted({p.stream for p in pdus})
    assert len(streams) == 2, streams  # the discovery session, then the normal one
    discovery = [p for p in pdus if p.stream == streams[0]]
    normal = [p for p in pdus if p.stream == streams[1]]

    # Discovery: login, SendTargets, logout; no digests were negotiated there.
    kinds = Counter(p.opcode for p in discovery)
    assert kinds[TEXT_REQUEST] == kinds[TEXT_RESPONSE] == 1
    assert kinds[LOGOUT_REQUEST] == kinds[LOGOUT_RESPONSE] == 1
    assert kinds[LOGIN_REQUEST] == kinds[LOGIN_RESPONSE] >= 1
    assert set(kinds) == {LOGIN_REQUEST, LOGIN_RESPONSE, TEXT_REQUEST, TEXT_RESPONSE,
                          LOGOUT_REQUEST, LOGOUT_RESPONSE}
    assert all(p.header_digest is None and p.data_digest is None for p in discovery)

    # The normal session: every kind we expect, in plausible numbers.
    kinds = Counter(p.opcode for p in normal)
    assert kinds[LOGIN_REQUEST] == kinds[LOGIN_RESPONSE] >= 1
    assert kinds[LOGOUT_REQUEST] == kinds[LOGOUT_RESPONSE] == 1
    assert kinds[SCSI_COMMAND] >= 6  # REPORT LUNS, INQUIRYs, READ CAPACITY, WRITEs, READs
    assert kinds[R2T] == 2
    # 8 KiB Data-Out PDUs (tgtd's MaxRecvDataSegmentLength): 256 KiB, then 36 KiB.
    assert kinds[DATA_OUT] == 32 + 5
    assert kinds[DATA_IN] >= 4
    assert normal[0].opcode == LOGIN_REQUEST and normal[-1].opcode == LOGOUT_RESPONSE

    # Digests: every full-feature PDU carries a good header digest, every data segment a good
    # data digest (tshark learnt from the captured login that both were negotiated).
    ffp = [p for p in normal if p.opcode not in (LOGIN_REQUEST, LOGIN_RESPONSE)]
    assert [p.header_digest for p in ffp] == ["Good CRC32"] * len(ffp)
    with_data = [p for p in ffp if p.opcode in (DATA_OUT, DATA_IN)]
    assert [p.data_digest for p in with_data] == ["Good CRC32"] * len(with_data)

    assert expert_problems(path, tgtd.port) == []
