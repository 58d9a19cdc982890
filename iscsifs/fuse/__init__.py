# FUSE, spoken directly: kernel.py is the protocol (sans I/O), channel.py the device on trio.
