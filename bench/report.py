"""The benchmark's outputs: the JSON document, the latency plot (matplotlib, optional group ``bench``) and the
printed summary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def write_json(doc: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


def plot_latency(doc: Mapping[str, Any], path: Path) -> str | None:
    """Latency percentiles (command → terminal view) and completed orders/s against the offered rate.

    Returns why no plot was drawn (no pipeline steps, matplotlib missing), or None once the PNG is written.
    """
    steps = (doc.get("pipeline") or {}).get("steps") or []
    if not steps:
        return "no pipeline steps to plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install --group pyproject.toml:bench)"
    offered = [float(s["offered_orders_per_s"]) for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        values = [s["latency_view_ms"][key] for s in steps]
        ax.plot(offered, [float("nan") if v is None else v for v in values], style, label=f"{key} command → view")
    ax.set_xlabel("offered orders/s (open loop)")
    ax.set_ylabel("latency to terminal view (ms)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(0, max(offered) * 1.05)
    ax.grid(True, which="both", alpha=0.3)
    achieved_ax = ax.twinx()
    achieved_ax.plot(offered, [float(s["achieved_orders_per_s"]) for s in steps], "k.-", alpha=0.5,
                     label="completed orders/s")  # fmt: skip
    achieved_ax.plot(offered, offered, color="grey", linewidth=0.8, alpha=0.4, label="offered = completed")
    achieved_ax.set_ylabel("completed orders/s")
    achieved_ax.set_ylim(0, max(offered) * 1.1)
    lines = ax.get_legend_handles_labels()
    more = achieved_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    meta = doc.get("meta", {})
    machine = meta.get("machine", {})
    ax.set_title(
        f"order pipeline: latency vs offered rate ({meta.get('mode')}, {machine.get('cores')} cores, "
        f"{str(meta.get('started_at', ''))[:10]})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def print_summary(doc: Mapping[str, Any], console: Console) -> None:
    """The figures that matter, as tables."""
    ceilings = Table(title="ceilings (one broker, everything on this machine)")
    for column in ("what", "messages/s", "MB/s", "note"):
        ceilings.add_column(column, justify="left" if column in ("what", "note") else "right")
    raw = doc.get("raw") or {}
    if raw:
        size = raw.get("record_bytes", {})
        note = f"{size.get('total')} B records ({size.get('value')} B Avro value)"
        ceilings.add_row("confluent-kafka produce", _fmt(raw["produce"]["messages_per_s"]),
                         _fmt(raw["produce"]["mb_per_s"], 1), note)  # fmt: skip
        ceilings.add_row("confluent-kafka consume", _fmt(raw["consume"]["messages_per_s"]),
                         _fmt(raw["consume"]["mb_per_s"], 1), "batched consume()")  # fmt: skip
        perf = raw.get("perf_test") or {}
        if "messages_per_s" in perf:
            ceilings.add_row("kafka-producer-perf-test", _fmt(perf["messages_per_s"]), _fmt(perf["mb_per_s"], 1),
                             f"inside the broker container, p99 {_fmt(perf.get('p99_ms'))} ms")  # fmt: skip
        elif perf:
            ceilings.add_row("kafka-producer-perf-test", "-", "-", str(perf.get("error", ""))[:60])
    faust = doc.get("faust") or {}
    for mode, figures in (faust.get("variants") or {}).items():
        kind = {"acked": " (await each ack)", "batched": " (batches, acks awaited together)"}
        what = "Faust pass-through" + kind.get(mode, " (bare)")
        ceilings.add_row(what, _fmt(figures.get("events_per_s")), "-", f"{figures.get('events')} events, 1 agent")
    pipeline = doc.get("pipeline") or {}
    if pipeline.get("steps"):
        ceilings.add_row("pipeline, busiest worker", _fmt(pipeline.get("busiest_worker_events_per_s")), "-",
                         f"at {_fmt(pipeline.get('saturation_orders_per_s'), 1)} orders/s, "
                         f"{_fmt(pipeline.get('events_per_order'), 1)} events per order")  # fmt: skip
    console.print(ceilings)

    if pipeline.get("steps"):
        steps = Table(title="pipeline: open-loop steps (latency = command → terminal order view in Redis)")
        for column in ("offered/s", "completed/s", "p50 ms", "p95 ms", "p99 ms", "busiest worker ev/s", "note"):
            steps.add_column(column, justify="right" if column != "note" else "left")
        for step in pipeline["steps"]:
            lat = step["latency_view_ms"]
            note = "saturated" if step["saturated"] else ""
            if step["settled"] < step["placed"]:
                note += f" ({step['placed'] - step['settled']} not settled)"
            steps.add_row(_fmt(step["offered_orders_per_s"], 1), _fmt(step["achieved_orders_per_s"], 1),
                          _fmt(lat["p50"]), _fmt(lat["p95"]), _fmt(lat["p99"]),
                          _fmt(step["busiest_group_events_per_s"]), note)  # fmt: skip
        console.print(steps)

    codec = doc.get("codec") or {}
    if codec:
        table = Table(title=f"codec: Confluent wire format, ops/s ({codec['iterations']} iterations)")
        for column in ("record", "variant", "encode/s", "decode/s", "encode µs", "decode µs"):
            table.add_column(column, justify="left" if column in ("record", "variant") else "right")
        for record, figures in codec["records"].items():
            for variant, f in figures["variants"].items():
                table.add_row(record, variant, _fmt(f["encode"]["per_s"]), _fmt(f["decode"]["per_s"]),
                              _fmt(f["encode"]["us_per_op"], 1), _fmt(f["decode"]["us_per_op"], 1))  # fmt: skip
        console.print(table)

    query = doc.get("query") or {}
    if query.get("endpoints"):
        table = Table(title=f"gateway reads ({query['connections']} connections, closed loop)")
        for column in ("endpoint", "requests/s", "p50 ms", "p99 ms", "non-200", "gateway cores", "client cores"):
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        for name, f in query["endpoints"].items():
            bad = f["requests"] - f["ok"] + f["errors"]
            table.add_row(name, _fmt(f["requests_per_s"]), _fmt(f["latency_ms"]["p50"], 1),
                          _fmt(f["latency_ms"]["p99"], 1), str(bad), _fmt(f.get("gateway_cores"), 2),
                          _fmt(f.get("client_cores"), 2))  # fmt: skip
        console.print(table)
        for name, f in query["endpoints"].items():
            if f.get("profile"):
                parts = ", ".join(f"{b['part']} {b['share']:.0%}" for b in f["profile"]["buckets"][:5])
                console.print(f"profile gateway ({name}): {parts}")

    _print_history(doc, console)

    ratios = doc.get("ratios") or {}
    table = Table(title="ratios")
    table.add_column("ratio")
    table.add_column("value", justify="right")
    labels = {
        "pipeline_over_faust": "pipeline busiest worker events/s ÷ Faust ceiling (bare)",
        "faust_over_raw": "Faust ceiling ÷ raw client ceiling (min of produce, consume)",
        "pipeline_over_raw": "pipeline busiest worker events/s ÷ raw client ceiling",
        "faust_acked_over_faust": "Faust awaiting each ack ÷ Faust bare",
        "pipeline_over_faust_acked": "pipeline busiest worker events/s ÷ Faust awaiting each ack",
        "faust_batched_over_acked": "Faust batches awaiting acks together ÷ Faust awaiting each ack",
    }
    for key, label in labels.items():
        value = ratios.get(key)
        table.add_row(label, "-" if value is None else f"{value:.3g}")
    console.print(table)

    profile = doc.get("profile") or {}
    for worker, figures in (profile.get("workers") or {}).items():
        parts = ", ".join(f"{b['part']} {b['share']:.0%}" for b in figures["profile"]["buckets"][:5])
        console.print(
            f"profile {worker}: {_fmt(figures.get('cores'), 2)} cores, "
            f"{_fmt(figures.get('cpu_ms_per_event'), 2)} CPU ms/event; {parts}"
        )


def _print_history(doc: Mapping[str, Any], console: Console) -> None:
    """The history stage's table: each step for a new key against a long-standing one (nothing if not run)."""
    history = doc.get("history") or {}
    if not history:
        return
    table = Table(title=f"history: {history['orders']} orders of one customer, {history['additions']} additions "
                        f"of one SKU (median µs over {history['samples']} turns)")  # fmt: skip
    for column in ("step", "new key", "long-standing key", "ratio"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for name in ("place_order", "reserve_stock", "add_stock"):
        us = history[f"{name}_us"]
        table.add_row(name, _fmt(us["new"], 1), _fmt(us["long"], 1), _fmt(history[f"{name}_ratio"], 3))
    console.print(table)
    console.print(f"largest table value: {history['largest_value_bytes']} B ({history['largest_value_key']})")
