"""Namespace files: confinement, the composed config, file-by-file last good, fail closed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from asm_proxy.config import ConfigError, NamespaceSettings
from asm_proxy.namespaces import (
    REFUSED_TYPE,
    NamespaceFiles,
    check_file,
    compose,
    listing,
    load_all,
)
from asm_proxy.testing import PluginHost

ROOT = "istio-system"
GOOD = """
plugins:
  - name: tag
    type: headers
    selector: {matchLabels: {app: helloworld}}
    config: {request: {set: {x-team: a}}}
"""


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(str(p) for p in exc.value.problems)


def test_plugins_are_named_and_confined_to_their_namespace(tmp_path: Path) -> None:
    (entry,) = check_file(tmp_path / "team-a.yaml", "team-a", GOOD, root=ROOT)
    assert entry["name"] == "team-a/tag"
    assert entry["selector"] == {"matchLabels": {"app": "helloworld"}, "namespaces": ["team-a"]}


def test_the_root_namespace_applies_to_every_workload(tmp_path: Path) -> None:
    (entry,) = check_file(tmp_path / f"{ROOT}.yaml", ROOT, GOOD, root=ROOT)
    assert entry["name"] == f"{ROOT}/tag"
    assert entry["selector"] == {"matchLabels": {"app": "helloworld"}}


@pytest.mark.parametrize("selector", ["{namespace: team-b}", "{namespaces: [team-a, team-b]}"])
def test_a_selector_reaching_outside_its_namespace_is_refused(
    tmp_path: Path, selector: str
) -> None:
    text = GOOD.replace("selector: {matchLabels: {app: helloworld}}", f"selector: {selector}")
    with pytest.raises(ConfigError) as exc:
        check_file(tmp_path / "team-a.yaml", "team-a", text, root=ROOT)
    said = _problems(exc)
    assert "team-a.yaml:5" in said
    assert 'plugin plugins[0] "tag"' in said
    assert "field 'selector.namespaces'" in said
    assert "team-b is outside namespace 'team-a'" in said


def test_its_own_namespace_in_the_selector_is_fine(tmp_path: Path) -> None:
    text = GOOD.replace("{matchLabels:", "{namespace: team-a, matchLabels:")
    (entry,) = check_file(tmp_path / "team-a.yaml", "team-a", text, root=ROOT)
    assert entry["selector"]["namespaces"] == ["team-a"]


def test_a_plugin_entry_is_checked_like_in_the_main_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        check_file(
            tmp_path / "team-a.yaml", "team-a", GOOD.replace("{matchLabels", "{m"), root=ROOT
        )
    assert "field 'selector.m'" in _problems(exc)


def test_server_settings_do_not_belong_in_a_namespace_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        check_file(tmp_path / "team-a.yaml", "team-a", "listen: 0.0.0.0:1\n" + GOOD, root=ROOT)
    said = _problems(exc)
    assert "field 'listen'" in said and "only `plugins:`" in said
    assert said.count("listen") == 1


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "the file is empty"),
        ("# nothing\n", "the file is empty"),
        ("plugins: [", "not valid YAML"),
        ("plugins:\n  - {name: x, type: nope}\n", "unknown plugin type 'nope'"),
        ("plugins:\n  - {name: x, type: headers, config: {request: 1}}\n", "field 'config"),
    ],
)
def test_a_broken_file_is_refused_with_file_and_field(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_file(tmp_path / "team-a.yaml", "team-a", text, root=ROOT)
    assert said in _problems(exc)
    assert "team-a.yaml" in _problems(exc)


def test_a_file_name_that_is_no_namespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        check_file(tmp_path / "Team_A.yaml", "Team_A", GOOD, root=ROOT)
    assert "not a namespace name" in _problems(exc)


def test_listing_skips_hidden_entries_and_other_files(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yml", ".c.yaml", "README.md"):
        (tmp_path / name).write_text(GOOD)
    (tmp_path / "..data").mkdir()
    assert sorted(listing(tmp_path)) == ["a", "b"]


def test_compose_keeps_the_main_file_and_appends_namespaces() -> None:
    text = compose(
        "listen: 127.0.0.1:1\nplugins:\n  - {name: main, type: headers}\n",
        {"b": [{"name": "b/x", "type": "headers"}], "a": [{"name": "a/x", "type": "headers"}]},
    )
    assert "listen: 127.0.0.1:1" in text
    assert text.index("main") < text.index("a/x") < text.index("b/x")


def _files(tmp_path: Path) -> NamespaceFiles:
    directory = tmp_path / "ns"
    directory.mkdir(exist_ok=True)
    return NamespaceFiles(NamespaceSettings(directory="ns"), tmp_path / "asm-proxy.yaml")


def _refresh(files: NamespaceFiles) -> bool:
    return asyncio.run(files.refresh(0.01))


def test_each_file_keeps_its_last_good_plugins(tmp_path: Path) -> None:
    files = _files(tmp_path)
    (files.directory / "team-a.yaml").write_text(GOOD)
    (files.directory / "team-b.yaml").write_text(GOOD.replace("x-team: a", "x-team: b"))
    assert files.load() == []
    before = files.entries()
    assert sorted(before) == ["team-a", "team-b"]
    (files.directory / "team-b.yaml").write_text("")  # emptied: refused
    assert not _refresh(files)
    assert files.entries() == before
    (files.directory / "team-a.yaml").write_text(GOOD.replace("x-team: a", "x-team: a2"))
    assert _refresh(files)
    after = files.entries()
    assert after["team-b"] == before["team-b"]
    assert after["team-a"][0]["config"]["request"]["set"]["x-team"] == "a2"


def test_a_file_that_never_loaded_fails_its_namespace_closed(tmp_path: Path) -> None:
    files = _files(tmp_path)
    (files.directory / "team-b.yaml").write_text("plugins: [")
    problems = files.load()
    assert problems and "team-b.yaml" in str(problems[0])
    (guard,) = files.entries()["team-b"]
    assert guard["type"] == REFUSED_TYPE
    assert guard["selector"] == {"namespaces": ["team-b"]}
    (files.directory / "team-b.yaml").write_text(GOOD)
    assert _refresh(files)
    assert files.entries()["team-b"][0]["name"] == "team-b/tag"


def test_a_removed_file_removes_its_namespace_and_an_unreadable_one_keeps_it(
    tmp_path: Path,
) -> None:
    files = _files(tmp_path)
    (files.directory / "team-a.yaml").write_text(GOOD)
    (files.directory / "team-b.yaml").write_text(GOOD)
    files.load()
    (files.directory / "team-a.yaml").unlink()
    (files.directory / "team-a.yaml").mkdir()  # replaced by a directory: unusable
    assert not _refresh(files)
    assert "team-a" in files.entries()
    (files.directory / "team-b.yaml").unlink()
    assert _refresh(files)
    assert sorted(files.entries()) == ["team-a"]


def test_the_guard_refuses_with_503(tmp_path: Path) -> None:
    host = PluginHost.from_yaml(
        f"""
plugins:
  - name: team-b/config-refused
    type: {REFUSED_TYPE}
    selector: {{namespaces: [team-b]}}
    config: {{namespace: team-b, file: /x/team-b.yaml}}
"""
    )
    refused = host.request_headers(attributes={"xds.node.metadata.NAMESPACE": "team-b"})
    assert refused.immediate is not None and refused.immediate.status == 503
    assert refused.immediate.details == "asm_proxy_namespace_config_refused"
    other = host.new_exchange().request_headers(
        attributes={"xds.node.metadata.NAMESPACE": "team-a"}
    )
    assert other.immediate is None
    unknown = host.new_exchange().request_headers()
    assert unknown.immediate is None  # a workload of no known namespace is in none


def test_validate_checks_every_namespace_file(tmp_path: Path) -> None:
    (tmp_path / "ns").mkdir()
    main = tmp_path / "asm-proxy.yaml"
    main.write_text("namespaces: {directory: ns}\nplugins: []\n")
    (tmp_path / "ns" / "team-a.yaml").write_text(GOOD)
    ok = _cli("validate", str(main))
    assert ok.returncode == 0 and "team-a/tag (headers)" in ok.stdout
    assert load_all(main).chain.entries[0].name == "team-a/tag"
    (tmp_path / "ns" / "team-b.yaml").write_text(
        GOOD.replace("{matchLabels", "{namespace: x, matchLabels")
    )
    bad = _cli("validate", str(main))
    assert bad.returncode == 1 and "team-b.yaml" in bad.stderr
    alone = _cli("validate", "--namespace", "team-a", str(tmp_path / "ns" / "team-a.yaml"))
    assert alone.returncode == 0 and "for namespace team-a" in alone.stdout
    other = _cli("validate", "--namespace", "team-b", str(tmp_path / "ns" / "team-a.yaml"))
    assert other.returncode == 0  # no namespace in its selector: confined to team-b
    outside = GOOD.replace("{matchLabels", "{namespace: team-a, matchLabels")
    (tmp_path / "ns" / "team-a.yaml").write_text(outside)
    refused = _cli("validate", "--namespace", "team-b", str(tmp_path / "ns" / "team-a.yaml"))
    assert refused.returncode == 1 and "outside namespace 'team-b'" in refused.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asm_proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_selection_tests_only_a_workloads_own_namespace_and_unconfined_plugins(
    tmp_path: Path,
) -> None:
    """Chain selection by namespace index gives the same plugins as testing every one."""
    files = {
        ns: check_file(
            tmp_path / f"{ns}.yaml", ns, GOOD.replace("x-team: a", f"x-team: {ns}"), root=ROOT
        )
        for ns in ("team-a", "team-b", ROOT)
    }
    main = "plugins:\n  - {name: all, type: headers, config: {request: {set: {x-all: '1'}}}}\n"
    host = PluginHost.from_yaml(compose(main, files))
    cases = {
        ("team-a", "helloworld"): {"x-all": "1", "x-team": "team-a"},
        ("team-b", "helloworld"): {"x-all": "1", "x-team": "team-b"},
        ("team-b", "other"): {"x-all": "1"},
        ("team-c", "helloworld"): {"x-all": "1", "x-team": ROOT},
    }
    for (namespace, app), want in cases.items():
        step = host.new_exchange().request_headers(
            attributes={
                "xds.node.metadata.NAMESPACE": namespace,
                "xds.node.metadata.LABELS['app']": app,
            }
        )
        got = {k: step.headers.get(k) for k in ("x-all", "x-team") if step.headers.get(k)}
        assert got == want, (namespace, app)
