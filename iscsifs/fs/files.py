# What the tree is made of: the declarative table entry (File), the kinds of node, and the one
# errors of the tree: CommandError (a command failed) and FsError (a request fails). The daemon builds the table (one File per
# kind of file, docs/design.md "The tree is one table"); the tree serves it.
# Owns the shape of a table entry and the pattern syntax only. Must not know what any file
# says or does: the functions in an entry are the daemon's.

from __future__ import annotations

import errno
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class CommandError(Exception):
    """A command written to a control file failed: the message is for the person, the errno
    for the write() that carried it."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = code


class FsError(Exception):
    """A FUSE request fails with this errno."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.errno = code


class Kind(Enum):
    DIR = "dir"
    TEXT = "text"  # read: the file's text; write: one command a line, the reply read back
    LUN = "lun"  # a block device: reads and writes go to the LUN


#: read(obj) -> the whole text of the file; obj is what the daemon bound to the entry's
#: placeholders (a portal), None for a file at a fixed path.
Reader = Callable[[Any], str]
#: write(obj, line) -> the reply to one command line, or raise CommandError.
Writer = Callable[[Any, str], Awaitable[str]]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class File:
    """One kind of file of the tree.

    pattern: a path below the mount point; a part in braces ("targets/{iqn}/{portal}/status",
    "lun{n}") is filled in when the daemon adds an instance (Tree.add). Directories are implied
    by the paths. mode: the permission bits (0o400 read, 0o200 write); a control file is 0o600
    because its reply is read back on the same descriptor."""

    pattern: str
    mode: int
    read: Reader | None = None
    write: Writer | None = None
    kind: Kind = Kind.TEXT

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/"))

    @property
    def fixed(self) -> bool:
        """At one path, present from the start (no placeholder anywhere in it)."""
        return _PLACEHOLDER.search(self.pattern) is None

    @property
    def scope(self) -> str:
        """The directory pattern this file lives in ("targets/{iqn}/{portal}")."""
        return self.pattern.rpartition("/")[0]

    @property
    def per_instance(self) -> bool:
        """Its own name has a placeholder (lun{n}): each one is added on its own."""
        return _PLACEHOLDER.search(self.parts[-1]) is not None


def fill(pattern: str, values: dict[str, object]) -> tuple[str, ...]:
    """The path a pattern names with its placeholders filled in; KeyError for a missing one."""
    return tuple(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), part)
                 for part in pattern.split("/") if part)
