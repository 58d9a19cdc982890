# The daemon: a portal's session lifecycle (portal.py), the texts the files show (views.py),
# the commands they take (commands.py, parsed by pure functions), the daemon's state
# (core.py), the table of the tree (table.py), and the process around it (process.py,
# logs.py, serve.py). Importing the package loads only the process side, which is all the CLI
# needs: no trio, no engine, no FUSE code.

from .process import (
    DEFAULT_CONFIG,
    DEFAULT_LOG,
    RUNTIME_DIR,
    config_path,
    find_mount,
    is_mounted,
    mount,
    registry_file,
    umount,
)

__all__ = ["DEFAULT_CONFIG", "DEFAULT_LOG", "RUNTIME_DIR", "config_path", "find_mount",
           "is_mounted", "mount", "registry_file", "umount"]
