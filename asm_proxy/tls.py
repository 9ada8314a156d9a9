"""asm-proxy's own mTLS: the serving certificate, the client CA, rotation without a restart,
and the workload identity a client certificate proves.

A transport asks `CertificateFiles.fetch` at each new TLS handshake whether the files
changed; they are looked at (stat) at most once per `check_interval`, and a new set is
taken only once it loads whole (key matching certificate, CA parsing): cert-manager and
Istio rewrite such files in place, and a half-written one must not replace a good one.
Connections already open keep their session; streams on them are not dropped. What a
transport makes of a `Certificates` (grpc's credentials, an `ssl.SSLContext`) is its own.

The identity of a caller is the SPIFFE ID in its certificate's URI SAN
(`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`), or, when asm-proxy sits behind
its own Istio sidecar that verified the certificate (`trustForwardedClientCert`), the
`URI=` of the `x-forwarded-client-cert` header that sidecar sets.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asm_proxy.caller import Caller
from asm_proxy.config import ServerSettings, TlsSettings
from asm_proxy.identity import Workload, from_spiffe
from asm_proxy.reload import Fingerprint, fingerprint

log = logging.getLogger("asm_proxy.tls")

XFCC_HEADER = "x-forwarded-client-cert"


class TlsError(ValueError):
    """The certificate files cannot be used (the message names the file and why)."""


def load_pair(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a certificate chain and its key into `context`. Python's ssl reads them only
    from files: they pass through a private temporary directory, the key readable by
    this user alone. Raises ssl.SSLError or OSError."""
    with tempfile.TemporaryDirectory(prefix="asm-proxy-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)


def _check(cert: bytes, key: bytes, ca: bytes | None, names: tuple[str, str, str]) -> None:
    """Load the pair and the CA the way a TLS stack will: a key that does not match its
    certificate, or a file that does not parse, is refused here, not at a handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        load_pair(context, cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{names[0]} / {names[1]}: {exc}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"{names[2]}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Certificates:
    """One loaded set: PEM certificate chain and key, and the client CA (if any)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


class CertificateFiles:
    """The serving certificate, its key and the client CA, followed as they change."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.paths = (Path(settings.cert_file), Path(settings.key_file))
        self.ca_path = Path(settings.client_ca_file) if settings.client_ca_file else None
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._seen: tuple[Fingerprint | None, ...] = ()
        self.reloads = 0
        self.failures = 0
        self.current = self._load()  # raises TlsError: a start without usable files fails

    def _fingerprints(self) -> tuple[Fingerprint | None, ...]:
        paths = [*self.paths, *([self.ca_path] if self.ca_path else [])]
        return tuple(fingerprint(p) for p in paths)

    def _load(self) -> Certificates:
        seen = self._fingerprints()
        try:
            cert, key = (p.read_bytes() for p in self.paths)
            ca = self.ca_path.read_bytes() if self.ca_path else None
        except OSError as exc:
            raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        names = (str(self.paths[0]), str(self.paths[1]), str(self.ca_path))
        _check(cert, key, ca, names)
        self._seen = seen
        return Certificates(cert, key, ca)

    def fetch(self) -> Certificates | None:
        """A transport's question at a handshake: a new set, or None for "unchanged"."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + self.settings.check_interval
            if self._fingerprints() == self._seen:
                return None
            try:
                self.current = self._load()
            except TlsError as exc:
                self.failures += 1
                log.warning("TLS files refused, the previous ones stay in use: %s", exc)
                self._seen = self._fingerprints()  # say so once per change
                return None
            self.reloads += 1
            log.info("TLS certificate files reloaded (%s)", self.paths[0])
            return self.current


def spiffe_ids(values: Iterable[bytes | str]) -> list[str]:
    out = []
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text.startswith("spiffe://"):
            out.append(text)
    return out


def peer_of_certificate(sans: Iterable[bytes | str]) -> Workload | None:
    """The workload a verified client certificate names (its one SPIFFE URI SAN)."""
    ids = spiffe_ids(sans)
    return from_spiffe(ids[0]) if len(ids) == 1 else None


def proven_peer(caller: Caller, settings: ServerSettings) -> Workload | None:
    """The caller's identity as its transport proves it: its client certificate, or the
    x-forwarded-client-cert of asm-proxy's own sidecar when that is trusted."""
    if settings.tls is not None:
        peer = peer_of_certificate(caller.sans)
        if peer is not None:
            return peer
    if settings.trust_forwarded_client_cert and caller.xfcc is not None:
        return peer_of_xfcc(caller.xfcc)
    return None


def peer_of_xfcc(header: str) -> Workload | None:
    """The workload of the last element of an `x-forwarded-client-cert` header (the one the
    sidecar in front of asm-proxy added: `By=...;Hash=...;URI=spiffe://...`)."""
    last = header.rsplit(",", 1)[-1]
    for part in last.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "uri":
            return from_spiffe(value.strip('"'))
    return None
