# The command line: `iscsifs mount|umount` and the manual's commands (Appendix A). Every
# manual command is a client of the mounted tree (it reads and writes files under the mount),
# so each can also be done with echo and cat. Errors end here: one line, non-zero exit, never
# a traceback.

from __future__ import annotations

import argparse
import sys

from . import __version__, daemon


def _mount_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscsifs mount", description="Mount the iscsifs tree.")
    p.add_argument("mountpoint", nargs="?", help="default: the config's [mount] point")
    p.add_argument("--config", help="config file (default $ISCSIFS_CONFIG or "
                   "/etc/iscsifs/iscsifs.toml)")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    p.add_argument("--log", help="log file (default $ISCSIFS_LOG or /var/log/iscsifs.log)")
    p.add_argument("--debug", action="store_true", help="log at debug level")
    return p


def _umount_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iscsifs umount", description="Log out and unmount.")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--config")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: iscsifs mount|umount|<command> ...; see iscsifs help", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "mount":
            a = _mount_parser().parse_args(rest)
            return daemon.mount(a.config, a.mountpoint, foreground=a.foreground, log_file=a.log,
                                log_level="DEBUG" if a.debug else "INFO")
        if cmd == "umount":
            a = _umount_parser().parse_args(rest)
            return daemon.umount(a.config, a.mountpoint)
        if cmd == "version":
            print(f"iscsifs {__version__}")
            return 0
    except KeyboardInterrupt:
        return 130
    print(f"ERROR. unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
