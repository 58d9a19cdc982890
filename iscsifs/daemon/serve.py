# A mount's life, on trio: mount the FUSE device, build the tree and the daemon in one nursery,
# serve requests until unmounted or signalled, log every session out, unmount.
# Owns the order of start-up and shutdown. Must not hold state of its own (daemon/core.py
# does) nor answer requests (fs/ does).

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import trio

from .. import __version__
from ..config import ConfigStore
from ..fs import Tree
from ..fuse import channel as fusechan
from .core import Daemon
from .logs import RingHandler
from .process import RUNTIME_DIR, registry_file

log = logging.getLogger("iscsifs")

#: FUSE requests the kernel may have outstanding in the background (async reads, writes).
MAX_BACKGROUND = 64


async def serve(store: ConfigStore, mountpoint: str, *, ring: RingHandler,
                config_file: Path, ready: Any = None) -> None:
    """Mount, run until unmounted or signalled, log out, unmount."""
    setup = store.config.mount
    max_write = fusechan.max_request(setup.max_write)
    max_read = fusechan.max_request(setup.max_read)
    fd = fusechan.mount(mountpoint, allow_other=setup.allow_other, max_read=max_read)
    channel = fusechan.Channel(fd, max_write=max_write, max_background=MAX_BACKGROUND)
    reg = registry_file(config_file)
    try:
        RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
        reg.write_text(json.dumps({"pid": os.getpid(), "mountpoint": mountpoint,
                                   "config": str(config_file)}))
        for warning in store.config.warnings:
            log.warning("config: %s", warning)
        log.info("iscsifs %s mounted at %s (initiator %s)", __version__, mountpoint,
                 store.config.initiator.name)
        # The I/O path allocates a couple dozen short-lived objects per request and makes no
        # reference cycles; at the default threshold (700) the cyclic collector scanned them
        # every ~30 requests and took 7-10 % of the daemon at 15,000 IOPS. Collect rarely, and
        # never rescan what exists at start-up.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 50)
        async with trio.open_nursery() as nursery:
            tree = Tree(channel, nursery, max_write=max_write, max_read=max_read,
                        max_background=MAX_BACKGROUND)
            daemon = Daemon(store, tree=tree, nursery=nursery, mountpoint=mountpoint, ring=ring)
            stop = trio.Event()

            async def fuse_main() -> None:
                try:
                    await channel.serve(tree.dispatch)
                finally:
                    stop.set()

            nursery.start_soon(fuse_main)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                if ready is not None:
                    ready()
                nursery.start_soon(daemon.auto_login)

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("signal %s: shutting down", signal.Signals(signum).name)
                        stop.set()
                        return

                nursery.start_soon(on_signal)
                await stop.wait()
            log.info("logging out")
            tree.closing = True
            with trio.move_on_after(30):
                await daemon.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            fusechan.unmount(mountpoint)
        channel.close()
        with contextlib.suppress(OSError):
            reg.unlink()
        log.info("unmounted %s", mountpoint)
