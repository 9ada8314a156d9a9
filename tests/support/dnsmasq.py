"""A real DNS server for the tests: dnsmasq on 127.0.0.1, serving the PTR records a test writes.

    with DnsMasq({"10.0.0.222": "provider.shop.svc.cluster.local"}) as dns:
        dns.port                      # UDP and TCP on 127.0.0.1
        dns.queries("10.0.0.222")     # how many PTR queries for that IP it has answered

Private reverse zones it has no record for are answered NXDOMAIN (`--bogus-priv`);
`slow_zones` are forwarded to a socket that never answers, so lookups there time out.
The process is started and stopped by the test; readiness is polled with a real query.
A missing dnsmasq is an error, never a skip: `scripts/setup` installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import dns.message
import dns.query
import dns.rcode
import dns.reversename

_CANDIDATES = ("/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/local/sbin/dnsmasq")


def find_dnsmasq() -> str:
    found = shutil.which("dnsmasq") or next((p for p in _CANDIDATES if Path(p).exists()), None)
    if found is None:
        raise RuntimeError(
            "dnsmasq is not installed; the reverse_dns tests need a real DNS server. Run "
            "scripts/setup (it installs Debian's dnsmasq-base as root) or "
            "`apt-get install dnsmasq-base`."
        )
    return found


def reverse_name(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port: int = udp.getsockname()[1]
    return port


class DnsMasq:
    def __init__(
        self,
        ptr: Mapping[str, str | Iterable[str]],
        *,
        ttl: int = 30,
        slow_zones: Iterable[str] = (),
    ) -> None:
        self.ptr = {
            ip: [names] if isinstance(names, str) else list(names) for ip, names in ptr.items()
        }
        self.ttl = ttl
        self.slow_zones = list(slow_zones)
        self.port = 0
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._black_hole: socket.socket | None = None

    def _args(self, binary: str) -> list[str]:
        args = [
            binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            "--pid-file=",
            "--bogus-priv",
            f"--local-ttl={self.ttl}",
            "--log-queries",
            "--log-facility=-",
        ]
        for ip, names in self.ptr.items():
            args += [f"--ptr-record={reverse_name(ip)},{name}" for name in names]
        if self.slow_zones:
            assert self._black_hole is not None
            hole = self._black_hole.getsockname()[1]
            args += [f"--server=/{zone}/127.0.0.1#{hole}" for zone in self.slow_zones]
        return args

    def start(self) -> DnsMasq:
        binary = find_dnsmasq()
        if self.slow_zones:
            self._black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._black_hole.bind(("127.0.0.1", 0))  # receives queries, never answers
        for _attempt in range(5):
            self.port = _free_port()
            self.lines = []
            self._proc = subprocess.Popen(
                self._args(binary),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError("dnsmasq did not start: " + " | ".join(self.lines[-5:]))

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait_ready(self, timeout: float = 5.0) -> bool:
        give_up = time.monotonic() + timeout
        probe = dns.message.make_query("1.0.0.127.in-addr.arpa", "PTR")
        while time.monotonic() < give_up:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                return False  # exited (e.g. the port was taken meanwhile)
            try:
                answer = dns.query.udp(probe, "127.0.0.1", timeout=0.2, port=self.port)
            except (dns.exception.Timeout, OSError):
                continue
            if answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return True
        return False

    def queries(self, ip: str) -> int:
        """PTR queries received for `ip` so far (from dnsmasq's own query log, once it has
        caught up: an earlier test's query logged late would be counted as this one's)."""
        self.sync()
        marker = f"query[PTR] {reverse_name(ip)} "
        return sum(marker in line for line in list(self.lines))

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until the query log has caught up with every query answered so far: ask for
        a marker name, then wait for its line (logged after the earlier ones)."""
        marker = f"sync-{time.monotonic_ns()}.invalid"
        dns.query.udp(dns.message.make_query(marker, "A"), "127.0.0.1", timeout=1, port=self.port)
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if any(marker in line for line in list(self.lines)):
                return
            time.sleep(0.01)
        raise AssertionError("dnsmasq's query log did not show the marker query")

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stderr is not None:
            if self._reader is not None:
                self._reader.join(5)
            proc.stderr.close()
        self._proc = None

    def close(self) -> None:
        self.stop()
        if self._black_hole is not None:
            self._black_hole.close()
            self._black_hole = None

    def __enter__(self) -> DnsMasq:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
