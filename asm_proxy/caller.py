"""What a transport knows about who is calling, in terms no transport owns.

The ext_proc and ext_authz services ask for it only when the settings prove identities
(`ServerSettings.proves_peers`); a transport builds it from its TLS session (the URI SANs of
the client certificate it verified) and the call's headers (`x-forwarded-client-cert`).
`tls.proven_peer` turns it into a `Workload`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    #: Subject alternative names of the client certificate the transport verified (its URI
    #: SANs at least; grpc does not say which kind each is); empty without one.
    sans: tuple[str, ...] = ()
    #: The call's `x-forwarded-client-cert` header, if it had one.
    xfcc: str | None = None


NOBODY = Caller()
