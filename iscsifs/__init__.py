"""iscsifs: a pure-Python iSCSI initiator on trio that mounts iSCSI LUNs as files through FUSE."""

__version__ = "0.1.0"
