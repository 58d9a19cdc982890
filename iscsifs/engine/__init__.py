# The trio engine: sockets, tasks, timers and recovery around the sans-I/O core in iscsifs.proto.
