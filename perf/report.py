"""Results: ratios, the issue's targets checked against the figures, JSON, markdown, PNG."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

KiB = 1024


def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("status") == "ok"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio = requests/s over Envoy alone's requests/s for the same request shape."""
    alone = {
        r["shape"]: r["rps"] for r in rows if r["server"] == "envoy" and _ok(r) and r["rps"] > 0
    }
    for row in rows:
        if _ok(row) and row["shape"] in alone and row["server"] != "envoy":
            row["ratio"] = round(row["rps"] / alone[row["shape"]], 3)
        elif _ok(row) and row["server"] == "envoy":
            row["ratio"] = 1.0


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["scenario"]: r for r in rows}


def _linear_fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares y = a + b x; returns (a, b, r²)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    syy = sum((y - my) ** 2 for _, y in points)
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    r2 = (sxy * sxy) / (sxx * syy) if sxx and syy else 1.0
    return a, b, r2


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue with the figure this run measured (None: not measured)."""
    by = _by_name(rows)
    out: list[dict[str, Any]] = []

    floor, every = by.get("floor"), by.get("headers-every-phase")
    if _ok(floor) and _ok(every):
        assert floor is not None
        assert every is not None
        out.append(
            {
                "target": "1. same Envoy config (request + response headers): server CPU per "
                "request <= the bare floor's",
                "figure": f"{every['server_cpu_us']} us vs floor {floor['server_cpu_us']} us",
                "met": every["server_cpu_us"] <= floor["server_cpu_us"],
            }
        )
    on_demand = by.get("headers-on-demand")
    if _ok(on_demand) and "ratio" in (on_demand or {}):
        assert on_demand is not None
        out.append(
            {
                "target": "2. phases on demand: ratio to Envoy alone >= 0.42",
                "figure": f"{on_demand['ratio']}",
                "met": on_demand["ratio"] >= 0.42,
            }
        )
    chain = sorted((r for r in rows if r["group"] == "chain" and _ok(r)), key=lambda r: r["x"])
    if len(chain) >= 2:
        base = chain[0]["server_cpu_us"]
        worst = max(abs(r["server_cpu_us"] - base) / base for r in chain)
        out.append(
            {
                "target": "3. CPU per request flat (+-10 %) from 1 to 20 plugins, one matching",
                "figure": ", ".join(f"{int(r['x'])}: {r['server_cpu_us']} us" for r in chain)
                + f" (largest change {worst * 100:.1f} %)",
                "met": worst <= 0.10,
            }
        )
    body = sorted((r for r in rows if r["group"] == "body" and _ok(r)), key=lambda r: r["x"])
    if len(body) >= 2:
        _, slope, r2 = _linear_fit([(r["x"], r["server_cpu_us"]) for r in body])
        joins_ok = all(r.get("body_bytes_joined_per_request", 0) <= r["x"] for r in body)
        out.append(
            {
                "target": "4a. body cost linear in size, at most one join",
                "figure": f"{slope * 1024 * 1024:.0f} us per MiB, r2 = {r2:.3f}; joined bytes "
                "per request: "
                + ", ".join(str(r.get("body_bytes_joined_per_request")) for r in body),
                "met": r2 >= 0.95 and joins_ok,
            }
        )
    rss = [r for r in rows if _ok(r) and r["server"] == "asm-proxy" and "rss_per_stream_bytes" in r]
    if rss:
        worst_rss = max(r["rss_per_stream_bytes"] for r in rss)
        out.append(
            {
                "target": "4b. memory per open stream <= 16 KiB",
                "figure": f"{worst_rss / KiB:.1f} KiB (largest of {len(rss)} scenarios)",
                "met": worst_rss <= 16 * KiB,
            }
        )
    out += transport_targets(rows)
    workers = sorted((r for r in rows if r["group"] == "workers" and _ok(r)), key=lambda r: r["x"])
    if len(workers) >= 2:
        rates = [r["rps"] for r in workers]
        out.append(
            {
                "target": "5. requests/s grows with workers up to the core count",
                "figure": ", ".join(f"{int(r['x'])}: {r['rps']:.0f}/s" for r in workers),
                "met": all(b > a for a, b in itertools.pairwise(rates)),
            }
        )
    return out


def _named(by: dict[str, dict[str, Any]], base: str, transport: str) -> dict[str, Any] | None:
    row = by.get(base if transport == "grpcio" else f"{base}@{transport}")
    return row if _ok(row) else None


def transport_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transport issue's targets, for each transport measured, against the bare
    grpc.aio floor and Envoy alone of the same run."""
    by = _by_name(rows)
    floor = by.get("floor")
    if not _ok(floor):
        return []
    assert floor is not None
    floor_cpu = floor["server_cpu_us"]
    transports = sorted({r["transport"] for r in rows if r.get("transport")})
    out: list[dict[str, Any]] = []
    for t in transports:
        on_demand = _named(by, "headers-on-demand", t)
        if on_demand is not None and "ratio" in on_demand:
            share = on_demand["server_cpu_us"] / floor_cpu
            out.append(
                {
                    "target": f"T1 [{t}] phases on demand: server CPU <= 0.3x the floor's, "
                    "ratio >= 0.35",
                    "figure": f"{on_demand['server_cpu_us']} us = {share:.2f}x floor "
                    f"({floor_cpu} us); ratio {on_demand['ratio']}",
                    "met": share <= 0.3 and on_demand["ratio"] >= 0.35,
                }
            )
        every = _named(by, "headers-every-phase", t)
        if every is not None:
            share = every["server_cpu_us"] / floor_cpu
            out.append(
                {
                    "target": f"T2 [{t}] request and response headers: server CPU <= 0.4x the "
                    "floor's",
                    "figure": f"{every['server_cpu_us']} us = {share:.2f}x floor",
                    "met": share <= 0.4,
                }
            )
            if "rss_per_stream_bytes" in every:
                out.append(
                    {
                        "target": f"T4 [{t}] memory per open stream <= 16 KiB",
                        "figure": f"{every['rss_per_stream_bytes'] / KiB:.1f} KiB",
                        "met": every["rss_per_stream_bytes"] <= 16 * KiB,
                    }
                )
        for base, how in (("jwt-authz", "gRPC"), ("jwt-authz-http", "HTTP")):
            jwt = by.get(base) if base.endswith("-http") and t == "nghttp2" else None
            jwt = jwt or (_named(by, base, t) if not base.endswith("-http") else None)
            if jwt is None or not _ok(jwt):
                continue
            share = jwt["server_cpu_us"] / floor_cpu
            out.append(
                {
                    "target": f"T3 [{t}] ext_authz JWT over {how} (remembered): server CPU "
                    "<= 0.3x the floor's",
                    "figure": f"{jwt['server_cpu_us']} us = {share:.2f}x floor",
                    "met": share <= 0.3,
                }
            )
        mine = [r for r in rows if r.get("transport") == t and _ok(r) and r["group"] == "main"]
        worse = []
        for r in mine:
            reference = _named(by, r["base"], "grpcio")
            if reference is not None and r["p99_ms"] > reference["p99_ms"]:
                worse.append(f"{r['base']} {r['p99_ms']} vs {reference['p99_ms']} ms")
        errors = sum(r.get("errors", 0) for r in mine)
        out.append(
            {
                "target": f"T5 [{t}] 0 errors; p99 not worse than grpc.aio's",
                "figure": f"{errors} errors; p99 worse in: {', '.join(worse) or 'none'}",
                "met": errors == 0 and not worse,
            }
        )
    return out


COLUMNS = [
    ("scenario", "scenario"),
    ("rps", "req/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("ratio", "ratio"),
    ("server_cpu_us", "server CPU µs/req"),
    ("envoy_cpu_us", "Envoy CPU µs/req"),
    ("rss_per_stream_bytes", "RSS/stream"),
    ("messages_per_stream", "msgs/stream"),
    ("errors", "errors"),
]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "n/a" if key == "rss_per_stream_bytes" and "rss_per_stream" in row else ""
    if key == "rss_per_stream_bytes":
        return f"{value / KiB:.1f} KiB"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    machine = result["machine"]
    lines = [
        f"# asm-proxy benchmark, {machine['date']}",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, Envoy {machine['envoy']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}; load average at start "
        f"{machine['load_average_at_start']}.",
        f"Settings: {json.dumps(result['options'])}",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row['scenario']} | {row.get('status')} |" + " |" * (len(COLUMNS) - 2))
            continue
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |")
    lines += ["", "## Targets", ""]
    for target in result["targets"]:
        mark = "met" if target["met"] else "NOT met"
        lines.append(f"- {target['target']}: **{mark}** — {target['figure']}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if _ok(r)]
    main = [r for r in rows if r["group"] in ("main", "floors") and r["server"] != "envoy"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    ax = axes[0][0]
    names = [r["scenario"] for r in main]
    ax.barh(names, [r.get("ratio", 0) for r in main], color="#4c72b0")
    ax.axvline(0.42, color="#c44e52", linestyle="--", label="target 0.42 (Go)")
    ax.set_xlabel("requests/s ÷ Envoy alone (same request)")
    ax.set_title("Ratio to Envoy alone")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax = axes[0][1]
    ax.barh(names, [r.get("server_cpu_us", 0) for r in main], color="#55a868", label="ext server")
    ax.barh(
        names,
        [r.get("envoy_cpu_us", 0) for r in main],
        left=[r.get("server_cpu_us", 0) for r in main],
        color="#dd8452",
        alpha=0.6,
        label="Envoy",
    )
    ax.set_xlabel("CPU µs per request")
    ax.set_title("CPU per request")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax = axes[0][2]
    ax.barh(names, [r.get("rss_per_stream_bytes", 0) / KiB for r in main], color="#8172b3")
    for i, r in enumerate(main):
        if "rss_per_stream_bytes" not in r:
            ax.text(0.5, i, f"n/a: {r.get('rss_per_stream', 'not measured')}", va="center")
    ax.axvline(16, color="#c44e52", linestyle="--", label="target 16 KiB")
    ax.set_xlabel("KiB of server RSS per open stream")
    ax.set_title("Memory per open stream")
    ax.invert_yaxis()
    ax.legend(loc="lower right")

    def sweep(ax: Any, group: str, key: str, xlabel: str, ylabel: str, scale: float) -> None:
        points = sorted((r for r in rows if r["group"] == group), key=lambda r: r["x"])
        if not points:
            ax.set_visible(False)
            return
        ax.plot([r["x"] / scale for r in points], [r.get(key, 0) for r in points], "o-")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)

    sweep(
        axes[1][0],
        "body",
        "server_cpu_us",
        "request body MiB (BUFFERED)",
        "server CPU µs/req",
        2**20,
    )
    axes[1][0].set_title("CPU per request vs body size")
    sweep(
        axes[1][1],
        "chain",
        "server_cpu_us",
        "configured plugins (one matches)",
        "server CPU µs/req",
        1,
    )
    axes[1][1].set_title("CPU per request vs chain length")
    sweep(axes[1][2], "workers", "rps", "workers", "requests/s", 1)
    axes[1][2].set_title("Requests/s vs workers")
    machine = result["machine"]
    fig.suptitle(
        f"asm-proxy through Envoy {_envoy_version(machine['envoy'])} — {machine['cores']} cores, "
        f"{machine['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _envoy_version(text: str) -> str:
    parts = text.split("/")
    return parts[1] if len(parts) > 1 else text


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "results.png")
