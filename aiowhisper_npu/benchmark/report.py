"""Markdown rendering of a latency benchmark result (the JSON dict of ``bench/bench_schema.md``)."""

from __future__ import annotations

from typing import Any

__all__ = ["render_markdown"]


def _ms(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x * 1e3:.{nd}f}"


def _f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ratio(r: dict[str, float] | None) -> str:
    if not r or not r.get("p50"):
        return "–"
    return f"{r['p50']:.2f}x ({r['min']:.2f}–{r['max']:.2f})"


def _settings(s: dict[str, Any]) -> str:
    bits = [f"d{s['pipeline_depth']}"]
    if s["lanes"] > 1:
        bits.append(f"{s['lanes']} lanes")
    bits.append("pool" if s["reuse_buffers"] else "fresh bufs")
    if s["dma_batch"] > 1:
        bits.append(f"dma×{s['dma_batch']}")
    return ", ".join(bits)


def _header(res: dict[str, Any]) -> list[str]:
    m, st = res["machine"], res["settings"]
    blas = res.get("blas") or [{}]
    b = blas[0]
    lines = [
        f"## Encoder latency: {res['model']['name']} on `{res['backend']}`, {st['windows']} × 30 s window(s) "
        f"of speech, {st['repeats']} interleaved repeats after {st['warmup']} warm-up(s)",
        "",
        f"- machine: {m.get('cpu_model', '?')}, {m.get('cpus')} CPUs; load average at start/end "
        f"{m.get('load_avg_start')} / {m.get('load_avg_end')}; CPU used by other processes during the run: "
        f"{(m.get('other_processes') or {}).get('other_pct_of_machine', '?')} % of the machine",
        f"- BLAS: {b.get('library', '?')} {b.get('version', '')} core type **{b.get('architecture', '?')}**, "
        f"{b.get('threads', '?')} threads; env {res.get('env') or '{}'}",
        f"- event loop: {res.get('loop_used')}; order: {st['order']} (seed {st['seed']}); "
        f"tile rows {st['tile_rows']}, {res['variants'][next(iter(res['variants']))]['tiles_per_window']} "
        "tiles per window",
        "- span of every timed call: log-mel windows in, hidden states (numpy) out; speed-ups and ratios "
        "are medians of per-round ratios (min–max over rounds)",
        "",
    ]
    return lines


def _variant_table(res: dict[str, Any]) -> list[str]:
    peer = res.get("peer")
    sim = res["backend"] == "sim"
    head = ["variant", "settings", "wall p50 ms", "wall p95 ms", "makespan p50 ms", "30 s window s", "RTF",
            "speed-up vs baseline"]
    if peer:
        head.append("time / ctranslate2")
    if sim:
        head += ["bound ms", "bound / makespan"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for v in res["variants"].values():
        row = [f"`{v['name']}`", _settings(v["settings"]), _ms(v["wall_s"]["p50"]), _ms(v["wall_s"]["p95"]),
               _ms(v["makespan_s"]["p50"]), _f(v["window_s"], 3), f"{v['realtime_factor']:.0f}x",
               _ratio(v["speedup_vs_baseline"])]
        if peer:
            row.append(_ratio(v.get("ratio_to_peer")))
        if sim:
            bd = v.get("bound") or {}
            row += [_ms(bd.get("bound_s")), _f(bd.get("fraction"), 2)]
        out.append("| " + " | ".join(row) + " |")
    if peer:
        rel = peer.get("rel_l2_vs_ours")
        row = [f"ctranslate2 {peer['version']} fp32 (peer)",
               f"{peer['threads']} threads" + (f"; rel. L2 vs ours {rel:.1e}" if rel is not None else ""),
               _ms(peer["wall_s"]["p50"]), _ms(peer["wall_s"]["p95"]), "–", _f(peer["window_s"], 3),
               f"{peer['realtime_factor']:.0f}x", "–", "1.00x"]
        if sim:
            row += ["–", "–"]
        out.append("| " + " | ".join(row) + " |")
    return out


def _stage_table(res: dict[str, Any]) -> list[str]:
    out = ["| variant | host prep | to device | kernel | from device | Σ stage means | makespan / tile | "
           "residual | kernel mean / on device | DMA % | kernel idle ms | kernel-idle stalls n / ms | "
           "dependency waits n / ms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in res["variants"].values():
        s = v["stage_ms"]
        cells = [f"{s[k]['p50_ms']:.3f} / {s[k]['p95_ms']:.3f}" for k in
                 ("host_prep", "to_device", "kernel", "from_device")]
        out.append("| " + " | ".join([
            f"`{v['name']}`", *cells, f"{v['sum_stage_means_ms']:.3f}", f"{v['makespan_per_tile_ms']:.3f}",
            f"{v['residual_ms']:+.3f}", f"{s['kernel']['mean_ms']:.3f} / {v['device_kernel_ms']:.3f}",
            f"{v['dma_overhead_pct']:.1f}", f"{v['kernel_idle_ms']:.1f}",
            f"{v['stalls']['count']:.0f} / {v['stalls']['seconds'] * 1e3:.1f}",
            f"{v['dependency_waits']['count']:.0f} / {v['dependency_waits']['seconds'] * 1e3:.1f}"]) + " |")
    return out


def _op_table(res: dict[str, Any]) -> list[str]:
    names = list(dict.fromkeys(["baseline", res.get("best_pipelined") or "baseline"]))
    ops = res["variants"]["baseline"]["kernel_by_op_ms"]
    head = "| op | tiles / window | " + " | ".join(f"`{n}` mean ms | `{n}` total ms" for n in names) + " |"
    out = [head, "|---|---:|" + "---:|" * (2 * len(names))]
    for op, o in ops.items():
        cells = []
        for n in names:
            k = res["variants"][n]["kernel_by_op_ms"].get(op, {})
            cells += [f"{k.get('mean_ms', 0):.3f}", f"{k.get('total_ms', 0):.1f}"]
        out.append(f"| {op} | {o['tiles_per_window']} | " + " | ".join(cells) + " |")
    return out


def _overhead_table(ov: list[dict[str, Any]]) -> list[str]:
    out = ["| depth | host prep | to device | kernel dispatch (loop) | from device | lane gap between "
           "kernels | kernel launch → seen | wall / tile | ≤ 30 µs per stage |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in ov:
        c = o["stage_cost_us"]
        out.append(f"| {o['depth']} | {c['host_prep']:.1f} | {c['to_device']:.1f} | {c['kernel']:.1f} | "
                   f"{c['from_device']:.1f} | {o['lane_gap_us']:.1f} | {o['kernel_latency_us']:.1f} | "
                   f"{o['wall_us_per_tile']['best']:.1f} | {'yes' if o['meets_goal'] else 'no'} |")
    return out


def _e2e_table(e2e: dict[str, Any]) -> list[str]:
    out = [f"`encode(audio)` on a runtime with {e2e['variant']} (mel + encoder; every clip is one padded 30 s "
           "window):", "",
           "| clip | p50 ms | p95 ms | RTF (p50) |", "|---|---:|---:|---:|"]
    for c in e2e["clips"]:
        out.append(f"| {c['seconds']:.0f} s | {_ms(c['p50_s'])} | {_ms(c['p95_s'])} | "
                   f"{c['seconds'] / c['p50_s']:.0f}x |")
    return out


def render_markdown(res: dict[str, Any]) -> str:
    """The benchmark's stdout report."""
    lines = _header(res) + _variant_table(res)
    if res.get("peer_note"):
        lines += ["", f"Peer: {res['peer_note']}"]
    b = res.get("bf16_vs_fp32")
    if b:
        lines += ["", f"precision='bf16' / fp32 (`lanes_d4_bf16` / `lanes_d4`, median of per-round ratios): "
                      f"**{b['median']:.2f}x** ({b['min']:.2f}–{b['max']:.2f})"]
    lines += ["", "### Per-tile stage times, ms (p50 / p95 over all tiles of all repeats)", "",
              "Σ stage means vs makespan / tile: in the serial variants the stages tile the timeline, so the "
              "residual is the unattributed hand-off between stages; in pipelined variants it is negative "
              "(stages overlap). DMA % = (to + from device) / (to + kernel + from device) busy time.", ""]
    lines += _stage_table(res)
    lines += ["", "Kernel stage by op (launch to completion seen by the pipeline; p50 over repeats of the "
                  "per-call total):", ""] + _op_table(res)
    if res.get("overhead"):
        lines += ["", "### Runtime overhead with a null kernel (CPU device, µs per tile, least-disturbed run)",
                  "", "Per stage: its own time per tile (the kernel stage: event-loop time to launch, hand the "
                  "run to its lane thread and take the completion). Lane gap: device idle between back-to-back "
                  f"{res['overhead'][0]['lane_gap_kernel_ms']:g} ms kernels (median, steady state); at depth 1 "
                  "it is the whole serial round trip by definition. Launch → seen: a null kernel's latency "
                  "through the lane thread and back (hidden by launch-ahead at depth > 1, not a cost).",
                  ""] + _overhead_table(res["overhead"])
    if res.get("e2e"):
        lines += ["", "### End-to-end latency", ""] + _e2e_table(res["e2e"])
    st = res.get("stream") or {}
    if st.get("first_update_s"):
        lines += ["", f"Stream first-update latency ({st.get('how')}): p50 {_ms(st['first_update_s']['p50'])} "
                      f"ms, p95 {_ms(st['first_update_s']['p95'])} ms; first update "
                      f"{_ms(st['first_update_since_start_s']['p50'])} ms after the stream started (p50)"]
    elif st.get("note"):
        lines += ["", f"Stream first-update latency: {st['note']}"]
    chk = res.get("checks") or {}
    if chk:
        lines += ["", "Checks: " + "; ".join(f"{k} = {v}" for k, v in chk.items())]
    return "\n".join(lines) + "\n"
