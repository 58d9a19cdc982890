# The sans-I/O iSCSI protocol core. It owns the wire format and the protocol state machines.
# It must not do I/O: no trio, socket, pyfuse3, time or logging setup (a test scans the imports).
