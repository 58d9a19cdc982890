"""The FUSE request size the daemon asks for, from [mount] max_read / max_write and the kernel's limit."""

from pathlib import Path

import pytest

from iscsifs.fuse import channel


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Pretend the kernel's fs.fuse.max_pages_limit is `pages`."""
    real = Path

    def set_pages(pages: int | None) -> None:
        f = tmp_path / "max_pages_limit"
        if pages is None:
            f.unlink(missing_ok=True)
        else:
            f.write_text(f"{pages}\n")

        def fake(p: str, *a: object) -> Path:
            return f if p == "/proc/sys/fs/fuse/max_pages_limit" else real(p, *a)

        monkeypatch.setattr(channel, "Path", fake)

    return set_pages


@pytest.mark.parametrize(("pages", "want", "expected"), [
    (256, 0, 1 << 20),             # 0: the kernel's largest
    (256, 512 * 1024, 512 * 1024),  # the default max_write
    (256, 5000, 4096),             # rounded down to whole pages
    (256, 100, 4096),              # at least one page
    (256, 4 << 20, 1 << 20),       # never above the kernel's limit
    (1024, 0, 4 << 20),            # a raised sysctl is used
    (4096, 0, 8 << 20),            # up to the 8 MiB cap
    (None, 0, 1 << 20),            # no sysctl file: the kernel default, 256 pages
])
def test_fuse_max_request(limit, pages: int | None, want: int, expected: int) -> None:
    limit(pages)
    assert channel.max_request(want) == expected


def test_default_config_reads_and_writes_512k() -> None:
    from iscsifs import config
    assert (config.MountSetup().max_read, config.MountSetup().max_write) == (512 << 10, 512 << 10)
