"""The stage timeline picture: one row per stage (and kernel lane), one bar per tile, coloured by stage.

Two panels, one above the other on the same time scale: the serial ``baseline`` and the best pipelined
variant. In the baseline exactly one row is busy at any instant; in a pipelined run the host rows (prep,
to-device, from-device) run while the kernel row is busy, so overlap, or its absence, shows at a glance.

Usage from code: ``plot_timelines(path, panels, title)`` with ``panels`` a list of
``(label, makespan_ms, events)`` and ``events`` as produced by :func:`.measure.timeline_rel` (dicts with
``stage``, ``lane``, ``tile``, ``start_ms``, ``end_ms``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["STAGE_COLOURS", "plot_timelines", "plot_result"]

STAGE_COLOURS = {"host_prep": "#4c72b0", "to_device": "#dd8452", "kernel": "#55a868", "from_device": "#c44e52"}
_ORDER = ("host_prep", "to_device", "kernel", "from_device")

Panel = tuple[str, float, Sequence[dict[str, Any]]]


def _rows(panels: Sequence[Panel]) -> list[tuple[str, int]]:
    """(stage, lane) rows present in any panel, in pipeline order, so both panels share one layout."""
    seen = {(e["stage"], int(e["lane"]) if e["stage"] == "kernel" else 0) for _, _, ev in panels for e in ev}
    return [r for s in _ORDER for r in sorted(x for x in seen if x[0] == s)]


def _label(row: tuple[str, int], lanes: int) -> str:
    stage, lane = row
    name = stage.replace("_", " ")
    return f"{name} (lane {lane})" if stage == "kernel" and lanes > 1 else name


def _zoom_start(events: Sequence[dict[str, Any]], tile: int) -> float:
    """Start of the zoom window: just before ``tile``'s host prep (or the middle of the call)."""
    starts = [e["start_ms"] for e in events if int(e["tile"]) == tile and int(e.get("job", 0)) == min(
        int(x.get("job", 0)) for x in events)]
    if starts:
        return max(0.0, min(starts) - 0.05)
    return max((e["end_ms"] for e in events), default=0.0) / 2


def _draw(ax: Any, rows: list[tuple[str, int]], events: Sequence[dict[str, Any]], lo: float, hi: float) -> None:
    index = {r: i for i, r in enumerate(rows)}
    bars: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in events:
        if e["end_ms"] < lo or e["start_ms"] > hi:
            continue
        row = (e["stage"], int(e["lane"]) if e["stage"] == "kernel" else 0)
        # alternate shade by tile parity so neighbouring tiles stay distinguishable
        key = (index[row], int(e["tile"]) % 2)
        bars.setdefault(key, []).append((e["start_ms"], max(e["end_ms"] - e["start_ms"], 1e-4)))
    for (i, parity), spans in bars.items():
        colour = STAGE_COLOURS[rows[i][0]]
        # a thin edge in the bar's own colour keeps sub-pixel bars (µs-long copies) visible
        ax.broken_barh(spans, (i - 0.38, 0.76), facecolors=colour, edgecolors=colour, linewidth=0.4,
                       alpha=1.0 if parity == 0 else 0.6)
    ax.set_yticks(range(len(rows)))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.grid(axis="x", alpha=0.3)


def plot_timelines(path: str | Path, panels: Sequence[Panel], title: str = "", *, zoom_tile: int | None = None,
                   zoom_ms: float | None = None, dpi: int = 110) -> Path:
    """Write the PNG stage timeline of ``panels`` to ``path`` and return the path.

    Left column: each whole call, all panels on one time scale. Right column (when ``zoom_ms`` is given): a
    ``zoom_ms`` window of each call starting at tile ``zoom_tile``'s host prep, again on one time scale, so
    individual tiles and the overlap between stages are readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = _rows(panels)
    lanes = sum(1 for r in rows if r[0] == "kernel")
    x_max = max([max((e["end_ms"] for e in ev), default=0.0) for _, _, ev in panels] + [1e-3])
    zoom = zoom_ms is not None and zoom_tile is not None
    height = 1.3 + 0.42 * len(rows) * len(panels)
    fig, axes = plt.subplots(len(panels), 2 if zoom else 1, figsize=(16 if zoom else 14, height), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if zoom else None)
    labels = [_label(r, lanes) for r in rows]
    for k, (label, makespan_ms, events) in enumerate(panels):
        ax = axes[k, 0]
        _draw(ax, rows, events, 0.0, x_max * 1.01)
        ax.set_yticklabels(labels)
        ax.set_ylabel("stage")
        ax.set_title(f"{label}: makespan {makespan_ms:.1f} ms", fontsize=10, loc="left")
        if zoom:
            lo = _zoom_start(events, int(zoom_tile))  # type: ignore[arg-type]
            zx = axes[k, 1]
            _draw(zx, rows, events, lo, lo + float(zoom_ms))  # type: ignore[arg-type]
            zx.set_yticklabels([])
            zx.set_title(f"zoom: {zoom_ms:.1f} ms from tile {zoom_tile}", fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("time since the first stage event of the call (ms)")
    if zoom:
        axes[-1, 1].set_xlabel("time (ms), same scale in both zooms")
    handles = [Patch(color=STAGE_COLOURS[s], label=s.replace("_", " ")) for s in _ORDER]
    fig.legend(handles=handles, loc="upper right", ncol=4, frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if title else 0.96))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_result(res: dict[str, Any], path: str | Path) -> Path:
    """The PNG timeline of a latency benchmark result (``--plot``): its ``baseline`` and best pipelined
    timelines, zoomed on ten tiles' worth of a steady-state stretch (past the stem, inside the blocks)."""
    panels = []
    for name, events in res["timelines"].items():
        v = res["variants"][name]
        span = max((e["end_ms"] for e in events), default=0.0)
        panels.append((f"{name} ({v['note']})", span, events))
    st = res["settings"]
    title = (f"Stage timeline, {res['model']['name']} on {res['backend']}: one 30 s window"
             f"{'s' if st['windows'] > 1 else ''} ×{st['windows']}, median-wall run of each variant")
    base = res["variants"]["baseline"]
    tiles = base["tiles_per_window"]
    return plot_timelines(path, panels, title, zoom_tile=tiles // 3, zoom_ms=10 * base["makespan_per_tile_ms"])
