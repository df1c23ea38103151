"""The evaluation's files: report.html (self-contained), the PNGs, trades.csv, metrics.json."""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.baselines import REFERENCES
from shared.evaluation import plots
from shared.evaluation.checkpoints import Trials
from shared.evaluation.run import AGENT, Evaluation
from shared.evaluation.stats import ExpectancyInterval
from shared.jsonsafe import json_safe
from shared.metrics import (  # the table formatting of format_metrics_table
    TABLE_ROWS,
    format_value,
)

TRADE_COLUMNS = (
    "trade",
    "chunk",
    "side",
    "entry_bar",
    "entry_time",
    "exit_bar",
    "exit_time",
    "entry_price",
    "exit_price",
    "net_pips",
    "amddp1",
    "accumulated_drawdown_pips",
    "bars_held",
)


@dataclass(frozen=True)
class ReportInputs:
    evaluation: Evaluation
    interval: ExpectancyInterval
    verdict: str
    trials: Trials
    checkpoint_path: Path
    checkpoint_sha256: str
    checkpoint_step: int
    seed: int


def _time(ts: np.datetime64) -> str:
    return np.datetime_as_string(ts, unit="s") + "Z"


def column_label(name: str) -> str:
    return f"{name} (reference)" if name in REFERENCES else name


def split_bounds(e: Evaluation) -> dict:
    """Where the split lies: feature rows of the full series, stored bars, times."""
    m, first = e.market, e.split.first_decision(e.window)
    return {
        "name": e.split.name,
        "feature_rows": [e.source_split.start, e.source_split.stop],
        "stored_bars": [m.bar_offset, m.bar_offset + len(m)],
        "first_bar": _time(m.ts[0]),  # the start of the first observation window
        "first_decision": _time(m.ts[first]),
        "last_bar": _time(m.ts[-1]),
        "decisions": e.split.decisions(e.window),
        "window": e.window,
        "chunks": e.chunks,
    }


def write_trades_csv(path: Path, e: Evaluation) -> int:
    """One row per trade of the agent, in exit order; returns the number of trades."""
    t, m = e.results[AGENT].trades, e.market
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRADE_COLUMNS)
        for i in range(len(t)):
            entry, exit_ = int(t.entry_row[i]), int(t.exit_row[i])
            writer.writerow(
                [
                    i + 1,
                    int(t.env[i]),
                    "long" if t.side[i] > 0 else "short",
                    m.bar_offset + entry,
                    _time(m.ts[entry]),
                    m.bar_offset + exit_,
                    _time(m.ts[exit_]),
                    f"{m.close[entry]:.6f}",
                    f"{m.close[exit_]:.6f}",
                    f"{t.net_pips[i]:.3f}",
                    f"{t.amddp1[i]:.3f}",
                    f"{t.accumulated_drawdown[i]:.3f}",
                    exit_ - entry,
                ]
            )
    return len(t)


def metrics_payload(r: ReportInputs) -> dict:
    e = r.evaluation
    return json_safe(
        {
            "symbol": e.market.symbol,
            "pip": e.market.pip,
            "spread_pips": e.market.spread_pips,
            "checkpoint": {"path": str(r.checkpoint_path), "sha256": r.checkpoint_sha256, "step": r.checkpoint_step},
            "split": split_bounds(e),
            "seed": r.seed,
            "n_trials": {"value": r.trials.n, "source": r.trials.source, "detail": r.trials.detail},
            "policies": {name: result.metrics.as_dict() for name, result in e.results.items()},
            "references": list(REFERENCES),
            "expectancy_ci": r.interval.as_dict(),
            "verdict": r.verdict,
        }
    )


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _metrics_table(e: Evaluation) -> str:
    names = list(e.results)
    head = "".join(f"<th>{html.escape(column_label(n))}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{html.escape(format_value(getattr(e.results[n].metrics, field), kind))}</td>" for n in names)
        + "</tr>"
        for field, label, kind in TABLE_ROWS
    )
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}.verdict{font-size:1.3em;font-weight:bold}
.note{color:#555;font-size:0.9em}"""


def render_html(r: ReportInputs, figures: dict[str, bytes]) -> str:
    e, ci, b = r.evaluation, r.interval, split_bounds(r.evaluation)
    esc = html.escape
    ci_text = (
        f"mean {ci.mean:.2f} pips per trade over {ci.trades} trades; {ci.confidence:.0%} interval "
        f"[{ci.low:.2f}, {ci.high:.2f}] pips (percentile bootstrap, {ci.resamples} resamples, seed {ci.seed})"
        if ci.trades
        else "no trades: the expectancy is undefined"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>microzero evaluation: {esc(e.market.symbol)} {esc(b["name"])}</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation of {esc(r.checkpoint_path.name)} on {esc(e.market.symbol)}, {esc(b["name"])} split</h1>
<p>Checkpoint <code>{esc(str(r.checkpoint_path))}</code> (step {r.checkpoint_step}, sha256 <code>{esc(r.checkpoint_sha256)}</code>).<br>
{b["decisions"]} decision bars from {esc(b["first_decision"])} to {esc(b["last_bar"])} (window from {esc(b["first_bar"])});
feature rows [{b["feature_rows"][0]}, {b["feature_rows"][1]}) of the series, stored bars [{b["stored_bars"][0]}, {b["stored_bars"][1]}).
Only these bars were given to the agent, the baselines and the oracle (their features are causal: each summarises its bar and earlier bars, as live trading would see them). Spread {e.market.spread_pips:g} pips per round trip,
{e.chunks} contiguous chunk(s) played in parallel (each starts flat and is closed at its end), random-baseline seed {r.seed}.</p>
<h2 id="verdict">Verdict</h2>
<p class="verdict">{esc(r.verdict)}</p>
<h2 id="confidence-interval">Expectancy confidence interval</h2>
<p>{esc(ci_text)}.</p>
<h2 id="equity">Equity curve</h2>
{_img(figures["equity"], "equity curves")}
<p class="note">Cumulative net pips of the agent and every baseline. The oracle (perfect foresight) is a
reference ceiling, not a strategy: it is left off this chart because its scale would flatten the others;
see its column in the metric table.</p>
<h2 id="drawdown">Drawdown</h2>
{_img(figures["drawdown"], "agent drawdown")}
<h2 id="trade-histogram">Trade P&amp;L histogram</h2>
{_img(figures["trade_histogram"], "histogram of net pips per trade")}
<h2 id="action-frequencies">Action frequencies</h2>
{_img(figures["actions"], "share of actions over time")}
<h2 id="metrics">Metric table</h2>
{_metrics_table(e)}
<h2 id="n-trials">Number of trials (n_trials)</h2>
<p>The agent's deflated Sharpe uses n_trials = {r.trials.n}, from the {esc(r.trials.source)}:
{esc(r.trials.detail)}. Baselines count one trial each (they were not selected among candidates).</p>
</body></html>
"""


def write_report(out_dir: Path, r: ReportInputs, block: int) -> dict[str, Path]:
    """Write every file into `out_dir`; returns their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    e = r.evaluation
    ts = e.market.ts[e.decision_rows]
    curves = {name: res.bar_pnl for name, res in e.results.items() if name not in REFERENCES}
    agent = e.results[AGENT]
    figures = {
        "equity": plots.equity_png(ts, curves),
        "drawdown": plots.drawdown_png(ts, agent.bar_pnl),
        "trade_histogram": plots.trade_histogram_png(agent.trades.net_pips),
        "actions": plots.actions_png(ts, agent.actions, block),
    }
    paths = {name: out_dir / f"{name}.png" for name in figures}
    for name, png in figures.items():
        paths[name].write_bytes(png)
    paths["trades"] = out_dir / "trades.csv"
    write_trades_csv(paths["trades"], e)
    paths["metrics"] = out_dir / "metrics.json"
    paths["metrics"].write_text(json.dumps(metrics_payload(r), indent=2, allow_nan=False) + "\n")
    paths["report"] = out_dir / "report.html"
    paths["report"].write_text(render_html(r, figures), encoding="utf-8")
    return paths
