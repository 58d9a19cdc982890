# Errors of the protocol core. They say whose fault a failure is (docs/design.md rule 3, after h11):
# LocalProtocolError when our side misused the core, RemoteProtocolError when the peer broke the
# protocol. Messages are one line, name the cause, and never contain a secret.


class IscsiError(Exception):
    """Base of every error the protocol core raises."""


class LocalProtocolError(IscsiError):
    """We asked the core to do something the protocol or its current state forbids."""


class RemoteProtocolError(IscsiError):
    """The peer sent something the protocol forbids (malformed, out of state, out of range)."""
