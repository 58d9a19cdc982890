# The daemon's log: where lines go (a file, stderr in the foreground) and the ring of the last
# lines that <mnt>/log shows. Must not import trio: the CLI loads this package.

from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RingHandler(logging.Handler):
    """Keeps the last lines of the log for <mnt>/log."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            pass


def setup_logging(log_file: str | None, *, foreground: bool, level: str = "INFO") -> RingHandler:
    fmt = logging.Formatter(FORMAT)
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    ring = RingHandler()
    ring.setFormatter(fmt)
    root.addHandler(ring)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    return ring
