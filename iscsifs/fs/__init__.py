# The FUSE tree: the table of files (files.py), the names built from it (namespace.py), the
# text files' protocol (control.py), the LUN I/O path (lunio.py) and the filesystem that
# answers the kernel (tree.py). docs/design.md says how the pieces fit.

from .files import CommandError, File, FsError, Kind
from .tree import Tree

__all__ = ["CommandError", "File", "FsError", "Kind", "Tree"]
