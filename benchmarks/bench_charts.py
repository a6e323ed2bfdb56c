"""Charts of the server and overload results (PNG, matplotlib: the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

from bench_servers import SERVERS, OverloadResult, ServerResult

COLORS = {
    "bare": "#7f7f7f",
    "baldur-memory": "#1f77b4",
    "baldur-redis": "#d62728",
    "baldur-redis-view": "#ff9896",
    "limiter-redis": "#9467bd",
    "floor": "#2ca02c",
    "baldur": "#1f77b4",
}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def servers_chart(results: list[ServerResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [v.key for v in results[0].variants]
    labels = {v.key: v.label for v in results[0].variants}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs, ratios, p99s = [], [], []
        for j, result in enumerate(results):
            by_key = {v.key: v for v in result.variants}
            if key not in by_key:
                continue
            bare = by_key["bare"].figure("rps")
            xs.append(j + (i - (len(keys) - 1) / 2) * width)
            ratios.append(by_key[key].figure("rps") / bare if bare else 0.0)
            p99s.append(by_key[key].figure("p99_us") / 1000)
        bars = top.bar(xs, ratios, width, label=labels[key], color=COLORS.get(key))
        top.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        bars = bottom.bar(xs, p99s, width, color=COLORS.get(key))
        bottom.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    top.axhline(1.0, color="black", linewidth=0.6)
    top.axhline(0.95, color="black", linewidth=0.6, linestyle=":")
    top.set_ylabel("throughput ÷ bare Flask (same server, same run)")
    top.set_title(title)
    top.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.02))
    top.set_ylim(0, max(1.15, top.get_ylim()[1]))
    bottom.set_ylabel("p99 latency (ms), 16 busy connections")
    bottom.set_xticks(range(len(results)), [SERVERS[r.server] for r in results])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overload_chart(result: OverloadResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    twin = right.twinx()
    levels = result.levels
    for v in result.variants:
        color = COLORS.get(v.key)
        p99 = [v.figure(c, "served_p99_us") / 1000 for c in levels]
        left.plot(levels, p99, marker="o", color=color, label=f"{v.label}: served p99")
        shed = [100 * v.figure(c, "shed_share") for c in levels]
        served = [v.figure(c, "served_rps") for c in levels]
        right.plot(levels, served, marker="o", color=color, label=f"{v.label}: served/s")
        twin.plot(levels, shed, marker="s", linestyle="--", color=color, label=f"{v.label}: shed %")
    twin.set_ylabel("shed (503), % of answers (dashed)")
    twin.set_ylim(0, 100)
    twin.legend(fontsize=8, loc="lower right")
    baldur = next((v for v in result.variants if v.key == "baldur"), None)
    if baldur is not None:
        unloaded = baldur.figure(levels[0], "served_p99_us") / 1000
        left.axhline(2 * unloaded, color="black", linestyle=":", linewidth=0.8, label="goal: 2 × unloaded p99")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_xlabel("wrk connections (closed loop; 16 threads serve)")
    left.set_ylim(0, max(1.0, left.get_ylim()[1]))
    left.set_ylabel("latency of served requests, p99 (ms)")
    left.legend(fontsize=8)
    left.set_title(title)
    right.set_ylabel("served requests per second")
    right.set_ylim(0, max(1.0, right.get_ylim()[1]))
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
