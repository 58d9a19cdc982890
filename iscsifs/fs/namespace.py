# The names of the tree: inodes, directories and what each node is, built from the table of
# files (fs/files.py) and kept up to date by the daemon as portals and LUNs come and go.
#
# Every directory holds its entries in a dict, so a lookup costs one dict access and a readdir
# touches only that directory, however many targets there are. A path keeps its inode for the
# life of the mount: a LUN that goes away and comes back (logout, login) is the same inode, so
# the kernel's view of a file held open (a loop device) stays valid.
# Must not do I/O nor know FUSE's wire format (fs/tree.py does), nor what the files say.

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .files import File, FsError, Kind, fill

ROOT_INODE = 1


class Node:
    """One name in the tree. `obj` is what the daemon bound to it: the portal of a portal's
    files, the block device of a LUN file."""

    __slots__ = ("alive", "children", "file", "implicit", "inode", "kind", "mode", "obj",
                 "parent", "path")

    def __init__(self, inode: int, path: tuple[str, ...], parent: Node | None) -> None:
        self.inode = inode
        self.path = path
        self.parent = parent
        self.kind = Kind.DIR
        self.mode = 0o755
        self.file: File | None = None
        self.obj: Any = None
        self.children: dict[str, Node] = {}
        self.alive = False
        self.implicit = False  # a directory that exists only while something is in it

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    def __repr__(self) -> str:
        return f"<Node {self.inode} /{'/'.join(self.path)} {self.kind.value}>"


#: notify(parent_inode, name): an entry of that directory appeared or went away.
Notify = Callable[[int, str], None]


class Namespace:
    """The tree's nodes. register() the table once; add() and remove() instances after."""

    def __init__(self, notify: Notify | None = None) -> None:
        self._notify = notify
        self._by_path: dict[tuple[str, ...], Node] = {}
        self._by_inode: dict[int, Node] = {}
        self._next_inode = ROOT_INODE
        self._scopes: dict[str, list[File]] = {}  # directory pattern -> its files
        self._single: dict[str, File] = {}  # pattern -> a file added on its own (lun{n})
        self.root = self._make(())
        self.root.alive = True
        #: dictionary operations done by lookups and readdirs, for the tests that check that
        #: they do not grow with the size of the tree
        self.work = 0

    # -- building --------------------------------------------------------------------------

    def register(self, files: Iterable[File]) -> None:
        """Take the table: files at fixed paths appear now, the others when added."""
        files = tuple(files)
        for f in files:
            if f.per_instance:
                self._single[f.pattern] = f
            else:
                self._scopes.setdefault(f.scope, []).append(f)
        for f in files:
            fixed_dirs = []
            for part in f.parts[:-1]:
                if _has_placeholder(part):
                    break
                fixed_dirs.append(part)
            self._dir(tuple(fixed_dirs), implicit=False)
            if f.fixed:
                self._put(f.parts, f, None, implicit=False)

    def add(self, pattern: str, obj: Any = None, **values: object) -> Node:
        """Add an instance: a directory pattern of the table (its files appear, bound to obj)
        or a file added on its own ("targets/{iqn}/{portal}/lun{n}")."""
        path = fill(pattern, values)
        single = self._single.get(pattern)
        if single is not None:
            return self._put(path, single, obj, implicit=False)
        members = self._scopes.get(pattern)
        if members is None:
            raise ValueError(f"{pattern!r} is not a directory or file of the table")
        directory = self._dir(path, implicit=False)
        for f in members:
            self._put((*path, f.parts[-1]), f, obj, implicit=False)
        return directory

    def remove(self, pattern: str, **values: object) -> None:
        """Remove an instance and everything below it; directories that were there only to
        hold it (targets/<iqn> after its last portal) go too."""
        node = self._by_path.get(fill(pattern, values))
        if node is None or not node.alive:
            return
        parent = node.parent
        self._detach(node)
        while parent is not None and parent.implicit and not parent.children:
            grand = parent.parent
            self._detach(parent)
            parent = grand

    def _make(self, path: tuple[str, ...]) -> Node:
        node = self._by_path.get(path)
        if node is None:
            parent = self._by_path[path[:-1]] if path else None
            node = Node(self._next_inode, path, parent)
            self._next_inode += 1
            self._by_path[path] = node
            self._by_inode[node.inode] = node
        return node

    def _dir(self, path: tuple[str, ...], *, implicit: bool) -> Node:
        if path:
            self._dir(path[:-1], implicit=True)
        node = self._make(path)
        if node.alive and node.is_dir:
            node.implicit = node.implicit and implicit
            return node
        node.kind, node.mode, node.file, node.obj = Kind.DIR, 0o755, None, None
        node.implicit = implicit
        self._attach(node)
        return node

    def _put(self, path: tuple[str, ...], f: File, obj: Any, *, implicit: bool) -> Node:
        self._dir(path[:-1], implicit=True)
        node = self._make(path)
        node.kind, node.mode, node.file, node.obj = f.kind, f.mode, f, obj
        node.implicit = implicit
        if not node.alive:
            self._attach(node)
        return node

    def _attach(self, node: Node) -> None:
        node.alive = True
        parent = node.parent
        if parent is not None:
            parent.children[node.name] = node
            if self._notify is not None:
                self._notify(parent.inode, node.name)

    def _detach(self, node: Node) -> None:
        for child in list(node.children.values()):
            self._detach(child)
        node.alive = False
        node.obj = None
        parent = node.parent
        if parent is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            if self._notify is not None:
                self._notify(parent.inode, node.name)

    # -- reading ---------------------------------------------------------------------------

    def get(self, inode: int) -> Node:
        """The node of an inode that is in the tree now; ENOENT for one that went away."""
        self.work += 1
        node = self._by_inode.get(inode)
        if node is None or not node.alive:
            raise FsError(errno.ENOENT)
        return node

    def lookup(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        self.work += 1
        node = parent.children.get(name)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def entries(self, directory: Node) -> list[tuple[str, Node]]:
        """A directory's entries, sorted by name."""
        self.work += len(directory.children)
        return sorted(directory.children.items())

    def at(self, *path: str) -> Node | None:
        """The live node at a path (for tests and the daemon)."""
        node = self._by_path.get(tuple(path))
        return node if node is not None and node.alive else None

    def nodes(self, kind: Kind) -> Iterator[Node]:
        return (n for n in self._by_inode.values() if n.alive and n.kind is kind)

    def __len__(self) -> int:
        return sum(1 for n in self._by_inode.values() if n.alive)


def _has_placeholder(pattern: str) -> bool:
    return "{" in pattern
