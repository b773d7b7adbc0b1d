"""The eval report: what was measured, on what, with which code, and how it is printed.

A report is a JSON dict (see Report.to_json) so that it can be written into an
artifact as eval_report.json, read back and compared without posttrain's classes.
The table functions accept either a Report or such a dict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.artifacts import write_json_atomic
from posttrain.evals.probe import Metric, Probe, ProbeResult

REPORT_FORMAT = "posttrain.eval_report"
REPORT_FORMAT_VERSION = 1
RESPONSE_CHARS = 300  # responses are stored truncated: enough to read, small enough to diff


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_sha256(row: dict) -> str:
    """Hash of the prompt as the probe wrote it (canonical JSON of the messages, or the raw prompt).

    Independent of the chat template (hashed separately in the report), so the same
    probe prompts give the same hashes across models and checkpoints.
    """
    if "messages" in row:
        return sha256_text(json.dumps(row["messages"], sort_keys=True, ensure_ascii=False, separators=(",", ":")))
    return sha256_text(row["prompt"])


def _metric_json(m: Metric) -> dict:
    return m.to_json()


def probe_json(probe: Probe, rows: list[dict], completions: list, result: ProbeResult, wall_time_s: float) -> dict:
    """One probe's entry: headline metric, secondary metrics, settings and per-sample records."""
    samples = []
    for i, row in enumerate(rows):
        record = {"id": row.get("id"), "prompt_sha256": prompt_sha256(row)}
        record.update(result.per_sample[i] if i < len(result.per_sample) else {})
        comp = completions[i] if i < len(completions) else None
        if "response" not in record and hasattr(comp, "text"):
            record["response"] = comp.text
        for key in ("response", "response_2"):
            if isinstance(record.get(key), str):
                record[key] = record[key][:RESPONSE_CHARS]
        samples.append(record)
    return {
        "version": probe.version,
        "description": probe.description,
        "metric": result.metric,
        **result.primary.to_json(),
        "higher_is_better": probe.higher_is_better,
        "secondary": {m.name: _metric_json(m) for m in result.secondary},
        "sampling": {**probe.params, "chat": probe.chat},
        "wall_time_s": round(wall_time_s, 3),
        "samples": samples,
    }


@dataclass
class Report:
    header: dict
    probes: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION, **self.header, "probes": self.probes}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())


def _as_dict(report) -> dict:
    return report.to_json() if isinstance(report, Report) else report


def fmt_value(v) -> str:
    if v is None:
        return "n/a"
    if abs(v) < 10:
        return f"{round(v, 3) + 0.0:.3f}"  # + 0.0 turns -0.0 into 0.0
    return f"{round(v, 1) + 0.0:.1f}"


def _rows(report: dict) -> list[tuple[str, str, dict]]:
    """(probe, metric, metric entry) for every headline and secondary metric, in report order."""
    out = []
    for name, p in report["probes"].items():
        out.append((name, p["metric"], p))
        out += [(name, m, e) for m, e in p.get("secondary", {}).items()]
    return out


def _render(header: list[str], body: list[list[str]], right_from: int = 2) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells):
        padded = (c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def format_table(report) -> str:
    """probe | metric | value | 95% CI | n, one line per metric (secondary metrics indented)."""
    report = _as_dict(report)
    body, last = [], None
    for probe, metric, e in _rows(report):
        ci = e.get("ci95")
        ci_text = f"[{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else "-"
        body.append([probe if probe != last else "", metric if probe != last else f"  {metric}",
                     fmt_value(e["value"]), ci_text, str(e["n"])])
        last = probe
    return _render(["probe", "metric", "value", "95% CI", "n"], body)


def compare_table(reports: dict) -> str:
    """Side by side: one row per probe metric, one column per label (e.g. base, sft, dpo).

    With two or more reports a last column gives the change from the first to the last.
    """
    dicts = {label: _as_dict(r) for label, r in reports.items()}
    keys: list[tuple[str, str]] = []
    values: dict[str, dict[tuple[str, str], float | None]] = {}
    for label, rep in dicts.items():
        values[label] = {}
        for probe, metric, e in _rows(rep):
            if (probe, metric) not in keys:
                keys.append((probe, metric))
            values[label][(probe, metric)] = e["value"]
    labels = list(dicts)
    header = ["probe", "metric", *labels]
    with_delta = len(labels) >= 2
    if with_delta:
        header.append(f"change {labels[0]}->{labels[-1]}")
    body = []
    for key in keys:
        cells = [values[label].get(key) for label in labels]
        row = [key[0], key[1], *(fmt_value(v) for v in cells)]
        if with_delta:
            a, b = cells[0], cells[-1]
            row.append("n/a" if a is None or b is None else f"{b - a:+.3f}" if abs(b - a) < 10 else f"{b - a:+.1f}")
        body.append(row)
    return _render(header, body)


def regressions(parent, child) -> list[dict]:
    """Headline metrics where `child` is worse than `parent` by more than the parent's 95% interval.

    Worse is below the interval's low end for a metric where higher is better, above its high end
    otherwise; metrics without a direction or an interval are not judged.
    """
    parent, child = _as_dict(parent), _as_dict(child)
    out = []
    for name, p in parent["probes"].items():
        c = child["probes"].get(name)
        ci, better = p.get("ci95"), p.get("higher_is_better")
        if c is None or not ci or better is None or p["value"] is None or c["value"] is None:
            continue
        if (c["value"] < ci[0]) if better else (c["value"] > ci[1]):
            out.append({"probe": name, "metric": p["metric"], "parent": p["value"], "child": c["value"], "ci95": ci})
    return out
