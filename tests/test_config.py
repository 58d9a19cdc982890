# Tests of the saved setup: defaults for every key, the exact one-line error for each kind of
# mistake, round trips through tomlkit that keep a person's comments and table order, atomic
# 0600 saves, repair of loose modes, secrets kept out of every repr, message and warning, and
# hypothesis round trips of random valid setups.

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsifs import config as cfg
from iscsifs.config import (
    INITIATOR_PREFIX,
    PARAM_KEYS,
    SCHEMA,
    Config,
    ConfigError,
    ConfigStore,
    InitiatorSetup,
    LoginParams,
    MountSetup,
    PortalSetup,
    Security,
    TargetSetup,
    Timeouts,
    dumps,
    load,
)
from iscsifs.proto.chap import Secret
from iscsifs.proto.discovery import Portal

EXAMPLE = Path(__file__).resolve().parents[1] / "conf" / "iscsifs.example.toml"
NAME = "iqn.2026-11.org.iscsifs:test-host"
T1 = "iqn.2001-04.com.example:disk1"
T2 = "iqn.2001-04.com.example:disk2"
SECRET_A = "Zq8-target-SECRET-7731"
SECRET_B = "Wv3-initiator-SECRET-0954"


def store_at(path: Path, host: str = "My_Host", token: str = "abcdef") -> ConfigStore:
    calls: list[int] = []

    def token_hex(n: int) -> str:
        calls.append(n)
        return token

    store = ConfigStore(path, hostname=lambda: host, token_hex=token_hex)
    store.token_calls = calls  # type: ignore[attr-defined]
    return store


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def one_target(extra: str = "", portal_extra: str = "") -> str:
    return (
        f'[initiator]\nname = "{NAME}"\n\n[[target]]\nname = "{T1}"\n{extra}'
        f'[[target.portal]]\naddress = "127.0.0.1"\n{portal_extra}'
    )


# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------

EXPECTED_PARAMS = {
    "header_digest": "None",
    "data_digest": "None",
    "max_recv_data_segment_length": 262144,
    "first_burst_length": 262144,
    "max_burst_length": 1048576,
    "immediate_data": True,
    "initial_r2t": False,
    "error_recovery_level": 0,
    "max_connections": 1,
    "data_pdu_in_order": True,
    "data_sequence_in_order": True,
    "max_outstanding_r2t": 1,
    "default_time2wait": 2,
    "default_time2retain": 0,
}
EXPECTED_TIMEOUTS = {
    "hold_time": 120,
    "noop_interval": 5,
    "noop_timeout": 5,
    "command_timeout": 30,
    "connect_timeout": 10,
    "login_timeout": 15,
}


def check_builtin_defaults(config: Config) -> None:
    assert config.initiator.boot_delay == 0
    assert config.initiator.isns is None
    assert config.mount.point == "/mnt/iscsifs"
    assert config.mount.allow_other is False
    assert dataclasses.asdict(config.default_params) == EXPECTED_PARAMS
    assert dataclasses.asdict(config.default_timeouts) == EXPECTED_TIMEOUTS
    assert config.targets == ()


@pytest.mark.parametrize("content", [None, "", "\n\n", "# only a comment\n"])
def test_missing_or_empty_file_gives_builtin_defaults(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "iscsifs.toml"
    if content is not None:
        write(path, content)
    config = store_at(path).load()
    check_builtin_defaults(config)
    assert config.initiator.name == INITIATOR_PREFIX + "my-host-abcdef"
    assert config.warnings == ()


def test_generated_name_is_saved_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "iscsifs" / "iscsifs.toml"  # the directory does not exist yet
    first = store_at(path, token="111111")
    name = first.load().initiator.name
    assert name == INITIATOR_PREFIX + "my-host-111111"
    assert first.token_calls == [3]  # type: ignore[attr-defined]
    assert tomllib.loads(path.read_text())["initiator"]["name"] == name
    assert os.stat(path).st_mode & 0o777 == 0o600
    second = store_at(path, token="222222")
    assert second.load().initiator.name == name
    assert second.token_calls == []  # type: ignore[attr-defined]


def test_generated_name_keeps_opening_comments_above(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        f'# my setup\n\n# the disks\n[[target]]\nname = "{T1}"\n[[target.portal]]\n'
        'address = "127.0.0.1"\n',
    )
    store_at(path).load()
    text = path.read_text()
    assert text.startswith("# my setup\n\n[initiator]\nname = ")
    assert text.index("[initiator]") < text.index("# the disks") < text.index("[[target]]")


@pytest.mark.parametrize(
    ("host", "suffix"),
    [
        ("My_Host", "my-host"),
        ("Web01.Example.COM.", "web01.example.com"),
        ("a..b--c", "a.b-c"),
        ("", "host"),
        ("ÄÖÜ", "host"),
        ("-x-", "x"),
    ],
)
def test_generated_name_from_any_hostname_is_valid(tmp_path: Path, host: str, suffix: str) -> None:
    config = store_at(tmp_path / "c.toml", host=host, token="0a1b2c").load()
    assert config.initiator.name == f"{INITIATOR_PREFIX}{suffix}-0a1b2c"
    assert config.initiator.suffix == f"{suffix}-0a1b2c"


def test_target_defaults_and_inheritance(tmp_path: Path) -> None:
    text = one_target(
        extra='[target.params]\nheader_digest = "CRC32C"\n[target.timeouts]\nhold_time = 7.5\n'
    ).replace(
        "\n\n[[target]]",
        '\n[defaults.params]\nmax_burst_length = 524288\ndata_digest = "CRC32C,None"\n'
        "[defaults.timeouts]\nlogin_timeout = 20\n\n[[target]]",
    )
    config = load(write(tmp_path / "c.toml", text))
    (target,) = config.targets
    assert target.alias is None
    assert target.portals == (
        PortalSetup(address="127.0.0.1", port=3260, tpgt=None, visible=True, auto_login=False),
    )
    assert target.security == Security(method="None")
    assert target.discovery_security is None
    assert target.effective_discovery_security is target.security
    assert config.default_params == LoginParams(max_burst_length=524288, data_digest="CRC32C,None")
    assert target.params == LoginParams(
        max_burst_length=524288, data_digest="CRC32C,None", header_digest="CRC32C"
    )
    assert config.default_timeouts == Timeouts(login_timeout=20)
    assert target.timeouts == Timeouts(login_timeout=20, hold_time=7.5)
    assert config.auto_logins() == []


def test_changing_an_informational_parameter_warns(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", one_target(
        extra="[target.params]\nmax_connections = 4\ndata_pdu_in_order = true\n"
    ))
    config = load(path)
    assert config.targets[0].params.max_connections == 4
    assert config.warnings == (
        f"{path}: target[0].params.max_connections = 4 differs from the engine's 1; the manual "
        "lists MaxConnections for information only, change it only if the target needs it",
    )


def test_login_params_offers() -> None:
    assert LoginParams().to_offers() == {
        "HeaderDigest": "None",
        "DataDigest": "None",
        "MaxRecvDataSegmentLength": "262144",
        "FirstBurstLength": "262144",
        "MaxBurstLength": "1048576",
        "ImmediateData": "Yes",
        "InitialR2T": "No",
        "ErrorRecoveryLevel": "0",
        "MaxConnections": "1",
        "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes",
        "MaxOutstandingR2T": "1",
        "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "0",
    }
    offers = LoginParams(header_digest="CRC32C", data_digest="CRC32C,None").to_offers()
    assert offers["HeaderDigest"] == "CRC32C"  # required: a target without digests fails
    assert offers["DataDigest"] == "CRC32C,None"  # preferred: such a target still logs in
    assert list(PARAM_KEYS) == list(EXPECTED_PARAMS)
    assert list(PARAM_KEYS.values()) == list(LoginParams().to_offers())


def test_example_file_matches_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "iscsifs.toml"
    shutil.copy(EXAMPLE, path)
    os.chmod(path, 0o600)
    config = store_at(path, host="box", token="123456").load()
    assert config.warnings == ()
    assert config.initiator == InitiatorSetup(name=INITIATOR_PREFIX + "box-123456")
    check_builtin_defaults(dataclasses.replace(config, targets=()))
    (target,) = config.targets
    assert target == TargetSetup(
        name="iqn.2001-04.com.example:storage.disk1",
        portals=(PortalSetup(address="192.0.2.10"),),
        security=Security(
            method="CHAP",
            target_user="iscsifs-initiator",
            target_secret="ChangeThisTargetSecret",
            initiator_user="storage-disk1",
            initiator_secret="ChangeThisInitiatorSecret",
            mutual=True,
        ),
    )
    # The generated name went under the example's commented-out name line.
    assert '# name = "iqn.2026-11.org.iscsifs:myhost-0a1b2c"\nname = "' in path.read_text()


def example_sections() -> dict[str, list[tuple[int, str]]]:
    """Lines of the example file by the table they are under ('# [x]' counts as a header)."""
    sections: dict[str, list[tuple[int, str]]] = {}
    current = ""
    for number, line in enumerate(EXAMPLE.read_text().splitlines()):
        header = re.fullmatch(r"(?:# )?\[\[?([a-z_.]+)\]\]?", line)
        if header:
            current = header.group(1)
        sections.setdefault(current, []).append((number, line))
    return sections


def test_example_file_documents_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    sections = example_sections()
    documented = {"initiator", "mount", "defaults.params", "defaults.timeouts", "target",
                  "target.portal", "target.security"}
    assert set(SCHEMA) <= set(sections)
    for section, specs in SCHEMA.items():
        found: dict[str, tuple[int, str]] = {}
        for number, line in sections[section]:
            match = re.fullmatch(r"(?:# )?([a-z_0-9]+) = (.+)", line)
            if match and match.group(1) in specs:
                assert match.group(1) not in found, f"{section}.{match.group(1)} twice"
                found[match.group(1)] = (number, match.group(2))
        assert set(found) == set(specs), f"[{section}] lacks {set(specs) - set(found)}"
        for key, (number, text) in found.items():
            spec = specs[key]
            value = tomllib.loads(f"v = {text}")["v"]
            if section in documented:
                # One comment line each: the key's own doc, straight above it.
                assert lines[number - 1] == f"# {spec.doc}", f"{section}.{key}"
            if spec.default is not None and value != spec.default:
                assert "default" in spec.doc, f"{section}.{key}: example value needs its default"
            if section not in ("target.security", "target.discovery_security") and (
                spec.default is not None
            ):
                assert value == spec.default, f"{section}.{key} shows {value!r}"


# ---------------------------------------------------------------------------------------------
# Errors: the exact one-line message for each kind of mistake
# ---------------------------------------------------------------------------------------------

CHAP = f'[target.security]\nmethod = "CHAP"\ntarget_user = "u"\ntarget_secret = "{SECRET_A}"\n'
COMBOS = (
    'allowed combinations: method = "None" alone, or method = "CHAP" with target_user + '
    "target_secret, or with target_user + target_secret + initiator_user + initiator_secret + "
    "mutual"
)
NAMES = (
    "an iSCSI name: iqn.yyyy-mm.reversed.domain[:id], eui.<16 hex> or naa.<16 or 32 hex>"
)

ERROR_CASES = [
    # wrong types
    (f'[initiator]\nname = "{NAME}"\nboot_delay = "5"\n',
     'initiator.boot_delay = "5" is a string; allowed: an integer 0..86400'),
    (one_target(portal_extra='port = "3260"\n'),
     'target[0].portal[0].port = "3260" is a string; allowed: an integer 1..65535'),
    (one_target(portal_extra="port = true\n"),
     "target[0].portal[0].port = true is a boolean; allowed: an integer 1..65535"),
    (one_target(portal_extra="port = 3260.0\n"),
     "target[0].portal[0].port = 3260.0 is a float; allowed: an integer 1..65535"),
    (one_target(portal_extra='visible = "yes"\n'),
     'target[0].portal[0].visible = "yes" is a string; allowed: true or false'),
    (one_target(extra="[target.params]\nheader_digest = true\n"),
     "target[0].params.header_digest = true is a boolean; allowed: "
     '"None", "CRC32C", "CRC32C,None" or "None,CRC32C"'),
    (one_target(extra='[target.timeouts]\nhold_time = "2m"\n'),
     'target[0].timeouts.hold_time = "2m" is a string; allowed: a number of seconds from 0 to '
     "86400"),
    ("[mount]\npoint = 5\n",
     "mount.point = 5 is an integer; allowed: an absolute path other than /"),
    ("[mount]\nallow_other = 1979-05-27\n",
     "mount.allow_other = 1979-05-27 is a date/time; allowed: true or false"),
    ("initiator = 5\n", "initiator = 5 is an integer; allowed: a table [initiator]"),
    (f'[target]\nname = "{T1}"\n',
     "target is a table; allowed: an array of tables [[target]]"),
    (f'[[target]]\nname = "{T1}"\n[target.portal]\naddress = "127.0.0.1"\n',
     "target[0].portal is a table; allowed: an array of tables [[target.portal]]"),
    (one_target() + '[[target.security]]\nmethod = "None"\n',
     "target[0].security = [...] is an array; allowed: a table [target.security]"),
    (one_target(extra="[target.security]\ntarget_secret = 12345678901234\n"),
     "target[0].security.target_secret = <hidden> is an integer; allowed: a string of 1..255 "
     "bytes"),
    # out of range and bad choices
    (f'[initiator]\nname = "{NAME}"\nboot_delay = -1\n',
     "initiator.boot_delay = -1 is out of range; allowed: an integer 0..86400"),
    (one_target(portal_extra="port = 70000\n"),
     "target[0].portal[0].port = 70000 is out of range; allowed: an integer 1..65535"),
    (one_target(portal_extra="tpgt = 65536\n"),
     "target[0].portal[0].tpgt = 65536 is out of range; allowed: an integer 0..65535"),
    ("[defaults.params]\nmax_recv_data_segment_length = 511\n",
     "defaults.params.max_recv_data_segment_length = 511 is out of range; allowed: an integer "
     "512..16777215"),
    (one_target(extra="[target.params]\nmax_burst_length = 16777216\n"),
     "target[0].params.max_burst_length = 16777216 is out of range; allowed: an integer "
     "512..16777215"),
    ("[defaults.params]\nerror_recovery_level = 2\n",
     "defaults.params.error_recovery_level = 2 is out of range; allowed: an integer 0..1"),
    ('[defaults.params]\ndata_digest = "crc32c"\n',
     'defaults.params.data_digest = "crc32c" is not one of the choices; allowed: "None", '
     '"CRC32C", "CRC32C,None" or "None,CRC32C"'),
    ("[defaults.timeouts]\nnoop_timeout = 0\n",
     "defaults.timeouts.noop_timeout = 0 is out of range; allowed: a number of seconds more "
     "than 0 and at most 3600"),
    ("[defaults.timeouts]\nhold_time = -0.5\n",
     "defaults.timeouts.hold_time = -0.5 is out of range; allowed: a number of seconds from 0 "
     "to 86400"),
    ("[defaults.timeouts]\ncommand_timeout = inf\n",
     "defaults.timeouts.command_timeout = inf is out of range; allowed: a number of seconds "
     "more than 0 and at most 86400"),
    ('[mount]\npoint = "mnt/x"\n',
     'mount.point = "mnt/x" is not an absolute path; allowed: an absolute path other than /'),
    ('[mount]\npoint = "//"\n',
     'mount.point = "//" is the root directory; allowed: an absolute path other than /'),
    (one_target(extra="[target.params]\nfirst_burst_length = 2000000\n"),
     "target[0].params: first_burst_length = 2000000 is more than max_burst_length = 1048576; "
     "allowed: first_burst_length <= max_burst_length (RFC 7143 section 13.14)"),
    # unknown keys
    (one_target(portal_extra="prot = 3260\n"),
     "target[0].portal[0].prot: unknown key 'prot' in [target.portal]; did you mean 'port'? "
     "(allowed: address, port, tpgt, visible, auto_login)"),
    ("[targets]\n",
     "targets: unknown key 'targets' at the top level; did you mean 'target'? "
     "(allowed: initiator, mount, defaults, target)"),
    ('[defaults]\nheader_digest = "CRC32C"\n',
     "defaults.header_digest: unknown key 'header_digest' in [defaults]; it belongs in "
     "[defaults.params] (allowed: params, timeouts)"),
    (one_target(extra="port = 3260\n"),
     "target[0].port: unknown key 'port' in [target]; it belongs in [target.portal] "
     "(allowed: name, alias, portal, security, discovery_security, params, timeouts)"),
    (one_target(extra="[target.security]\nmethod = \"None\"\nsecret = \"x\"\n"),
     "target[0].security.secret: unknown key 'secret' in [target.security]; did you mean "
     "'target_secret'? (allowed: method, target_user, target_secret, initiator_user, "
     "initiator_secret, mutual)"),
    ("[mount]\nzzz = 1\n",
     "mount.zzz: unknown key 'zzz' in [mount] (allowed: point, allow_other, max_read, max_write)"),
    # syntax
    (f'[initiator]\nname = "{NAME}"\nboot_delay = = 3\n',
     "line 3, column 14: TOML syntax error: Invalid value"),
    ('[mount]\npoint = "/mnt\n', "line 2, column 14: TOML syntax error: Illegal character '\\n'"),
    # names and addresses
    ('[initiator]\nname = "IQN.2026-11.org.iscsifs:t"\n',
     'initiator.name = "IQN.2026-11.org.iscsifs:t" is not a valid iSCSI name (an iSCSI name '
     f"must start with 'iqn.', 'eui.' or 'naa.'); allowed: {NAMES}"),
    (one_target().replace(T1, "iqn.2001-13.com.example:a"),
     'target[0].name = "iqn.2001-13.com.example:a" is not a valid iSCSI name (month 13 in the '
     f"iqn. date is not 01..12); allowed: {NAMES}"),
    (one_target().replace(T1, "eui.12345"),
     'target[0].name = "eui.12345" is not a valid iSCSI name (an eui. name needs exactly 16 '
     f"hexadecimal digits after 'eui.'); allowed: {NAMES}"),
    (one_target().replace(T1, "iqn.2001-04.com.Example:a"),
     'target[0].name = "iqn.2001-04.com.Example:a" is not a valid iSCSI name (an iqn. name '
     f"must be lower case (RFC 3722 normalises it)); allowed: {NAMES}"),
    (f'[initiator]\nname = "{NAME}"\nisns = "[::1"\n',
     'initiator.isns = "[::1" is not a valid host[:port]; allowed: "host[:port]" (the port '
     "defaults to 3205)"),
    (one_target().replace('"127.0.0.1"', '"[::1]"'),
     'target[0].portal[0].address = "[::1]" is not an IPv4 address, an IPv6 address without '
     "brackets or a host name; allowed: an IPv4 address, an IPv6 address without brackets or "
     "a host name"),
    (one_target().replace('"127.0.0.1"', '"999.1.1.1"'),
     'target[0].portal[0].address = "999.1.1.1" is not an IPv4 address, an IPv6 address '
     "without brackets or a host name; allowed: an IPv4 address, an IPv6 address without "
     "brackets or a host name"),
    # structure
    (f'[initiator]\nname = "{NAME}"\n[[target]]\nname = "{T1}"\n',
     "target[0]: a target needs at least one [[target.portal]] with an address"),
    (f'[[target]]\nname = "{T1}"\n[[target.portal]]\nport = 3260\n',
     "target[0].portal[0]: address is missing; allowed: an IPv4 address, an IPv6 address "
     "without brackets or a host name"),
    (one_target() + '[[target.portal]]\naddress = "0:0::0:1"\n[[target.portal]]\n'
     'address = "127.0.0.1"\nport = 3260\n',
     "target[0].portal[2]: 127.0.0.1:3260 is listed twice (also portal[0]); allowed: each "
     "address and port once per target"),
    (one_target() + f'[[target]]\nname = "{T1}"\n[[target.portal]]\naddress = "h"\n',
     f'target[1].name = "{T1}" is already configured as target[0]; allowed: each target once'),
    (one_target().replace(T1, "eui.0123456789ABCDEF")
     + '[[target]]\nname = "eui.0123456789abcdef"\n[[target.portal]]\naddress = "h"\n',
     'target[1].name = "eui.0123456789abcdef" is already configured as target[0]; allowed: '
     "each target once"),
    (one_target(portal_extra="visible = false\nauto_login = true\n"),
     "target[0].portal[0].auto_login: auto_login = true needs visible = true (the manual: only "
     "a visible port logs in); allowed: visible = true, or auto_login = false"),
    # security combinations (the manual's valid option combinations only)
    (one_target(extra='[target.security]\nmethod = "CHAP"\ntarget_user = "u"\n'),
     f'target[0].security: method = "CHAP" needs target_secret; {COMBOS}'),
    (one_target(extra='[target.security]\nmethod = "CHAP"\n'),
     f'target[0].security: method = "CHAP" needs target_user and target_secret; {COMBOS}'),
    (one_target(extra=f'[target.security]\ntarget_user = "u"\ntarget_secret = "{SECRET_A}"\n'),
     'target[0].security: method = "None" takes no target_user or target_secret; set method = '
     f'"CHAP" to use them; {COMBOS}'),
    (one_target(extra=CHAP + "mutual = true\n"),
     f"target[0].security: mutual = true needs initiator_user and initiator_secret; {COMBOS}"),
    (one_target(extra=CHAP + 'initiator_user = "i"\n'),
     f"target[0].security: initiator_user needs initiator_secret and mutual; {COMBOS}"),
    (one_target(extra=CHAP + f'initiator_user = "i"\ninitiator_secret = "{SECRET_B}"\n'),
     f"target[0].security: initiator_user and initiator_secret needs mutual; {COMBOS}"),
    (one_target(extra=CHAP + f'initiator_secret = "{SECRET_B}"\nmutual = true\n'),
     f"target[0].security: initiator_secret and mutual needs initiator_user; {COMBOS}"),
    (one_target(extra=CHAP.replace("security", "discovery_security") + "mutual = true\n"),
     f"target[0].discovery_security: mutual = true needs initiator_user and initiator_secret; "
     f"{COMBOS}"),
    (one_target(extra=CHAP + f'initiator_user = "i"\ninitiator_secret = "{SECRET_A}"\n'
                'mutual = true\n'),
     "target[0].security.initiator_secret = <hidden> is the same as target_secret; allowed: a "
     "different secret when mutual = true (RFC 7143 section 9.2.1)"),
    (one_target(extra='[target.security]\nmethod = "chap"\n'),
     'target[0].security.method = "chap" is not one of the choices; allowed: "None" or "CHAP"'),
    (one_target(extra='[target.security]\nmethod = "CHAP"\ntarget_user = ""\n'
                f'target_secret = "{SECRET_A}"\n'),
     'target[0].security.target_user = "" is not 1..255 bytes long; allowed: a string of '
     "1..255 bytes"),
    (one_target(extra='[target.security]\nmethod = "CHAP"\ntarget_user = "u"\n'
                'target_secret = ""\n'),
     "target[0].security.target_secret = <hidden> is not 1..255 bytes long; allowed: a string "
     "of 1..255 bytes"),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_each_mistake_gives_its_one_line_error(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "setup.toml", text)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        store_at(path).load()
    message = str(info.value)
    assert message == f"{path}: {expected}"
    assert "\n" not in message
    assert SECRET_A not in message and SECRET_B not in message
    assert info.value.file == str(path)
    assert path.read_bytes() == before  # a refused file is never touched


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"[mount]\npoint = \"/mnt/\xff\"\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: line 2: not UTF-8 text (byte 22); allowed: a UTF-8 TOML file"
    )


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "c.toml")
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "c.toml")
    assert str(info.value) == f"{tmp_path / 'c.toml'}: is not a regular file; allowed: a TOML file"


def test_odd_keys_and_names_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[mount]\n"a\\nb" = 1\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f'{path}: mount."a\\nb": unknown key "a\\nb" in [mount] (allowed: point, allow_other, max_read, max_write)'
    )
    store = store_at(write(tmp_path / "d.toml", f'[initiator]\nname = "{NAME}"\n'))
    with pytest.raises(ConfigError) as info:
        store.remove_target("iqn.x\nforged line")
    assert str(info.value) == (
        f'{tmp_path / "d.toml"}: target "iqn.x\\nforged line" is not configured'
    )


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory; allowed: a TOML file"


def test_dataclasses_validate_what_code_builds() -> None:
    with pytest.raises(ConfigError) as info:
        LoginParams(first_burst_length=2097152)
    assert str(info.value) == (
        "LoginParams: first_burst_length = 2097152 is more than max_burst_length = 1048576; "
        "allowed: first_burst_length <= max_burst_length (RFC 7143 section 13.14)"
    )
    with pytest.raises(ConfigError) as info:
        LoginParams(header_digest="crc")
    assert str(info.value).startswith('LoginParams.header_digest = "crc" is not one of')
    with pytest.raises(ConfigError) as info:
        Timeouts(login_timeout=0)
    assert str(info.value).startswith("Timeouts.login_timeout = 0 is out of range")
    with pytest.raises(ConfigError) as info:
        PortalSetup(address="h", visible=False, auto_login=True)
    assert "auto_login = true needs visible = true" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Security(method="CHAP", target_user="u")
    assert str(info.value) == f'Security: method = "CHAP" needs target_secret; {COMBOS}'
    with pytest.raises(ConfigError) as info:
        Security(method="CHAP", target_user="u", target_secret=SECRET_A, initiator_user="i",
                 initiator_secret=SECRET_A, mutual=True)
    assert str(info.value).startswith("Security.initiator_secret = <hidden> is the same")
    with pytest.raises(ConfigError) as info:
        TargetSetup(name=T1, portals=())
    assert "needs at least one [[target.portal]]" in str(info.value)
    with pytest.raises(ConfigError) as info:
        TargetSetup(name=T1, portals=(PortalSetup(address="h"), PortalSetup(address="H")))
    assert "listed twice" in str(info.value)
    with pytest.raises(ConfigError):
        Config(
            initiator=InitiatorSetup(name=NAME),
            targets=(TargetSetup(name=T1, portals=(PortalSetup(address="h"),)),) * 2,
        )
    with pytest.raises(ConfigError):
        InitiatorSetup(name="nope")
    with pytest.raises(ConfigError):
        MountSetup(point="relative")
    # Stored unused: all five keys with mutual = false is one of the manual's combinations.
    kept = Security(method="CHAP", target_user="u", target_secret=SECRET_A, initiator_user="i",
                    initiator_secret=SECRET_B)
    assert kept.mutual_credentials is None
    assert kept.target_credentials == ("u", Secret(SECRET_A))


# ---------------------------------------------------------------------------------------------
# Round trips through tomlkit: comments, order and formatting survive
# ---------------------------------------------------------------------------------------------

HAND_WRITTEN = f"""\
# My iSCSI setup -- hand-written, please keep this comment.

[mount]
point = "/srv/iscsi"   # the big disk
allow_other = true

[initiator]
name = "{NAME}"  # do not change: the targets' ACLs use it
boot_delay = 10

# ---- the lab array ----
[[target]]
name = "{T1}"
alias = "lab"

[[target.portal]]
address = "127.0.0.1"
port = 3261 # moved here in 2025

# second path
[[target.portal]]
address = "127.0.0.2"
port = 3261

# login security
[target.security]
method = "CHAP"
target_user = "lab-user"
target_secret = "{SECRET_A}"

# ---- the backup box ----
[[target]]
name = "{T2}"

[[target.portal]]
address = "backup.example"

# end of file
"""


def table_headers(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def test_round_trip_keeps_comments_and_order(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.load()
    store.set_boot_delay(30)
    store.set_isns("127.0.0.1", 3206)
    store.set_portal(T1, "127.0.0.2", 3261, auto_login=True)
    store.set_param(T1, "header_digest", "CRC32C,None")
    store.set_timeout(None, "hold_time", 60)
    store.add_target("iqn.2001-04.com.example:disk3", ["127.0.0.3"], auto_login=True)
    store.save()
    text = path.read_text()
    for comment in (
        "# My iSCSI setup -- hand-written, please keep this comment.",
        'point = "/srv/iscsi"   # the big disk',
        f'name = "{NAME}"  # do not change: the targets\' ACLs use it',
        "# ---- the lab array ----",
        "port = 3261 # moved here in 2025",
        "# second path",
        "# login security",
        "# ---- the backup box ----",
        "# end of file",
    ):
        assert comment in text, comment
    # Each comment still stands right above the table it introduces.
    assert "# ---- the lab array ----\n[[target]]\nname = " in text
    assert "# second path\n[[target.portal]]\naddress = \"127.0.0.2\"" in text
    assert "# login security\n[target.security]" in text
    assert f'# ---- the backup box ----\n[[target]]\nname = "{T2}"' in text
    assert text.rstrip().endswith("# end of file")
    assert table_headers(text) == [
        "[mount]", "[initiator]", "[defaults.timeouts]",
        "[[target]]", "[[target.portal]]", "[[target.portal]]", "[target.security]",
        "[target.params]",
        "[[target]]", "[[target.portal]]",
        "[[target]]", "[[target.portal]]",
    ]
    config = load(path)
    assert config == store.config
    assert config.initiator == InitiatorSetup(name=NAME, boot_delay=30, isns="127.0.0.1:3206")
    assert config.initiator.isns_portal == Portal("127.0.0.1", 3206)
    assert config.mount == MountSetup(point="/srv/iscsi", allow_other=True)
    assert config.default_timeouts == Timeouts(hold_time=60)
    lab, backup, new = config.targets
    assert lab.alias == "lab"
    assert lab.params == LoginParams(header_digest="CRC32C,None")
    assert lab.timeouts == Timeouts(hold_time=60)
    assert [(p.address, p.port, p.auto_login) for p in lab.portals] == [
        ("127.0.0.1", 3261, False), ("127.0.0.2", 3261, True),
    ]
    assert backup.portals == (PortalSetup(address="backup.example"),)
    assert new.portals == (PortalSetup(address="127.0.0.3", auto_login=True),)
    assert [(t.name, p.address) for t, p in config.auto_logins()] == [
        (T1, "127.0.0.2"), ("iqn.2001-04.com.example:disk3", "127.0.0.3"),
    ]


def test_save_without_changes_is_byte_identical(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.load()
    store.save()
    assert path.read_text() == HAND_WRITTEN


def test_remove_target_keeps_the_next_targets_comment(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    assert store.remove_target(T1) is True
    store.save()
    text = path.read_text()
    assert "# ---- the backup box ----\n[[target]]" in text
    assert "lab-user" not in text and SECRET_A not in text
    assert [t.name for t in load(path).targets] == [T2]
    assert "# end of file" in text


def test_remove_target_by_address(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    # Not the saved address: only that portal goes.
    assert store.remove_target(T1, "127.0.0.2:3261") is False
    assert [p.address for p in store.config.target(T1).portals] == ["127.0.0.1"]
    with pytest.raises(ConfigError) as info:
        store.remove_target(T1, "127.0.0.9")
    assert str(info.value) == f"{path}: target {T1} has no portal at 127.0.0.9"
    with pytest.raises(ConfigError) as info:
        store.remove_target(T1, "127.0.0.1:3260")  # right address, wrong port
    assert "has no portal at 127.0.0.1:3260" in str(info.value)
    # The saved address (the first portal): all traces of the target go.
    assert store.remove_target(T1, "127.0.0.1") is True
    assert store.config.target(T1) is None
    # The last portal of a target: the target goes too. (A (host, port) pair works too.)
    assert store.remove_target(T2, ("BACKUP.example.", 3260)) is True
    assert store.config.targets == ()
    store.save()
    assert load(path).targets == ()
    assert "# end of file" in path.read_text()
    with pytest.raises(ConfigError) as info:
        store.remove_target(T2)
    assert str(info.value) == f"{path}: target {T2} is not configured"


def test_remove_middle_portal_takes_its_comment_and_keeps_the_next(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.set_portal(T1, "127.0.0.5", 3260)
    assert store.remove_target(T1, Portal("127.0.0.2", 3261)) is False
    store.save()
    text = path.read_text()
    assert "# second path" not in text  # it introduced the removed portal
    assert "port = 3261 # moved here in 2025\n" in text
    assert "# login security\n[target.security]" in text
    assert [p.address for p in load(path).target(T1).portals] == ["127.0.0.1", "127.0.0.5"]


def test_move_portal_for_a_permanent_redirect(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.set_portal(T1, "127.0.0.1", 3261, auto_login=True, tpgt=4)
    store.move_portal(T1, ("127.0.0.1", 3261), Portal("::1", 3262, 7))
    store.save()
    text = path.read_text()
    assert "# moved here in 2025" in text  # the comment stays on the moved portal's port line
    first = load(path).target(T1).portals[0]
    assert first == PortalSetup(address="::1", port=3262, tpgt=7, auto_login=True)
    # Onto a portal the target already has: merged, the boxes or-ed.
    store.move_portal(T1, ("::1", 3262), ("127.0.0.2", 3261))
    assert store.config.target(T1).portals == (
        PortalSetup(address="127.0.0.2", port=3261, auto_login=True),
    )
    with pytest.raises(ConfigError):
        store.move_portal(T1, ("10.9.9.9", 3260), ("10.9.9.8", 3260))


def test_set_portal_and_timeouts_and_params(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.set_portal(T2, "backup.example", visible=False)
    store.set_portal(T2, "10.1.1.1", 3270, tpgt=3)
    store.set_timeout(T2, "noop_interval", 0)
    store.set_timeout(T2, "command_timeout", 2.5)
    store.set_param(None, "error_recovery_level", 1)
    config = store.config
    target = config.target(T2)
    assert target.portals == (
        PortalSetup(address="backup.example", visible=False),
        PortalSetup(address="10.1.1.1", port=3270, tpgt=3),
    )
    assert target.timeouts == Timeouts(noop_interval=0, command_timeout=2.5)
    assert target.params == LoginParams(error_recovery_level=1)
    with pytest.raises(ConfigError) as info:
        store.set_timeout(T2, "hold_tme", 5)
    assert str(info.value) == (
        f"{path}: unknown key 'hold_tme' in [timeouts]; did you mean 'hold_time'? (allowed: "
        "hold_time, noop_interval, noop_timeout, command_timeout, connect_timeout, login_timeout)"
    )
    with pytest.raises(ConfigError) as info:
        store.set_timeout(T2, "noop_timeout", 0)
    assert str(info.value) == (
        f"{path}: target[1].timeouts.noop_timeout = 0 is out of range; allowed: a number of "
        "seconds more than 0 and at most 3600"
    )
    with pytest.raises(ConfigError):
        store.set_portal(T2, "backup.example", auto_login=True)  # invisible portal
    assert store.config == config  # failed changes left nothing behind


def test_set_security(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    mutual = Security(method="CHAP", target_user="lab-user", target_secret=SECRET_A,
                      initiator_user="array", initiator_secret=SECRET_B, mutual=True)
    store.set_security(T1, mutual)
    store.set_security(T1, Security(method="None"), discovery=True)
    store.save()
    text = path.read_text()
    assert "# login security\n[target.security]" in text
    target = load(path).target(T1)
    assert target.security == mutual
    assert target.security.mutual_credentials == ("array", Secret(SECRET_B))
    assert target.effective_discovery_security == Security(method="None")
    store.set_security(T1, None, discovery=True)
    store.set_security(T1, None)
    assert store.config.target(T1).security == Security()
    assert store.config.target(T1).discovery_security is None
    assert SECRET_A not in store.text() and SECRET_B not in store.text()


def test_initiator_suffix_and_boot_delay_and_isns(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    assert store.set_initiator_suffix("attofast").initiator.name == INITIATOR_PREFIX + "attofast"
    with pytest.raises(ConfigError) as info:
        store.set_initiator_suffix("Bad Name")
    assert str(info.value).startswith(
        f'{path}: initiator.name = "{INITIATOR_PREFIX}Bad Name" is not a valid iSCSI name'
    )
    assert store.config.initiator.name == INITIATOR_PREFIX + "attofast"
    store.set_isns("::1", 3205)
    assert store.config.initiator.isns == "[::1]:3205"
    assert store.config.initiator.isns_portal == Portal("::1", 3205)
    store.set_isns("[fe80::2]")
    assert store.config.initiator.isns == "fe80::2"
    assert store.config.initiator.isns_portal == Portal("fe80::2", 3205)
    store.set_isns("isns.example")
    assert store.config.initiator.isns_portal == Portal("isns.example", 3205)
    store.set_isns(None)
    assert store.config.initiator.isns is None
    assert store.config.initiator.isns_portal is None
    with pytest.raises(ConfigError):
        InitiatorSetup(name=NAME, isns="[::1")
    with pytest.raises(ConfigError) as info:
        store.set_boot_delay(-5)
    assert str(info.value) == (
        f"{path}: initiator.boot_delay = -5 is out of range; allowed: an integer 0..86400"
    )
    store.save()
    assert 'name = "iqn.2026-11.org.iscsifs:attofast"  # do not change' in path.read_text()


@pytest.mark.parametrize(
    ("name", "suffix", "expected"),
    [
        (NAME, "lab:two", INITIATOR_PREFIX + "lab:two"),
        ("iqn.2001-04.com.example:old:part", "new", "iqn.2001-04.com.example:new"),
        ("eui.0123456789abcdef", "new", INITIATOR_PREFIX + "new"),
    ],
)
def test_set_initiator_suffix_replaces_only_the_suffix(
    tmp_path: Path, name: str, suffix: str, expected: str
) -> None:
    path = write(tmp_path / "c.toml", f'[initiator]\nname = "{name}"\n')
    store = store_at(path)
    assert store.set_initiator_suffix(suffix).initiator.name == expected


def test_add_target_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    with pytest.raises(ConfigError) as info:
        store.add_target(T1, ["127.0.0.1"])
    assert str(info.value) == (
        f"{path}: target {T1} is already configured; allowed: a target not yet added"
    )
    with pytest.raises(ConfigError) as info:
        store.add_target("iqn.2001-04.com.example:x", ["127.0.0.1:99999"])
    assert str(info.value) == (
        f"{path}: target iqn.2001-04.com.example:x: invalid portal port '99999' (expected "
        "1..65535)"
    )
    with pytest.raises(ConfigError) as info:
        store.add_target("iqn.bad", ["127.0.0.1"])
    assert str(info.value).startswith(f"{path}: target iqn.bad: TargetSetup.name = ")
    with pytest.raises(ConfigError):
        store.add_target("iqn.2001-04.com.example:x", [])


def test_add_target_writes_only_what_differs_from_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'[initiator]\nname = "{NAME}"\n')
    store = store_at(path)
    store.add_target(
        T1,
        [Portal("127.0.0.1", 3260, 1), PortalSetup(address="::1", visible=False)],
        alias="disk one",
        params=LoginParams(data_digest="CRC32C"),
        timeouts=Timeouts(hold_time=3),
        discovery_security=Security(method="None"),
    )
    store.save()
    data = tomllib.loads(path.read_text())
    assert data["target"] == [{
        "name": T1,
        "alias": "disk one",
        "portal": [
            {"address": "127.0.0.1", "port": 3260, "tpgt": 1, "visible": True,
             "auto_login": False},
            {"address": "::1", "port": 3260, "visible": False, "auto_login": False},
        ],
        "discovery_security": {"method": "None"},
        "params": {"data_digest": "CRC32C"},
        "timeouts": {"hold_time": 3},
    }]


def test_inline_tables_are_edited_too(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        f'[initiator]\nname = "{NAME}"\n[[target]]\nname = "{T1}"\n'
        'portal = [ {address = "127.0.0.1"}, {address = "127.0.0.2"} ]\n',
    )
    store = store_at(path)
    store.set_portal(T1, "127.0.0.1", auto_login=True)
    store.set_portal(T1, "127.0.0.3")
    store.remove_target(T1, "127.0.0.2")
    store.save()
    assert [(p.address, p.auto_login) for p in load(path).target(T1).portals] == [
        ("127.0.0.1", True), ("127.0.0.3", False),
    ]


# ---------------------------------------------------------------------------------------------
# Saving: validated first, atomic, 0600, never over someone else's edit
# ---------------------------------------------------------------------------------------------


def test_failing_validation_at_save_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.load()
    store._doc["initiator"]["boot_delay"] = -1  # an edit that skipped validation
    with pytest.raises(ConfigError) as info:
        store.save()
    assert "initiator.boot_delay = -1 is out of range" in str(info.value)
    assert path.read_text() == HAND_WRITTEN
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]


def test_failing_change_leaves_store_and_file_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    before_config, before_text = store.load(), store.text()
    with pytest.raises(ConfigError):
        store.set_param(T1, "first_burst_length", 2 * 10**6)
    assert store.config == before_config and store.text() == before_text
    store.save()
    assert path.read_text() == HAND_WRITTEN


def test_crash_during_write_leaves_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.set_boot_delay(99)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cfg.os, "replace", broken_replace)
    with pytest.raises(ConfigError) as info:
        store.save()
    assert str(info.value) == f"{path}: cannot save it: No space left on device"
    assert path.read_text() == HAND_WRITTEN
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]  # no temp file left


def test_save_mode_is_0600_and_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "iscsifs.toml"
    store = store_at(path)
    store.add_target(T1, ["127.0.0.1"])
    store.save()
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.chmod(0o644)  # no secret in it: a looser mode is left alone on load...
    assert load(path).warnings == ()
    assert os.stat(path).st_mode & 0o777 == 0o644
    store = store_at(path)
    store.set_boot_delay(1)
    store.save()  # ...but every save writes 0600
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_symlinked_config_stays_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path / "real.toml", f'[initiator]\nname = "{NAME}"\n')
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    store = store_at(link)
    store.set_boot_delay(4)
    store.save()
    assert link.is_symlink()
    assert load(real).initiator.boot_delay == 4


def test_save_refuses_to_overwrite_an_edit_made_meanwhile(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.load()
    edited = HAND_WRITTEN.replace("boot_delay = 10", "boot_delay = 11")
    path.write_text(edited)
    store.set_boot_delay(12)
    with pytest.raises(ConfigError) as info:
        store.save()
    assert str(info.value) == (
        f"{path}: changed on disk since it was loaded; load it again and redo the change "
        "(allowed: saving over the version that was loaded)"
    )
    assert path.read_text() == edited
    store.load()
    store.set_boot_delay(12)
    store.save()
    assert load(path).initiator.boot_delay == 12


# ---------------------------------------------------------------------------------------------
# Permissions and ownership
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o666])
def test_loose_file_with_a_secret_is_repaired_with_a_warning(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN, mode=mode)
    config = store_at(path).load()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert config.warnings == (
        f"{path}: holds CHAP secrets but group or others could read or write it "
        f"(mode {mode:04o}); changed its mode to 0600",
    )
    assert path.read_text() == HAND_WRITTEN  # only the mode changed
    assert store_at(path).load().warnings == ()


def test_loose_file_without_secrets_is_left_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'[initiator]\nname = "{NAME}"\n', mode=0o644)
    assert load(path).warnings == ()
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'[initiator]\nname = "{NAME}"\n')
    os.chown(path, 54321, 54321)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: owned by uid 54321, not by root or by us (uid {os.geteuid()}); refusing a "
        "setup another user controls; allowed: a file owned by root or by us"
    )


# ---------------------------------------------------------------------------------------------
# Secrets never show
# ---------------------------------------------------------------------------------------------


def test_secrets_never_appear_in_reprs_errors_or_warnings(tmp_path: Path) -> None:
    weak_a, weak_b = "pass word", "shrt\x07"  # break the manual's guidelines: warned, not refused
    text = one_target(extra=(
        '[target.security]\nmethod = "CHAP"\ntarget_user = "u"\n'
        f'target_secret = "{weak_a}"\ninitiator_user = "i"\ninitiator_secret = "shrt\\u0007"\n'
        'mutual = true\n'
    ))
    path = write(tmp_path / "c.toml", text, mode=0o644)
    store = store_at(path)
    config = store.load()
    seen: list[str] = [repr(config), str(config), repr(store), *config.warnings]
    target = config.targets[0]
    for obj in (target, target.security, target.security.target_secret, target.portals[0],
                target.security.target_credentials, target.security.mutual_credentials):
        seen += [repr(obj), str(obj), f"{obj}"]
    assert len(config.warnings) == 5  # the repair, and one per broken guideline
    assert sum("target_secret: the CHAP secret contains a space" in w
               for w in config.warnings) == 1
    assert sum("initiator_secret: the CHAP secret should be longer than 12" in w
               for w in config.warnings) == 1
    # Errors about secrets, from the file and from code.
    for bad in (
        CHAP + 'initiator_user = "i"\n' + f'initiator_secret = "{SECRET_A}"\nmutual = true\n',
        f'[target.security]\nmethod = "None"\ntarget_secret = "{SECRET_A}"\n',
        f'[target.security]\nmethod = "CHAP"\ntarget_user = "u"\ntarget_secret = "{SECRET_A}"\n'
        f'target_secrett = "{SECRET_B}"\n',
        f'[target.security]\nmethod = "CHAP"\ntarget_user = "u"\ntarget_secret = ["{SECRET_A}"]\n',
        f'[target.security]\nmethod = "CHAP"\ntarget_user = "u"\ntarget_secret = "{SECRET_A}\n',
    ):
        write(path, one_target(extra=bad))
        with pytest.raises(ConfigError) as info:
            load(path)
        seen.append(str(info.value))
    for build in (
        lambda: Security(method="None", target_secret=SECRET_A),
        lambda: Security(method="CHAP", target_user="u", target_secret=SECRET_A,
                         initiator_user="i", initiator_secret=SECRET_A, mutual=True),
        lambda: Security(method="CHAP", target_user="u", target_secret=123),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        seen.append(str(info.value))
    for secret in (weak_a, weak_b, SECRET_A, SECRET_B):
        for message in seen:
            assert secret not in message, message


# ---------------------------------------------------------------------------------------------
# Hypothesis: random valid setups survive save and load unchanged
# ---------------------------------------------------------------------------------------------

LABEL = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1, max_size=20,
).filter(lambda s: s.isprintable())
SECRETS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: "\0" not in s
)
IQN = st.from_regex(r"iqn\.20[0-2][0-9]-(0[1-9]|1[0-2])\.com\.[a-z]{1,8}(:[a-z0-9.:-]{1,20})?",
                    fullmatch=True)
EUI = st.from_regex(r"eui\.[0-9A-Fa-f]{16}", fullmatch=True)
NAA = st.from_regex(r"naa\.([0-9a-f]{16}|[0-9A-F]{32})", fullmatch=True)
HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z]{2,5}){0,2}", fullmatch=True)
ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    HOSTS,
)
SECONDS = st.one_of(st.integers(1, 3600), st.floats(0.001, 3600, allow_nan=False))


@st.composite
def portals(draw: st.DrawFn) -> PortalSetup:
    visible = draw(st.booleans())
    return PortalSetup(
        address=draw(ADDRESSES),
        port=draw(st.integers(1, 65535)),
        tpgt=draw(st.none() | st.integers(0, 65535)),
        visible=visible,
        auto_login=visible and draw(st.booleans()),
    )


def portal_key(portal: PortalSetup) -> tuple[object, int]:
    try:
        return ipaddress.ip_address(portal.address), portal.port
    except ValueError:
        return portal.address.lower(), portal.port


@st.composite
def securities(draw: st.DrawFn) -> Security:
    kind = draw(st.sampled_from(["none", "one-way", "stored", "mutual"]))
    if kind == "none":
        return Security()
    target_secret = draw(SECRETS)
    fields: dict[str, object] = dict(
        method="CHAP", target_user=draw(LABEL), target_secret=target_secret
    )
    if kind in ("stored", "mutual"):
        fields.update(
            initiator_user=draw(LABEL),
            initiator_secret=draw(SECRETS.filter(lambda s: s != target_secret)),
            mutual=kind == "mutual",
        )
    return Security(**fields)


@st.composite
def login_params(draw: st.DrawFn) -> LoginParams:
    most = draw(st.integers(512, 16777215))
    return LoginParams(
        header_digest=draw(st.sampled_from(cfg.DIGEST_CHOICES)),
        data_digest=draw(st.sampled_from(cfg.DIGEST_CHOICES)),
        max_recv_data_segment_length=draw(st.integers(512, 16777215)),
        first_burst_length=draw(st.integers(512, most)),
        max_burst_length=most,
        immediate_data=draw(st.booleans()),
        initial_r2t=draw(st.booleans()),
        error_recovery_level=draw(st.integers(0, 1)),
        max_connections=draw(st.integers(1, 65535)),
        data_pdu_in_order=draw(st.booleans()),
        data_sequence_in_order=draw(st.booleans()),
        max_outstanding_r2t=draw(st.integers(1, 65535)),
        default_time2wait=draw(st.integers(0, 3600)),
        default_time2retain=draw(st.integers(0, 3600)),
    )


@st.composite
def timeouts(draw: st.DrawFn) -> Timeouts:
    return Timeouts(
        hold_time=draw(st.integers(0, 86400) | st.floats(0, 86400, allow_nan=False)),
        noop_interval=draw(st.integers(0, 3600)),
        noop_timeout=draw(SECONDS),
        command_timeout=draw(SECONDS),
        connect_timeout=draw(SECONDS),
        login_timeout=draw(SECONDS),
    )


@st.composite
def targets(draw: st.DrawFn, params: LoginParams, times: Timeouts) -> TargetSetup:
    return TargetSetup(
        name=draw(st.one_of(IQN, EUI, NAA)),
        alias=draw(st.none() | LABEL),
        portals=tuple(draw(st.lists(portals(), min_size=1, max_size=3, unique_by=portal_key))),
        security=draw(securities()),
        discovery_security=draw(st.none() | securities()),
        params=draw(st.just(params) | login_params()),
        timeouts=draw(st.just(times) | timeouts()),
    )


@st.composite
def configs(draw: st.DrawFn) -> Config:
    params = draw(st.just(LoginParams()) | login_params())
    times = draw(st.just(Timeouts()) | timeouts())
    isns = draw(st.none() | st.tuples(ADDRESSES, st.none() | st.integers(1, 65535)))
    return Config(
        initiator=InitiatorSetup(
            name=draw(st.one_of(IQN, EUI)),
            boot_delay=draw(st.integers(0, 86400)),
            isns=None if isns is None else cfg._isns_text(*isns),
        ),
        mount=MountSetup(
            point="/" + draw(st.from_regex(r"[a-z0-9_.-]{1,12}(/[a-z0-9_]{1,8})?", fullmatch=True)
                             .filter(lambda p: p not in (".", ".."))),
            allow_other=draw(st.booleans()),
        ),
        default_params=params,
        default_timeouts=times,
        targets=tuple(draw(st.lists(targets(params, times), max_size=3,
                                    unique_by=lambda t: t.name.lower()))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_setups_round_trip_through_dumps(config: Config) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory) / "c.toml", dumps(config))
        assert load(path) == config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_setups_round_trip_through_store_changes(config: Config) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory) / "c.toml", f'[initiator]\nname = "{config.initiator.name}"\n')
        store = store_at(path)
        store.load()
        store.set_boot_delay(config.initiator.boot_delay)
        if config.initiator.isns is not None:
            portal = config.initiator.isns_portal
            given_port = portal.port if config.initiator.isns != portal.address else None
            store.set_isns(portal.address, given_port)
        store.set_params(None, {
            spec.name: getattr(config.default_params, spec.name)
            for spec in SCHEMA["defaults.params"].values()
            if getattr(config.default_params, spec.name) != spec.default
        })
        for spec in SCHEMA["defaults.timeouts"].values():
            if getattr(config.default_timeouts, spec.name) != spec.default:
                store.set_timeout(None, spec.name, getattr(config.default_timeouts, spec.name))
        for target in config.targets:
            store.add_target(
                target.name,
                target.portals,
                alias=target.alias,
                security=target.security,
                discovery_security=target.discovery_security,
                params=target.params,
                timeouts=target.timeouts,
            )
        store.save()
        expected = dataclasses.replace(config, mount=MountSetup())  # no mount mutation
        assert store.config == expected
        assert load(path) == expected


def test_removing_a_target_takes_its_introduction_along(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", HAND_WRITTEN)
    store = store_at(path)
    store.add_target("iqn.2001-04.com.example:disk3", ["127.0.0.3"])
    store.remove_target(T2)
    store.save()
    text = path.read_text()
    assert "# ---- the backup box ----" not in text
    assert "# ---- the lab array ----\n[[target]]" in text
    assert "[target.security]\nmethod = \"CHAP\"" in text
    assert text.endswith('auto_login = false\n\n# end of file\n')
    assert [t.name for t in load(path).targets] == [T1, "iqn.2001-04.com.example:disk3"]
