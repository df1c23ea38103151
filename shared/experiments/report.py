"""``results.md`` and ``results.json`` of an experiment: one row per variant and baseline."""

from __future__ import annotations

import json
from pathlib import Path

from shared.experiments.variants import SMALL

COLUMNS = (
    "row",
    "runs",
    "total pips: mean [95% t-CI]",
    "expectancy pips/trade: mean [95% t-CI]",
    "SQN: mean [95% t-CI]",
    "trades/run",
    "pooled-trade expectancy [95% bootstrap CI] (trades)",
    "env steps/run",
    "train s/run",
)

NOTES = (
    "Greedy backtest of the whole validation split (16 contiguous chunks, spread paid on every entry); "
    "the test split is not used. t-CI: Student-t interval of the per-seed values (n = runs; with 3 runs "
    "t = 4.30, so the interval is wide). The pooled-trade bootstrap resamples every trade of every run "
    "(10,000 resamples): it reflects trade-to-trade noise only, not seed-to-seed variation. "
    "Reference rows (`microzero backtest --policy NAME`): random, one run per seed; oracle (perfect foresight, "
    "the ceiling), momentum (60-bar sign), range (long in the bottom 30 % of the 60-bar range, short in the top "
    "30 %), hour (the side of what the coming bar's hour made over the last 20 days) and buy_hold (long in every "
    "chunk) are deterministic, one run each. "
    "Env steps: environment transitions played while training (MuZero: self-play incl. warm-up; "
    "PPO: its own rollouts)."
)


def _num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _interval(d: dict, digits: int = 1, runs: int | None = None) -> str:
    """ "mean [low, high]"; "(n=k)" added when fewer values than runs went in (a run
    without trades has no expectancy or SQN)."""
    if d["mean"] is None:
        return "—"
    if d["low"] is None:
        return f"{_num(d['mean'], digits)} (n={d['n']})"
    text = f"{_num(d['mean'], digits)} [{_num(d['low'], digits)}, {_num(d['high'], digits)}]"
    return text + (f" (n={d['n']})" if runs is not None and d["n"] < runs else "")


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        s = row["summary"]
        name = row["name"] if row["kind"] == "variant" else f"*{row['name']}*"
        cells = [
            name,
            str(s["runs"]),
            _interval(s["total_pips"]),
            _interval(s["expectancy"], 2, s["runs"]),
            _interval(s["sqn"], 2, s["runs"]),
            _num(s["trades_per_run"]),
            f"{_interval(s['pooled_expectancy'], 2)} ({s['pooled_expectancy']['n']})",
            _num(s.get("env_steps_per_run"), 0),
            _num(s.get("train_s_per_run"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _decisions(rows: list[dict]) -> str:
    """The validation bars each row was scored on: one number, or one per row when the
    window (which sets where the split's first decision is) differs between rows."""
    counts = {
        row["name"]: row["summary"]["decisions"] for row in rows if row["kind"] == "variant"
    }  # baselines: the same per window
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values())):,}"
    return "(" + ", ".join(f"{name}: {n:,}" for name, n in counts.items()) + ")"


def _reused(rows: list[dict]) -> str:
    runs = [r for row in rows if row["kind"] == "variant" for r in row["runs"]]
    reused = sum(1 for r in runs if r.get("reused"))
    if reused == len(runs):
        return " (every run was reused: this invocation only rebuilt the table)"
    return f" ({reused} of {len(runs)} runs reused from an earlier invocation or copied)" if reused else ""


def _compute(rows: list[dict]) -> str:
    """Training + evaluation seconds summed over the runs trained for this table (stored
    per run, so the figure survives re-runs that only reuse finished runs)."""
    runs = [r for row in rows if row["kind"] == "variant" for r in row["runs"]]
    own = [r["run_s"] for r in runs if not r.get("copied_from") and r.get("run_s") is not None]
    copied = sum(1 for r in runs if r.get("copied_from"))
    text = f"Compute: {sum(own):,.0f} s of training and evaluation over {len(own)} runs"
    return text + (f" ({copied} more copied from identical runs, see results.json)." if copied else ".")


def write_results(out_dir: Path, report: dict) -> str:
    """Write results.json and results.md under `out_dir`; return the markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    md = table(report["rows"])
    budget = report["budget"]
    budget_text = f"{budget['steps']} learner steps" if budget["steps"] else f"{budget['minutes']} minutes"
    lines = [
        f"# Experiment `{report['experiment']}` on {report['symbol']}",
        "",
        report["question"],
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Budget per run: {budget_text}; seeds {', '.join(map(str, report['seeds']))}; "
        f"{_decisions(report['rows'])} validation decision bars; device {report['device']}. "
        f"Wall time of this invocation: {report['wall_s']:.0f} s{_reused(report['rows'])}. {_compute(report['rows'])}",
        "",
        md,
        "",
        NOTES,
    ]
    if report["small"]:
        lines += ["", f"`--small` preset (applied before each variant's overrides): `{json.dumps(SMALL)}`"]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return md
