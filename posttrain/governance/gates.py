"""Release gates: conditions a recipe stage's results must meet before its model may go further.

Declared per stage in a recipe (docs/governance.md, "Release gates"):

    - name: eval_sft
      stage: eval
      gates:
        - {probe: harmful_refusal, metric: refusal_rate, min: 0.95}           # an absolute threshold
        - {probe: gold_reward, above: {stage: eval_base, times: 1.0}}          # relative to an earlier eval
        - {regression: parent}                 # no probe worse than the parent's eval beyond its 95% interval
        - {regression: parent, margin: 0.02, probes: [harmful_refusal], fatal: false}
    - name: reward
      stage: reward
      gates: [{metric: heldout_accuracy, min: 0.9}]   # a training stage gates its own recorded metrics

An eval stage's gates are about the model it evaluated; a training stage's about its artifact. Each
outcome goes into the stage's eval_report.json or provenance.json ("gates"), the run's ledger and the
model's lineage ledger (`gate` entries) and its card. A failed gate stops the run (nothing published or
released) unless it is `fatal: false`, per gate or for the whole recipe (`gates: {fatal: false}`): then
it is reported and the run goes on. `posttrain release` refuses a model with any failed gate unless
forced, fatal or not: `fatal` decides whether the run stops, not whether the model is fit to release.

This module checks the declarations and evaluates them (pure functions of reports and metrics);
governance.gate_run is what a recipe run does with them.
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass

from posttrain.errors import ConfigError, PosttrainError

OPS = {"min": (">=", operator.ge), "max": ("<=", operator.le), "above": (">", operator.gt), "below": ("<", operator.lt)}
THRESHOLD_KEYS = ("name", "probe", "metric", *OPS, "fatal")
REGRESSION_KEYS = ("name", "regression", "margin", "probes", "fatal")
RELATIVE_KEYS = ("stage", "times", "plus")


@dataclass(frozen=True)
class Gate:
    name: str
    fatal: bool
    probe: str | None = None  # eval stages: the probe; None: a training stage's own metric, or a regression gate
    metric: str | None = None
    op: str | None = None  # min, max, above, below
    threshold: float | None = None
    relative: tuple | None = None  # (eval stage, "times" or "plus", number): the threshold is that stage's value
    regression: bool = False
    margin: float | None = None  # regression: worse by more than this (None: beyond the parent's 95% interval)
    probes: tuple[str, ...] | None = None  # regression: these probes only (None: every one with a direction)


# ---------------------------------------------------------------- checking a recipe's gates


def _unknown(where: str, key, allowed) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'.{hint} Allowed here: {', '.join(allowed)}.")


def _number(where: str, key: str, value, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}.")
    if low is not None and value < low:
        raise ConfigError(f"{where}: '{key}' must be >= {low}, got {value!r}.")
    return float(value)


def _probe_metrics(where: str, probe: str) -> tuple[str, ...]:
    from posttrain.evals.probe import get_probes

    try:
        p = get_probes([probe])[0]
    except PosttrainError as e:
        raise ConfigError(f"{where}: {e}") from None
    return (p.metric, *p.secondary)


def _measured(where: str, probe: str, probes: list[str] | None, by: str) -> None:
    if probes is not None and probe not in probes:
        raise ConfigError(f"{where}: probe '{probe}' is not among the probes {by} runs ({', '.join(probes)}); add it "
                          f"to its `probes` or gate on one of those.")


def parse_gates(where: str, value, *, kind: str, probes: list[str] | None = None, earlier: dict | None = None,
                metrics: tuple[str, ...] = (), default_fatal: bool = True) -> list[Gate]:
    """The gates of one stage entry, checked: every key known, every probe and metric one the stage measures.

    kind "eval": probe gates and regressions (probes: the stage's probes, None = all; earlier: name -> probes of
    the earlier eval stages, for relative thresholds); otherwise a training stage's own `metrics`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'gates' must be a list of gates, e.g. gates: [{{probe: harmful_refusal, "
                          f"min: 0.95}}, {{regression: parent}}], got {value!r}.")
    out: list[Gate] = []
    for i, g in enumerate(value, 1):
        at = f"{where}, gate {i}"
        if not isinstance(g, dict):
            raise ConfigError(f"{at}: a gate is a mapping, e.g. {{probe: harmful_refusal, min: 0.95}}, got {g!r}.")
        if isinstance(g.get("name"), str) and g["name"]:
            at = f"{at} ('{g['name']}')"
        gate = _parse_one(at, g, kind, probes, earlier or {}, metrics, default_fatal)
        if any(o.name == gate.name for o in out):
            raise ConfigError(f"{at}: two gates of this stage are named '{gate.name}'; give each a unique name.")
        out.append(gate)
    return out


def _parse_one(at, g, kind, probes, earlier, metrics, default_fatal) -> Gate:
    regression = "regression" in g
    allowed = REGRESSION_KEYS if regression else THRESHOLD_KEYS
    for key in g:
        if key not in allowed:
            raise _unknown(at, key, allowed)
    if "name" in g and (not isinstance(g["name"], str) or not g["name"].strip()):
        raise ConfigError(f"{at}: 'name' must be a non-empty string, got {g['name']!r}.")
    fatal = g.get("fatal", default_fatal)
    if not isinstance(fatal, bool):
        raise ConfigError(f"{at}: 'fatal' must be true or false, got {fatal!r}.")
    if regression:
        return _parse_regression(at, g, kind, probes, fatal)
    ops = [k for k in OPS if k in g]
    if len(ops) != 1:
        raise ConfigError(f"{at}: a threshold gate needs exactly one of min, max, above or below (got "
                          f"{', '.join(ops) or 'none'}); or write {{regression: parent}} for a regression gate.")
    op = ops[0]
    if kind == "eval":
        probe = g.get("probe")
        if not isinstance(probe, str) or not probe:
            raise ConfigError(f"{at}: needs 'probe' (the probe whose metric it checks), e.g. {{probe: harmful_refusal, "
                              f"{op}: ...}}.")
        known = _probe_metrics(at, probe)
        _measured(at, probe, probes, "this stage")
        metric = g.get("metric", known[0])
        if metric not in known:
            raise ConfigError(f"{at}: probe '{probe}' has no metric '{metric}'; its metrics: {', '.join(known)}.")
    else:
        if "probe" in g:
            raise ConfigError(f"{at}: stage kind '{kind}' measures no probes: gate its own metrics ({', '.join(metrics)}) "
                              f"here, and probes on the eval stage that follows it.")
        probe, metric = None, g.get("metric")
        if metric not in metrics:
            raise ConfigError(f"{at}: 'metric' must be one that stage kind '{kind}' records: {', '.join(metrics)} "
                              f"(got {metric!r}); gate probe results on an eval stage.")
    relative, threshold = None, g[op]
    if isinstance(threshold, dict):
        if kind != "eval":
            raise ConfigError(f"{at}: a threshold relative to an eval stage is for eval stages' gates; give a number.")
        relative = _parse_relative(f"{at}, {op}", threshold, probe, earlier)
        threshold = None
    else:
        threshold = _number(at, op, threshold)
    name = g.get("name") or _default_name(probe, metric, op, threshold, relative)
    return Gate(name.strip(), fatal, probe, metric, op, threshold, relative)


def _parse_relative(at, ref: dict, probe: str, earlier: dict) -> tuple:
    for key in ref:
        if key not in RELATIVE_KEYS:
            raise _unknown(at, key, RELATIVE_KEYS)
    stage = ref.get("stage")
    if stage not in earlier:
        raise ConfigError(f"{at}: 'stage' must name an earlier eval stage whose value of the same probe and metric "
                          f"sets the threshold (earlier eval stages: {', '.join(earlier) or 'none'}), got {stage!r}.")
    _measured(at, probe, earlier[stage], f"stage '{stage}'")
    if "times" in ref and "plus" in ref:
        raise ConfigError(f"{at}: give 'times' (a factor) or 'plus' (an offset), not both.")
    how = "plus" if "plus" in ref else "times"
    return stage, how, _number(at, how, ref.get(how, 1.0))


def _parse_regression(at, g, kind, probes, fatal) -> Gate:
    if kind != "eval":
        raise ConfigError(f"{at}: a regression gate compares probe results with the parent's: declare it on the eval "
                          f"stage that measures this model.")
    if g["regression"] != "parent":
        raise ConfigError(f"{at}: 'regression' must be 'parent' (the evaluated model's parent), got {g['regression']!r}.")
    margin = _number(at, "margin", g["margin"], low=0.0) if g.get("margin") is not None else None
    only = g.get("probes")
    if only is not None:
        if not isinstance(only, list) or not only or not all(isinstance(p, str) for p in only):
            raise ConfigError(f"{at}: 'probes' must be a non-empty list of probe names, got {only!r}.")
        for p in only:
            _probe_metrics(at, p)
            _measured(at, p, probes, "this stage")
        only = tuple(only)
    bound = f"margin {margin:g}" if margin is not None else "95% interval"
    name = g.get("name") or f"no regression against the parent ({bound})"
    return Gate(name.strip(), fatal, regression=True, margin=margin, probes=only)


def _default_name(probe, metric, op, threshold, relative) -> str:
    what = f"{probe} {metric}" if probe else metric
    if relative:
        stage, how, x = relative
        goal = f"{stage}'s" + (f" + {x:g}" if how == "plus" else "" if x == 1 else f" x {x:g}")
    else:
        goal = f"{threshold:g}"
    return f"{what} {OPS[op][0]} {goal}"


# ---------------------------------------------------------------- evaluating them


def metric_of(probes: dict, probe: str, metric: str) -> dict | None:
    """{value, ci95, n} of a probe's metric in a report's probes, or None."""
    p = probes.get(probe)
    if not isinstance(p, dict):
        return None
    if p.get("metric") == metric:
        return p
    return (p.get("secondary") or {}).get(metric)


def _exact(x: float) -> float:
    """A threshold computed from two numbers, without float noise (0.95 - 0.05 is 0.9, not 0.8999999999999999)."""
    return round(x, 12)


def _threshold_result(gate: Gate, value, threshold, **extra) -> dict:
    symbol, compare = OPS[gate.op]
    # Both sides at the threshold's precision: a value equal to a computed threshold (38/75 against 38/75 x 1) passes.
    passed = value is not None and threshold is not None and compare(_exact(value), threshold)
    out = {"name": gate.name, "probe": gate.probe, "metric": gate.metric, "value": value, "threshold": threshold,
           "op": symbol, "passed": bool(passed), "fatal": gate.fatal, **extra}
    if value is None:
        out["reason"] = "not measured"
    elif threshold is None:
        out["reason"] = "threshold not measured"
    return out


def evaluate_metrics(gates: list[Gate], metrics: dict) -> list[dict]:
    """A training stage's gates on its own metrics (provenance metrics)."""
    out = []
    for g in gates:
        v = metrics.get(g.metric)
        out.append(_threshold_result(g, v if isinstance(v, (int, float)) and not isinstance(v, bool) else None,
                                     g.threshold))
    return out


def evaluate_report(gates: list[Gate], report: dict, parent: dict | None, parent_label: str | None,
                    reports: dict[str, dict]) -> list[dict]:
    """An eval stage's gates on its report. parent: the parent's merged probe results (None: no eval of it);
    reports: earlier eval stages' reports by name, for relative thresholds."""
    probes = report.get("probes") or {}
    out: list[dict] = []
    for g in gates:
        if g.regression:
            out += _regressions(g, probes, parent, parent_label)
            continue
        m = metric_of(probes, g.probe, g.metric)
        value = m.get("value") if m else None
        extra, threshold = {}, g.threshold
        if g.relative:
            stage, how, x = g.relative
            ref = metric_of((reports.get(stage) or {}).get("probes") or {}, g.probe, g.metric)
            ref_value = ref.get("value") if ref else None
            threshold = None if ref_value is None else _exact(ref_value + x if how == "plus" else ref_value * x)
            extra = {"relative_to": stage, how: x, "reference": ref_value}
        out.append(_threshold_result(g, value, threshold, **extra, **({"ci95": m.get("ci95")} if m else {})))
    return out


def _regressions(g: Gate, child: dict, parent: dict | None, label: str | None) -> list[dict]:
    base = {"name": g.name, "fatal": g.fatal, "parent_model": label}
    if not parent:
        return [{**base, "probe": None, "metric": None, "value": None, "threshold": None, "passed": False,
                 "reason": f"no eval of the parent ({label or 'none'}) in the ledgers: evaluate it before this stage"}]
    out = []
    for probe in g.probes or list(child):
        c, p = child.get(probe) or {}, parent.get(probe) or {}
        better = c.get("higher_is_better", p.get("higher_is_better"))
        if g.probes is None and (better is None or not p):
            continue  # a metric without a direction (response length) or one the parent was not measured on
        value, ref, ci = c.get("value"), p.get("value"), p.get("ci95")
        if value is None or ref is None or better is None or (g.margin is None and not ci):
            out.append({**base, "probe": probe, "metric": c.get("metric") or p.get("metric"), "value": value,
                        "threshold": None, "passed": False, "parent": ref, "reason": "not measured on both"})
            continue
        if g.margin is not None:
            bound = _exact(ref - g.margin if better else ref + g.margin)
        else:
            bound = ci[0] if better else ci[1]
        passed = value >= bound if better else value <= bound
        out.append({**base, "probe": probe, "metric": c.get("metric"), "value": value, "threshold": bound,
                    "op": ">=" if better else "<=", "passed": bool(passed), "parent": ref, "parent_ci95": ci,
                    **({"margin": g.margin} if g.margin is not None else {})})
    if not out:
        out.append({**base, "probe": None, "metric": None, "value": None, "threshold": None, "passed": False,
                    "reason": "no probe with a direction was measured on both the model and its parent"})
    return out


# ---------------------------------------------------------------- in words


def show_number(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def goal(r: dict) -> str:
    """What a gate outcome needed: '>= 0.950', '> 0.412 (eval_sft's 0.412 x 1)', '>= 0.770 (parent 0.900, ...)'."""
    text = f"{r.get('op', '')} {show_number(r.get('threshold'))}".strip()
    if r.get("relative_to"):
        text += f" ({r['relative_to']}'s {show_number(r.get('reference'))}" + (
            f" + {r['plus']:g})" if "plus" in r else f" x {r.get('times', 1):g})")
    elif r.get("parent") is not None:
        bound = f"margin {r['margin']:g}" if "margin" in r else "its 95% interval"
        text += f" (parent {show_number(r['parent'])}, {bound})"
    return text


def describe(r: dict) -> str:
    """One gate outcome in words, with both numbers."""
    what = " ".join(x for x in (r.get("probe"), r.get("metric")) if x) or "-"
    verdict = "passed" if r.get("passed") else "FAILED" + ("" if r.get("fatal", True) else " (not fatal)")
    why = f" ({r['reason']})" if r.get("reason") else ""
    return f"gate '{r.get('name')}': {what} {show_number(r.get('value'))}, needs {goal(r)}: {verdict}{why}"


def failed(results: list[dict], fatal_only: bool = False) -> list[dict]:
    return [r for r in results if not r.get("passed") and (r.get("fatal", True) or not fatal_only)]
