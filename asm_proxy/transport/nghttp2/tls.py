"""mTLS for the nghttp2 transport with Python's `ssl`, rotated like grpc's credentials.

asyncio's server takes one `SSLContext`; at each handshake its `sni_callback` (called for
every ClientHello, with or without a server name) asks `CertificateFiles.fetch` whether the
files changed and, if a new set loaded whole, moves the handshake to a context built from
it. Connections already open keep theirs. ALPN offers h2 (Envoy's gRPC clients ask for it)
and http/1.1 (its HTTP ext_authz client).
"""

from __future__ import annotations

import asyncio
import ssl

from asm_proxy.tls import CertificateFiles, Certificates, load_pair


def context_of(certificates: Certificates, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_pair(context, certificates.cert, certificates.key)
    if certificates.client_ca is not None:
        context.load_verify_locations(cadata=certificates.client_ca.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class ServerTls:
    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self._require = files.settings.require_client_cert
        self._current = context_of(files.current, self._require)
        #: The context asyncio holds; each handshake is moved to the current one.
        self.context = context_of(files.current, self._require)
        self.context.sni_callback = self._handshake

    def _handshake(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        new = self.files.fetch()
        if new is not None:
            self._current = context_of(new, self._require)
        connection.context = self._current

    def peer_sans(self, transport: asyncio.BaseTransport) -> tuple[str, ...]:
        """The URI SANs of the verified client certificate (none without one)."""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return ()
        cert = ssl_object.getpeercert()
        if not cert:
            return ()
        return tuple(value for kind, value in cert.get("subjectAltName", ()) if kind == "URI")
