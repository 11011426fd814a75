"""Static plots (PNG, matplotlib's object API: no pyplot state, no display, safe in any process).

Each function writes one file and returns its name; the page shows them with their alt text.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from lab.results.report.series import Timeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
COLORS = {"hypervisor": "#4c72b0", "guest": "#dd8452", "network": "#55a868", "total_s": "#8172b3",
          "heartbeat": "#dd8452", "echo": "#55a868", "live": "#4c72b0", "cold": "#c44e52",
          "pace": "#8172b3"}
LIMIT = {"color": "#c44e52", "linestyle": "--", "linewidth": 1.5}


def _figure(**kwargs) -> Figure:
    # matplotlib costs about 0.4 s to import: only a report that draws pays it, not every `python -m lab`.
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / name, dpi=DPI, bbox_inches="tight")
    return name


def probe_strips(panels: list[dict], title: str, out_dir: Path, name: str) -> str:
    """One panel per probe: every sample as a point (jittered), a box when there are 5 or more, the limit drawn.

    panels: [{"label", "key", "values": [...], "limit": float | None, "unit": "ms" | "s", "absent": int}]
    """
    fig = _figure(figsize=(2.3 * len(panels), 3.1), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    jitter = random.Random(0)  # the same picture every time for the same records
    for ax, panel in zip(axes, panels):
        values, limit = panel["values"], panel["limit"]
        color = COLORS.get(panel["key"], "#333333")
        if len(values) >= 5:
            ax.boxplot(values, positions=[0], widths=0.5, showfliers=False,
                       medianprops={"color": color}, boxprops={"color": "#888888"})
        ax.scatter([jitter.uniform(-0.12, 0.12) for _ in values], values, s=22, color=color, alpha=0.8,
                   edgecolors="white", linewidths=0.5, zorder=3)
        if limit is not None:
            ax.axhline(limit, **LIMIT)
            ax.annotate(f"limit {limit:g} {panel['unit']}", xy=(0.02, limit), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize=7, color=LIMIT["color"])
        top = max(values + ([limit] if limit is not None else []), default=1.0)
        ax.set_ylim(0, top * 1.15 or 1.0)
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([])
        note = f"n={len(values)}" + (f", {panel['absent']} absent" if panel["absent"] else "")
        ax.set_title(f"{panel['label']}\n{note}", fontsize=8)
        ax.set_ylabel(panel["unit"], fontsize=8)
        ax.tick_params(labelsize=7)
        if not values:
            ax.text(0, top * 0.5, "absent", ha="center", fontsize=9, color="#888888")
    fig.suptitle(title, fontsize=9)
    return _save(fig, out_dir, name)


def gap_timeline(line: Timeline, title: str, out_dir: Path, name: str) -> str:
    """Inter-arrival gaps of heartbeats and echo replies over time (log scale), start/end and pause/resume marked."""
    fig = _figure(figsize=(11.0, 3.4), layout="constrained")
    ax = fig.subplots()
    for probe, gap_list in (("heartbeat", line.heartbeat), ("echo", line.echo)):
        if gap_list:
            ax.plot([g.at_s for g in gap_list], [max(g.ms, 1e-3) for g in gap_list], ".", markersize=2.5,
                    color=COLORS[probe], label=f"{probe} inter-arrival gap", alpha=0.7)
    if line.threshold_ms:
        ax.axhline(line.threshold_ms, **LIMIT, label=f"3 heartbeat periods ({line.threshold_ms:g} ms)")
    placed = [g for g in line.over if g.at_s is not None]
    for probe in ("heartbeat", "echo"):  # every gap above three periods: a bar from where it began, as long as it lasted
        mine = [g for g in placed if g.probe == probe]
        if mine:
            ax.hlines([g.ms for g in mine], [g.at_s for g in mine], [g.at_s + g.ms / 1000 for g in mine],
                      colors=COLORS[probe], linewidths=2.5, label=f"{probe} gaps above 3 periods ({len(mine)})")
            top = max(mine, key=lambda g: g.ms)
            left = probe == "heartbeat"  # the two largest gaps are often side by side: labels to either side
            ax.annotate(f"{probe} {top.ms:,.0f} ms", xy=(top.at_s if left else top.at_s + top.ms / 1000, top.ms),
                        xytext=(-3 if left else 3, 3), textcoords="offset points", ha="right" if left else "left",
                        fontsize=7, color=COLORS[probe])
    if "paused" in line.markers and "resumed" in line.markers:
        ax.axvspan(line.markers["paused"], line.markers["resumed"], color="#cccccc", alpha=0.5,
                   label="libvirt paused .. resumed")
    for key, style in (("started", ":"), ("finished", "-.")):
        if key in line.markers:
            ax.axvline(line.markers[key], color="#333333", linestyle=style, linewidth=1, label=f"{line.action} {key}")
    ax.set_yscale("log")
    ax.set_xlabel(f"seconds from {line.origin}", fontsize=8)
    ax.set_ylabel("gap (ms, log)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if line.pace:  # the degradation beside the interruption: the guest's work pace on its own (linear) axis
        pace_ax = ax.twinx()
        xs = [at for at, _pct in line.pace]
        ys = [float("nan") if pct is None else pct for _at, pct in line.pace]  # no heartbeat: a break, never 0
        pace_ax.step(xs, ys, where="post", color=COLORS["pace"], linewidth=1, alpha=0.8,
                     label="guest work pace (% of before; breaks: no heartbeat)")
        pace_ax.set_ylim(0, max([150.0, *(y for y in ys if y == y)]))
        pace_ax.set_ylabel("work pace (% of before)", fontsize=8, color=COLORS["pace"])
        pace_ax.tick_params(labelsize=7)
        more_handles, more_labels = pace_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.06, 1.0), framealpha=0.8)
    ax.set_title(title, fontsize=9)
    return _save(fig, out_dir, name)


def interruption_bars(rows: list[dict], out_dir: Path, name: str) -> str:
    """Service interruption, live vs cold, per storage mode (log scale: the two differ by orders of magnitude).

    rows: [{"storage", "mode", "interruption_ms": float | None}]
    """
    storages = list(dict.fromkeys(r["storage"] for r in rows))
    fig = _figure(figsize=(1.8 + 1.6 * len(storages), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.38
    for offset, mode in ((-width / 2, "live"), (width / 2, "cold")):
        xs, ys = [], []
        for i, storage in enumerate(storages):
            value = next((r["interruption_ms"] for r in rows if r["storage"] == storage and r["mode"] == mode), None)
            if value is None:
                ax.text(i + offset, 1, "absent", ha="center", va="bottom", fontsize=7, rotation=90, color="#888888")
                continue
            xs.append(i + offset)
            ys.append(value)
        bars = ax.bar(xs, ys, width, color=COLORS[mode], label=mode)
        ax.bar_label(bars, labels=[f"{v:,.0f} ms" for v in ys], fontsize=7)
    ax.set_xticks(range(len(storages)), storages, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("service interruption (ms, log)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title("live vs cold: service interruption (UDP echo)", fontsize=9)
    return _save(fig, out_dir, name)


def stall_bars(series: dict[str, list[float]], limits: dict[str, float | None], out_dir: Path, name: str) -> str:
    """Hot patch stalls per repetition (apply stall, frozen_time, unapply stall) with each limit drawn."""
    fig = _figure(figsize=(2.5 * len(series), 3.0), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (label, values) in zip(axes, series.items()):
        ax.bar(range(1, len(values) + 1), values, color="#4c72b0")
        limit = limits.get(label)
        if limit is not None:
            ax.axhline(limit, **LIMIT)
            ax.annotate(f"limit {limit:g} ms", xy=(0.02, limit), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize=7, color=LIMIT["color"])
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("repetition", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("hot patch stalls", fontsize=9)
    return _save(fig, out_dir, name)
