"""Config loading: refused files name the file, the line, the plugin and the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from asm_proxy.config import ConfigError, ServerSettings, parse_file
from asm_proxy.durations import parse_duration
from asm_proxy.loader import load
from asm_proxy.plugin import FailStrategy, Phase


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "asm-proxy.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return [str(p) for p in info.value.problems]


class TestGoodFiles:
    def test_the_issue_example(self, tmp_path: Path) -> None:
        """The WasmPlugin-shaped example loads with every field taken."""
        path = write(
            tmp_path,
            """
listen: 127.0.0.1:18080
plugins:
  - name: tenant-header
    type: headers
    phase: AUTHN
    priority: 10
    failStrategy: FAIL_OPEN
    timeout: 50ms
    match: [{paths: [{prefix: /api}], methods: [GET, POST]}]
    config: {request: {set: {x-tenant: blue}, remove: [x-debug]}}
""",
        )
        loaded = load(path)
        (entry,) = loaded.chain.entries
        assert (entry.name, entry.type_name, entry.phase, entry.priority) == (
            "tenant-header",
            "headers",
            Phase.AUTHN,
            10,
        )
        assert entry.fail_strategy is FailStrategy.FAIL_OPEN
        assert entry.timeout == pytest.approx(0.05)
        assert loaded.settings.listen == "127.0.0.1:18080"

    def test_defaults(self, tmp_path: Path) -> None:
        """FAIL_CLOSE (as Istio), UNSPECIFIED phase, priority 0, no timeout."""
        loaded = load(write(tmp_path, "plugins: [{name: a, type: headers}]"))
        (entry,) = loaded.chain.entries
        assert entry.fail_strategy is FailStrategy.FAIL_CLOSE
        assert entry.phase is Phase.UNSPECIFIED and entry.priority == 0 and entry.timeout is None

    def test_istio_spellings(self, tmp_path: Path) -> None:
        """UNSPECIFIED_PHASE and pluginConfig, as in WasmPlugin, are accepted."""
        loaded = load(
            write(
                tmp_path,
                "plugins: [{name: a, type: headers, phase: UNSPECIFIED_PHASE,"
                " pluginConfig: {request: {set: {x: y}}}}]",
            )
        )
        assert loaded.chain.entries[0].plugin.request_ops == [("set", "x", "y")]

    def test_no_plugins_when_the_file_says_so(self, tmp_path: Path) -> None:
        """`plugins: []` is the one way to run with no plugins: default listen."""
        loaded = load(write(tmp_path, "plugins: []\n"))
        assert loaded.chain.entries == ()
        assert loaded.settings.listen == "127.0.0.1:18080"

    def test_disabled_plugin_is_left_out(self, tmp_path: Path) -> None:
        """enabled: false keeps the entry in the file but out of the chain."""
        loaded = load(write(tmp_path, "plugins: [{name: a, type: headers, enabled: false}]"))
        assert loaded.chain.entries == ()


class TestRefusedFiles:
    def test_unknown_type_names_file_line_plugin_field(self, tmp_path: Path) -> None:
        """An unknown type is an error, not a warning, and says where."""
        path = write(tmp_path, "plugins:\n  - name: a\n    type: headerz\n")
        (msg,) = problems(path)
        assert msg.startswith(
            f"{path}:3: plugin plugins[0] \"a\": field 'type': unknown plugin type 'headerz'"
        )

    def test_bad_plugin_config_field(self, tmp_path: Path) -> None:
        """A wrong value inside a plugin's own config is located inside `config`."""
        path = write(
            tmp_path,
            "plugins:\n  - name: tenant\n    type: headers\n    config:\n      request:\n        set: [x]\n",
        )
        (msg,) = problems(path)
        assert f"{path}:6:" in msg
        assert 'plugin plugins[0] "tenant"' in msg
        assert "field 'config.request.set'" in msg

    def test_unknown_field_in_plugin_config(self, tmp_path: Path) -> None:
        """Typos in a plugin's config are refused, naming the key."""
        path = write(tmp_path, "plugins: [{name: a, type: headers, config: {requets: {}}}]")
        (msg,) = problems(path)
        assert "field 'config.requets': unknown field" in msg

    def test_entry_fields(self, tmp_path: Path) -> None:
        """Bad entry fields (phase, failStrategy, timeout) are all reported at once."""
        path = write(
            tmp_path,
            "plugins:\n  - name: a\n    type: headers\n    phase: LATE\n"
            "    failStrategy: MAYBE\n    timeout: soon\n",
        )
        found = problems(path)
        assert len(found) == 3
        assert any("field 'phase'" in m and ":4:" in m for m in found)
        assert any("field 'failStrategy'" in m and ":5:" in m for m in found)
        assert any("field 'timeout'" in m and "not a duration" in m for m in found)

    def test_every_plugin_is_checked(self, tmp_path: Path) -> None:
        """Problems in several plugins are listed together, each with its plugin."""
        path = write(
            tmp_path,
            "plugins:\n  - {name: a, type: nope}\n  - {name: b, type: headers, config: {x: 1}}\n",
        )
        found = problems(path)
        assert any('"a"' in m for m in found) and any('"b"' in m for m in found)

    def test_duplicate_names(self, tmp_path: Path) -> None:
        """Two plugins with one name are refused."""
        path = write(tmp_path, "plugins: [{name: a, type: headers}, {name: a, type: headers}]")
        (msg,) = problems(path)
        assert 'plugin plugins[1] "a"' in msg and "plugins[0] is named 'a' too" in msg

    def test_problems_everywhere_are_all_listed(self, tmp_path: Path) -> None:
        """A bad setting, a bad entry and a bad plugin config are reported in one go."""
        path = write(
            tmp_path,
            "listen: nowhere\nplugins:\n  - {name: a, type: headers, phase: LATE}\n"
            "  - {name: b, type: headers, config: {request: {set: [x]}}}\n",
        )
        found = problems(path)
        assert len(found) == 3
        assert any("field 'listen'" in m for m in found)
        assert any('"a"' in m and "field 'phase'" in m for m in found)
        assert any('"b"' in m and "field 'config.request.set'" in m for m in found)

    @pytest.mark.parametrize("text", ["", "   \n\n  \n", "# plugins: []\n  # nothing\n", "---\n"])
    def test_empty_file(self, tmp_path: Path, text: str) -> None:
        """An empty, whitespace-only or comment-only file is refused (a truncated file must
        never mean "no plugins"), naming the file and saying how to ask for none."""
        path = write(tmp_path, text)
        (msg,) = problems(path)
        assert msg == (
            f"{path}: the file is empty (nothing but whitespace or comments): a config must "
            "list its plugins; to run with none, write `plugins: []`"
        )

    def test_plugins_missing(self, tmp_path: Path) -> None:
        """Settings without a `plugins` list are not "no plugins"."""
        path = write(tmp_path, "listen: 127.0.0.1:1\n")
        (msg,) = problems(path)
        assert msg == (
            f"{path}: field 'plugins': missing: list the plugins to run, or write "
            "`plugins: []` to run with none"
        )

    def test_plugins_null(self, tmp_path: Path) -> None:
        """`plugins:` with nothing under it is refused at its line."""
        path = write(tmp_path, "listen: 127.0.0.1:1\nplugins:\n")
        (msg,) = problems(path)
        assert msg.startswith(f"{path}:2: field 'plugins': is empty: list the plugins")

    def test_not_a_regular_file(self, tmp_path: Path) -> None:
        """A directory or a FIFO in the file's place is refused, without blocking on it."""
        (tmp_path / "dir.yaml").mkdir()
        os.mkfifo(tmp_path / "fifo.yaml")
        assert problems(tmp_path / "dir.yaml") == [
            f"{tmp_path / 'dir.yaml'}: not a regular file (a directory)"
        ]
        assert problems(tmp_path / "fifo.yaml") == [
            f"{tmp_path / 'fifo.yaml'}: not a regular file (a FIFO)"
        ]

    def test_bad_listen(self, tmp_path: Path) -> None:
        """Top-level fields are located too."""
        path = write(tmp_path, "listen: nowhere\nplugins: []\n")
        (msg,) = problems(path)
        assert msg.startswith(f"{path}:1: field 'listen'")

    def test_not_yaml(self, tmp_path: Path) -> None:
        """A YAML syntax error names the line."""
        path = write(tmp_path, "plugins:\n  - name: [a\n")
        (msg,) = problems(path)
        assert "not valid YAML" in msg and str(path) in msg

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a ConfigError, not a traceback."""
        (msg,) = problems(tmp_path / "absent.yaml")
        assert "cannot read" in msg

    def test_bad_regex(self, tmp_path: Path) -> None:
        """A regex that does not compile is refused at load, not per request."""
        path = write(
            tmp_path, "plugins: [{name: a, type: headers, match: [{paths: [{regex: '(('}]}]}]"
        )
        (msg,) = problems(path)
        assert "does not compile" in msg and "field 'match[0].paths[0]'" in msg

    def test_plugin_init_error_is_reported(self, tmp_path: Path) -> None:
        """A plugin that refuses its config in __init__ is reported with its name."""
        path = write(
            tmp_path,
            "plugins: [{name: a, type: 'tests.support.plugins:Hanger', config: {blocking_ms: x}}]",
        )
        (msg,) = problems(path)
        assert "blocking_ms" in msg


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("50ms", 0.05), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("100us", 0.0001), (3, 3.0)],
    )
    def test_parse(self, text: str | int, seconds: float) -> None:
        """Envoy/Istio duration spellings."""
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["fast", "-1s", "1 day", True, None])
    def test_refuse(self, text: object) -> None:
        """Anything else is refused with a hint."""
        with pytest.raises(ValueError):
            parse_duration(text)


def test_parse_file_keeps_raw_and_lines(tmp_path: Path) -> None:
    """The parsed file keeps what the user wrote, to locate plugin-level problems."""
    parsed = parse_file(write(tmp_path, "plugins:\n  - name: a\n    type: headers\n"))
    assert parsed.lines.line(("plugins", 0, "type")) == 3


class TestSocketMode:
    def test_octal_strings_and_ints(self) -> None:
        """socketMode as YAML writes it: "0660" or an octal number."""
        assert ServerSettings.model_validate({"socketMode": "0600"}).socket_mode == 0o600
        assert ServerSettings.model_validate({"socketMode": 0o640}).socket_mode == 0o640
        assert ServerSettings().socket_mode == 0o660

    @pytest.mark.parametrize("bad", ["rw-rw----", "01000", -1])
    def test_not_a_mode(self, bad: object) -> None:
        with pytest.raises(ValidationError, match="mode"):
            ServerSettings.model_validate({"socketMode": bad})


class TestRecyclingSettings:
    def test_sizes_and_counts(self, tmp_path: Path) -> None:
        """maxWorkerRss takes Kubernetes-style sizes; both limits default to never."""
        loaded = load(
            write(tmp_path, "maxStreamsPerWorker: 50000\nmaxWorkerRss: 512Mi\nplugins: []\n")
        )
        assert loaded.settings.max_streams_per_worker == 50_000
        assert loaded.settings.max_worker_rss == 512 * 2**20
        assert (
            load(write(tmp_path, "maxWorkerRss: 1G\nplugins: []\n")).settings.max_worker_rss
            == 10**9
        )
        defaults = load(write(tmp_path, "plugins: []\n")).settings
        assert (defaults.max_streams_per_worker, defaults.max_worker_rss) == (0, 0)

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("maxStreamsPerWorker: 10", "0 (never) or at least 1000"),
            ("maxWorkerRss: 64Mi", "0 (never) or at least 128Mi"),
            ("maxWorkerRss: lots", "'lots' is not a size; write it like 512Mi, 1Gi or 300M"),
        ],
    )
    def test_refused(self, tmp_path: Path, line: str, message: str) -> None:
        """Limits that would recycle a worker all the time, or that are not sizes."""
        path = write(tmp_path, f"{line}\nplugins: []\n")
        (msg,) = problems(path)
        assert msg.startswith(f"{path}:1: field '{line.split(':')[0]}'")
        assert message in msg


class TestHttpAuthzPrefix:
    def test_a_path_of_its_own(self, tmp_path: Path) -> None:
        path = write(tmp_path, "httpAuthzPrefix: /authz/check/\nplugins: []\n")
        assert load(path).settings.http_authz_prefix == "/authz/check/"

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("/", "a path of its own starting with '/'"),  # every request would be a check
            ("ext_authz", "a path of its own starting with '/'"),  # would match nothing
            ("'/a b'", "a path of its own starting with '/'"),
            ("/healthz", "the HTTP health check's path"),
        ],
    )
    def test_refused(self, tmp_path: Path, value: str, message: str) -> None:
        path = write(tmp_path, f"httpAuthzPrefix: {value}\nplugins: []\n")
        (msg,) = problems(path)
        assert msg.startswith(f"{path}:1: field 'httpAuthzPrefix'"), msg
        assert message in msg
