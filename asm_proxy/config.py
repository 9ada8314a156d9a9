"""The config file: its models, and loading it with errors that name file, line, plugin, field.

The file is shaped like Istio's WasmPlugin (name, type, phase, priority, selector, match,
failStrategy, config), one entry per plugin:

    listen: 127.0.0.1:18080
    plugins:
      - name: tenant-header
        type: headers
        phase: AUTHN
        failStrategy: FAIL_OPEN
        timeout: 50ms
        match: [{paths: [{prefix: /api}], methods: [GET, POST]}]
        config: {request: {set: {x-tenant: blue}}}

Loading is all-or-nothing: the file, every plugin type and every plugin's own config are
validated (and plugins constructed) before anything is used, so a bad file never replaces
a good running chain.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from asm_proxy.durations import Duration
from asm_proxy.plugin import FailStrategy, Phase
from asm_proxy.sizes import Size

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
#: A plugin from a namespace file runs as `NAMESPACE/NAME` (see asm_proxy.namespaces).
_SCOPED_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/(?P<name>.+)$")


class Model(BaseModel):
    """Strict, frozen, camelCase-in-YAML (snake_case also accepted)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


class StringMatch(Model):
    """Exactly one of exact / prefix / suffix / contains / regex (regex must match fully)."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    regex: str | None = None
    ignore_case: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> StringMatch:
        kinds = [
            k
            for k in ("exact", "prefix", "suffix", "contains", "regex")
            if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError("give exactly one of exact, prefix, suffix, contains, regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self


class HeaderMatch(Model):
    """A header condition: `present`, or a value match; `invert` negates it."""

    name: str
    present: bool | None = None
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    regex: str | None = None
    invert: bool = False

    @field_validator("name")
    @classmethod
    def _lower(cls, value: str) -> str:
        if not value:
            raise ValueError("header name must not be empty")
        return value.lower()

    @model_validator(mode="after")
    def _one_kind(self) -> HeaderMatch:
        kinds = [
            k
            for k in ("present", "exact", "prefix", "suffix", "contains", "regex")
            if getattr(self, k) is not None
        ]
        if len(kinds) > 1:
            raise ValueError("give at most one of present, exact, prefix, suffix, contains, regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self


class MatchRule(Model):
    """All given fields must hold; within a list, any item may. An empty rule matches all."""

    hosts: list[str] = Field(default_factory=list)
    paths: list[StringMatch] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [m.upper() for m in value]

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if (
                not host
                or (
                    "*" in host
                    and host not in ("*",)
                    and not (host.startswith("*.") or host.endswith(".*"))
                )
                or host.count("*") > 1
            ):
                raise ValueError(
                    f"host {host!r}: a wildcard may only be '*', a leading '*.' or a trailing '.*'"
                )
        return [h.lower() for h in value]


class Selector(Model):
    """Which workloads a plugin applies to (all of the given conditions must hold)."""

    namespaces: list[str] = Field(default_factory=list)
    match_labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _single_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and "namespace" in data:
            data = dict(data)
            ns = data.pop("namespace")
            data["namespaces"] = [*data.get("namespaces", []), ns]
        return data


def _phase(value: Any) -> Any:
    if isinstance(value, str):
        upper = value.upper()
        if upper in ("UNSPECIFIED_PHASE", "UNSPECIFIED", ""):
            return Phase.UNSPECIFIED
        if upper in Phase.__members__:
            return Phase[upper]
        raise ValueError(f"phase {value!r}: use AUTHN, AUTHZ, STATS or UNSPECIFIED_PHASE")
    return value


class PluginEntry(Model):
    """One configured plugin, as in Istio's WasmPlugin."""

    name: str
    type: str
    phase: Phase = Phase.UNSPECIFIED
    priority: int = 0
    fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE
    timeout: Duration | None = None
    selector: Selector | None = None
    match: list[MatchRule] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "pluginConfig" in data and "config" not in data:
                data["config"] = data.pop("pluginConfig")
            if data.get("config") is None and "config" in data:
                data["config"] = {}
        return data

    @field_validator("phase", mode="before")
    @classmethod
    def _phase_names(cls, value: Any) -> Any:
        return _phase(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        scoped = _SCOPED_NAME.match(value)
        if not _NAME.match(scoped["name"] if scoped else value):
            raise ValueError(
                f"name {value!r}: use lower-case letters, digits, '-', '_' and '.' (at most 63)"
            )
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("type must not be empty")
        return value.strip()

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("timeout must be greater than zero")
        return value


class TlsSettings(Model):
    """asm-proxy's own mTLS (central mode; node mode over TCP): its certificate and key, the
    CA its clients' certificates must chain to. The files are followed as they change
    (cert-manager and Istio rotate them in place), checked at most every `checkInterval`."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    #: A client without a certificate from `clientCaFile` is refused at the handshake.
    require_client_cert: bool = True
    check_interval: Duration = 1.0

    @model_validator(mode="after")
    def _ca_for_clients(self) -> TlsSettings:
        if self.require_client_cert and not self.client_ca_file:
            raise ValueError("requireClientCert needs clientCaFile (the CA of the clients)")
        return self


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 possibly in brackets) is loopback only."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


class AdminSettings(Model):
    """asm-proxy's own HTTP admin listener (served by the supervisor): /metrics, /healthz,
    /readyz, /config_dump, /plugins. Loopback only unless `allowNonLoopback` is true (the
    Kubernetes probes and a Prometheus scraper need the pod's address); even then,
    /config_dump and /plugins answer loopback clients only."""

    listen: str = "127.0.0.1:9902"
    allow_non_loopback: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r}: write HOST:PORT (e.g. 127.0.0.1:9902)")
        return value

    @model_validator(mode="after")
    def _loopback(self) -> AdminSettings:
        host = self.listen.rpartition(":")[0]
        if not self.allow_non_loopback and not is_loopback_host(host):
            raise ValueError(
                f"admin listen {self.listen!r} is not a loopback address: anyone who can "
                "reach it reads metrics and health. Set allowNonLoopback: true to serve "
                "there (for Kubernetes probes and Prometheus), or listen on 127.0.0.1"
            )
        return self


class NamespaceSettings(Model):
    """Plugin files per namespace, for an asm-proxy that serves many teams (node and central
    mode): `DIRECTORY/NAMESPACE.yaml` holds `plugins:` that apply only to workloads proven to
    be in NAMESPACE; the root namespace's file applies to every workload, as Istio treats
    EnvoyFilters in its root namespace. A relative directory is read from the config file's."""

    directory: str
    root_namespace: str = "istio-system"


def _octal(value: Any) -> Any:
    """File permissions as YAML writes them: "0660" (a string) or 0660 (an octal int)."""
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal mode such as 0660") from None
    if isinstance(value, int) and not 0 <= value <= 0o777:
        raise ValueError(f"{oct(value)} is not a file mode (0 to 0777)")
    return value


#: Lower bounds of the recycling limits (below them a worker would be replaced constantly).
MIN_STREAMS_PER_WORKER = 1000
MIN_WORKER_RSS = 128 * 2**20


class ServerSettings(Model):
    """Settings of the server itself (everything in the file but `plugins`)."""

    listen: str = "127.0.0.1:18080"
    #: How Envoy's calls are served (asm_proxy/transport/): `nghttp2` (asm-proxy's own,
    #: over libnghttp2: the cheaper, docs/PERFORMANCE.md), `grpcio` (grpc.aio), or `auto`:
    #: nghttp2 where its C extension is built, else grpcio (with a warning). `serve
    #: --transport` overrides it.
    transport: Literal["auto", "grpcio", "nghttp2"] = "auto"
    #: Every message is answered within this, whatever plugins do. Keep it below the
    #: ext_proc filter's message_timeout (Envoy's default is 200ms).
    deadline: Duration = 0.18
    #: Dynamic metadata namespace; list it in the filter's metadata_options.receiving_namespaces.
    metadata_namespace: str = "asm-proxy"
    #: Envoy's filter has allow_mode_override: true, so phases nobody needs can be skipped.
    mode_override: bool = True
    #: How often the config file is checked for changes (0 turns hot reload off).
    reload_interval: Duration = 1.0
    #: Largest gRPC message accepted or sent (a BUFFERED body travels in one message).
    max_message_bytes: int = 64 * 1024 * 1024
    #: Where Envoy's ext_authz `http_service` (its `path_prefix`) sends checks over plain
    #: HTTP/1.1, on the same address as gRPC (nghttp2 transport only). A reload applies it
    #: to the next check.
    http_authz_prefix: str = "/ext_authz"
    #: Streams one client connection may have open at once (HTTP/2 SETTINGS); Envoy opens
    #: another connection beyond it, or is refused (REFUSED_STREAM) if it does not.
    max_concurrent_streams: int = 1000
    log_level: str = "info"
    #: `json`: one JSON object a line (asm_proxy.logs describes the fields); `text`: for a
    #: person; `auto`: text on a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"
    #: Decision log lines of access plugins (auth), as OPA's decision logs: every decision,
    #: only refusals, or none.
    decision_log: Literal["all", "deny", "none"] = "deny"
    #: Record Prometheus metrics (served by the admin endpoint's /metrics).
    metrics: bool = True
    #: The HTTP admin listener; none unless configured (or `serve --admin`).
    admin: AdminSettings | None = None
    #: Worker processes serving gRPC (0: one per core). `serve --workers` overrides it.
    workers: int = 0
    #: On SIGTERM: how long health says NOT_SERVING while streams are still accepted (so
    #: Envoy stops sending), then how long streams in flight get to finish.
    drain_delay: Duration = 1.0
    drain_timeout: Duration = 20.0
    #: Processes of each worker's offload pool (0: none, everything inline), and the size
    #: from which `offload()` sends work there (measured, see docs/PERFORMANCE.md).
    offload_processes: int = 1
    offload_threshold: int = 16 * 1024
    #: Where the AUTHN and AUTHZ plugins run: in the ext_proc stream with the others
    #: (`ext_proc`), or in Envoy's ext_authz Check only (`ext_authz`: the ext_proc stream
    #: then skips them, so they never run twice). `asm-proxy render` follows it.
    authz_via: Literal["ext_proc", "ext_authz"] = "ext_proc"
    #: Permissions of a Unix socket asm-proxy listens on. Envoy (istio-proxy runs as
    #: uid/gid 1337) needs write permission to connect: deploy/ gives the socket directory
    #: that group, so group read-write (0660) lets Envoy in and nobody else.
    socket_mode: Annotated[int, BeforeValidator(_octal)] = 0o660
    #: Serve with mTLS: the caller's identity is then its certificate's SPIFFE ID.
    tls: TlsSettings | None = None
    #: asm-proxy runs behind its own Istio sidecar, which verified the caller's certificate
    #: (ISTIO_MUTUAL): take the caller's SPIFFE ID from the x-forwarded-client-cert header
    #: that sidecar sets. Only safe when nothing else can reach asm-proxy's port (bind it
    #: to 127.0.0.1, or a NetworkPolicy plus STRICT PeerAuthentication).
    trust_forwarded_client_cert: bool = False
    #: Replace a worker after it has served this many streams (0: never), or once its
    #: resident memory is above `max_worker_rss` ("512Mi", "1Gi"; 0: never). The new worker
    #: serves before the old one stops taking streams; the old one then finishes its
    #: streams in flight (up to drainTimeout) and exits.
    max_streams_per_worker: int = 0
    max_worker_rss: Size = 0
    #: Per-namespace plugin files (see NamespaceSettings); read by `serve` and `validate`.
    namespaces: NamespaceSettings | None = None

    @property
    def proves_peers(self) -> bool:
        """Whether calls carry a proven caller identity (mTLS or a trusted sidecar's)."""
        return self.tls is not None or self.trust_forwarded_client_cert

    @field_validator("http_authz_prefix")
    @classmethod
    def _http_authz_prefix(cls, value: str) -> str:
        """A path of its own: `/` alone would make every request a check (and `/healthz`
        unreachable), one without a leading `/` would match none."""
        path = value.rstrip("/")
        if not value.startswith("/") or not path or any(c in value for c in "?# \t"):
            raise ValueError(
                f"{value!r}: write a path of its own starting with '/' (e.g. /ext_authz), "
                "the path_prefix of Envoy's http_service"
            )
        if path == "/healthz" or path.startswith("/healthz/"):
            raise ValueError(f"{value!r}: /healthz is the HTTP health check's path")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value.startswith("unix:"):
            if len(value) <= len("unix:"):
                raise ValueError(
                    "unix: needs a socket path, e.g. unix:/run/asm-proxy/ext_proc.sock"
                )
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r}: write HOST:PORT (e.g. 127.0.0.1:18080) or unix:/path")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("deadline must be greater than zero")
        return value

    @field_validator(
        "workers", "offload_processes", "offload_threshold", "drain_delay", "drain_timeout"
    )
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("max_streams_per_worker")
    @classmethod
    def _streams_per_worker(cls, value: int) -> int:
        if value != 0 and value < MIN_STREAMS_PER_WORKER:
            raise ValueError(
                f"0 (never) or at least {MIN_STREAMS_PER_WORKER}: a worker takes about a "
                "second to start, recycling it more often wastes the machine"
            )
        return value

    @field_validator("max_worker_rss")
    @classmethod
    def _worker_rss(cls, value: int) -> int:
        if value != 0 and value < MIN_WORKER_RSS:
            raise ValueError(
                f"0 (never) or at least {MIN_WORKER_RSS // 2**20}Mi: a worker holds about "
                "60Mi before it serves anything, so a lower limit would recycle it for ever"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level: use debug, info, warning or error")
        return value.lower()


# --------------------------------------------------------------------------------------
# Errors that point at the file, the line, the plugin and the field.


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int | None
    plugin: str | None  # 'plugins[2] "auth"'
    field: str  # dotted path inside the plugin entry, or from the top of the file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.plugin:
            parts.append(f"plugin {self.plugin}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join(parts) + f": {self.message}"


class ConfigError(Exception):
    """The file cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LineIndex:
    """Maps a path of keys/indexes in the YAML document to the line it starts on."""

    def __init__(self, node: yaml.Node | None) -> None:
        self._root = node

    def line(self, path: Sequence[str | int]) -> int | None:
        node = self._root
        best = node.start_mark.line + 1 if node is not None else None
        for part in path:
            child = self._child(node, part)
            if child is None:
                break
            node = child
            best = node.start_mark.line + 1
        return best

    @staticmethod
    def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    found: yaml.Node = value
                    return found
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child: yaml.Node = node.value[part]
            return child
        return None


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def describe_plugin(index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f'plugins[{index}] "{name}"' if isinstance(name, str) else f"plugins[{index}]"


def problems_from_validation(
    exc: ValidationError,
    *,
    file: str,
    lines: LineIndex,
    raw: Any,
    prefix: Sequence[str | int] = (),
    plugin: str | None = None,
) -> list[ConfigProblem]:
    """Turn pydantic's errors into ConfigProblems; paths under `plugins[i]` name the plugin."""
    problems = []
    for err in exc.errors():
        loc = [
            p
            for p in (*prefix, *err["loc"])
            if not isinstance(p, str) or not p.startswith("function-")
        ]
        owner = plugin
        field_path: list[str | int] = list(loc)
        if len(loc) >= 2 and loc[0] == "plugins" and isinstance(loc[1], int):
            if owner is None:
                plugins = raw.get("plugins") if isinstance(raw, dict) else None
                index = loc[1]
                entry = (
                    plugins[index] if isinstance(plugins, list) and index < len(plugins) else None
                )
                owner = describe_plugin(index, entry)
            field_path = list(loc[2:])
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(
            ConfigProblem(
                file=file,
                line=lines.line(loc),
                plugin=owner,
                field=_dotted(field_path),
                message=message,
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """The file checked as far as it can be without plugin code: settings, every entry."""

    path: str
    raw: dict[str, Any]
    lines: LineIndex
    settings: ServerSettings | None
    entries: list[tuple[int, PluginEntry]]  # (index in the file, entry) for valid entries
    problems: list[ConfigProblem]


#: How an empty file is refused: it says why, and how to ask for no plugins on purpose.
EMPTY_FILE = (
    "the file is empty (nothing but whitespace or comments): a config must list its "
    "plugins; to run with none, write `plugins: []`"
)
NO_PLUGINS = "missing: list the plugins to run, or write `plugins: []` to run with none"
NULL_PLUGINS = "is empty: list the plugins to run, or write `plugins: []` to run with none"


def read_config_bytes(path: str | Path) -> bytes:
    """The config file's bytes; ConfigError (the same messages everywhere) if it cannot be
    read or is not a regular file. Opened without blocking and checked on the open file,
    so a FIFO or a device put in its place is refused instead of hanging the reader."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(name, None, None, "", f"cannot read: {exc.strerror}")]
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(
                [ConfigProblem(name, None, None, "", f"not a regular file ({_kind(mode)})")]
            )
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(name, None, None, "", f"cannot read: {exc.strerror}")]
        ) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def decode_config(path: str | Path, data: bytes) -> str:
    """The file's bytes as text; ConfigError if they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, None, "", f"not UTF-8 text: {exc}")]
        ) from None


def read_config_text(path: str | Path) -> str:
    """The config file's text; ConfigError (the same messages everywhere) if unreadable."""
    return decode_config(path, read_config_bytes(path))


def config_hash(text: str) -> str:
    """What identifies a config's content: the first 16 hex digits of its SHA-256 (shown by
    the admin endpoint and metrics)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_file(path: str | Path, text: str | None = None) -> ParsedFile:
    """Read the file and validate its settings and each plugin entry; every problem found
    is kept (plugin configs are checked by the loader, which knows the plugin types)."""
    name = str(path)
    if text is None:
        text = read_config_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(name, line, None, "", f"not valid YAML: {exc}")]) from None
    lines = LineIndex(node)
    if raw is None:
        raise ConfigError([ConfigProblem(name, None, None, "", EMPTY_FILE)])
    if not isinstance(raw, dict):
        raise ConfigError(
            [
                ConfigProblem(
                    name, 1, None, "", "the file must be a mapping (listen:, plugins:, ...)"
                )
            ]
        )
    problems: list[ConfigProblem] = []
    settings: ServerSettings | None = None
    try:
        settings = ServerSettings.model_validate({k: v for k, v in raw.items() if k != "plugins"})
    except ValidationError as exc:
        problems += problems_from_validation(exc, file=name, lines=lines, raw=raw)
    raw_plugins = raw.get("plugins")
    entries: list[tuple[int, PluginEntry]] = []
    if raw_plugins is None:
        # No plugins must be asked for (`plugins: []`): a file that lost its plugin list
        # (a bad edit, a half-written file) must not silently drop every plugin, auth too.
        problems.append(
            ConfigProblem(
                name,
                lines.line(("plugins",)) if "plugins" in raw else None,
                None,
                "plugins",
                NULL_PLUGINS if "plugins" in raw else NO_PLUGINS,
            )
        )
        raw_plugins = []
    elif not isinstance(raw_plugins, list):
        problems.append(
            ConfigProblem(
                name, lines.line(("plugins",)), None, "plugins", "must be a list of plugins"
            )
        )
        raw_plugins = []
    seen: dict[str, int] = {}
    for index, raw_entry in enumerate(raw_plugins):
        try:
            entry = PluginEntry.model_validate(raw_entry)
        except ValidationError as exc:
            problems += problems_from_validation(
                exc, file=name, lines=lines, raw=raw, prefix=("plugins", index)
            )
            continue
        if entry.name in seen:
            problems.append(
                ConfigProblem(
                    name,
                    lines.line(("plugins", index, "name")),
                    describe_plugin(index, raw_entry),
                    "name",
                    f"plugins[{seen[entry.name]}] is named {entry.name!r} too; "
                    "names must be unique",
                )
            )
            continue
        seen[entry.name] = index
        entries.append((index, entry))
    return ParsedFile(name, raw, lines, settings, entries, problems)


def config_key(raw_entry: Any) -> str:
    """The key the user wrote a plugin's own config under (`config` or `pluginConfig`)."""
    if isinstance(raw_entry, dict) and "pluginConfig" in raw_entry and "config" not in raw_entry:
        return "pluginConfig"
    return "config"
