"""The report page: one HTML file that needs no network.

CSS is inline, images are data: URIs, the pipeline map is inline SVG, and a Content-Security-Policy
allows nothing else (no request can leave the page). Every text that comes from the run's files is
HTML-escaped. The only script marks the page once it has loaded (`<html data-loaded="ok">`, or
which images failed to decode, also logged as a console error), which the rendering test checks.
"""

from __future__ import annotations

import base64
import hashlib
import time
from html import escape

from posttrain import __version__
from posttrain.evals.report import fmt_value
from posttrain.reporting import lineage
from posttrain.reporting.plots import curves_png
from posttrain.reporting.rundir import Metric, Run, Stage
from posttrain.reporting.svg import legend, pipeline_svg

GENERATOR = "posttrain report"  # in <meta name="generator">: how `posttrain report` knows a file it may replace
SAMPLES_PER_PROBE = 3
MAX_IMAGE_BYTES = 10 * 2**20

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;margin:0;background:#f8fafc}
main{max-width:1500px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:34px 0 8px;border-bottom:2px solid #cbd5e1;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#475569}nav a{margin-right:14px}a{color:#1d4ed8}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px}th,td{border:1px solid #cbd5e1;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f1f5f9;font-weight:600}td.num{text-align:right;white-space:nowrap}
.ci{color:#64748b;font-size:12px}.better{background:#dcfce7}.worse{background:#fee2e2}.beyond{background:#fef9c3}
.d-better{color:#15803d;font-weight:600}.d-worse{color:#b91c1c;font-weight:600}.small{font-size:12px;color:#475569}
.scroll{overflow-x:auto;background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px}
svg.pipeline{max-width:100%;height:auto}svg text{font:13px system-ui,sans-serif}svg text.n{font-weight:600}
svg tspan.k{font-weight:400;fill:#475569;font-size:11px}svg text.d{font:11px ui-monospace,monospace;fill:#334155}
.legend{margin-right:16px;font-size:12px;color:#334155;white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;
max-height:14em;overflow:auto}td.sample{min-width:180px;max-width:360px}.prompt{background:#f8fafc}
.figs{display:flex;flex-wrap:wrap;gap:0 14px}figure{margin:8px 0 10px;background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#475569;margin-top:4px}
.problems{background:#fef2f2;border:1px solid #fecaca;border-radius:6px;padding:6px 14px}
.pass{color:#15803d;font-weight:600}.fail{color:#b91c1c;font-weight:700}details{margin:6px 0}
summary{cursor:pointer;font-weight:600}
"""

SCRIPT = """addEventListener("load", function () {
  var bad = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (!im.complete || im.naturalWidth === 0) bad.push(im.alt);
  }
  document.documentElement.setAttribute("data-loaded", bad.length ? "broken-images" : "ok");
  if (bad.length) console.error("posttrain report: images failed to decode: " + bad.join(", "));
});"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _v(v) -> str:
    if isinstance(v, float):
        return fmt_value(v)
    return escape(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))


def _img(run: Run, data: bytes | None, alt: str, problems: list[str], where=None) -> str:
    if data is None and where is not None:
        run.reads.append(where)
        try:
            data = where.read_bytes() if where.stat().st_size <= MAX_IMAGE_BYTES else None
        except OSError as e:
            problems.append(f"{where}: cannot be read ({e.strerror or e})")
            return ""
        if data is None or not data.startswith(b"\x89PNG\r\n\x1a\n"):
            problems.append(f"{where}: not a PNG image (or larger than 10 MB); left out")
            return ""
    b64 = base64.b64encode(data).decode()
    return f'<img src="data:image/png;base64,{b64}" alt="{escape(alt)}">'


# ---------------------------------------------------------------- sections


def _pipeline(run: Run) -> str:
    links = lineage.edges(run)
    all_nodes = lineage.nodes(run, links)
    rows = []
    for st in run.stages:
        came = [e for e in links if e.dst == st.name]
        origin = ", ".join(f"{escape(e.src.removeprefix('ext:'))} <span class=small>({escape(e.label)})</span>"
                           for e in came) or "-"
        facts = "; ".join(f"{escape(k)}: {_v(v)}" for k, v in st.facts.items() if k != "model")
        rows.append(f"<tr><td><b>{escape(st.name)}</b></td><td>{escape(st.kind)}</td>"
                    f"<td><code>{escape(st.artifact_id or '-')}</code></td><td>{origin}</td><td>{facts}</td></tr>")
    problems = [p for st in run.stages for p in st.problems]
    warn = ("<div class=problems><p><b>Parts of this run could not be read:</b></p><ul>"
            + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul></div>") if problems else ""
    return (f'<h2 id="pipeline">Pipeline</h2>{warn}<div class="scroll">{pipeline_svg(all_nodes, links)}</div>'
            f"<p>{legend()}</p><table><tr><th>stage</th><th>kind</th><th>artifact id</th><th>from</th>"
            f"<th>facts</th></tr>{''.join(rows)}</table>")


def _evals(run: Run) -> list[Stage]:
    return [s for s in run.stages if s.kind == "eval" and s.probes]


def _metric_of(st: Stage | None, probe: str, name: str) -> Metric | None:
    if st is None or probe not in st.probes:
        return None
    return next((m for m in st.probes[probe].metrics if m.name == name), None)


def _cell(m: Metric | None, parent: Metric | None) -> tuple[str, str]:
    """(td class, cell html) of a metric with its interval and its change from the parent."""
    if m is None:
        return "", "-"
    ci = f'<div class=ci>[{fmt_value(m.ci95[0])}, {fmt_value(m.ci95[1])}] n={m.n if m.n is not None else "?"}</div>' \
        if m.ci95 else ""
    verdict = lineage.verdict(parent, m)
    change = ""
    if parent is not None and parent.value is not None and m.value is not None:
        cls = f"d-{verdict}" if verdict in ("better", "worse") else "small"
        change = f'<div class="{cls}">\u0394 {m.value - parent.value:+.3f}</div>'
    return (verdict if verdict in ("better", "worse", "beyond") else ""), f"{fmt_value(m.value)}{ci}{change}"


def _probes(run: Run) -> str:
    evals = _evals(run)
    if not evals:
        return '<h2 id="probes">Probes</h2><p>No eval stage in this run.</p>'
    parents = lineage.parent_evals(run)
    by_name = {s.name: s for s in run.stages}
    keys = list(dict.fromkeys((p.name, m.name) for e in evals for p in e.probes.values() for m in p.metrics if m.headline))
    versus = {e.name: f"vs {parents[e.name]}" if e.name in parents else "no parent eval" for e in evals}
    head = "".join(f"<th>{escape(e.name)}<div class=small>{escape(versus[e.name])}</div></th>" for e in evals)
    about = {name: p.description for e in evals for name, p in e.probes.items()}
    body = []
    for probe, metric in keys:
        first = next(_metric_of(e, probe, metric) for e in evals if _metric_of(e, probe, metric))
        arrow = {True: " \u2191", False: " \u2193"}.get(first.higher_is_better, "")
        cells = []
        for e in evals:
            cls, html = _cell(_metric_of(e, probe, metric), _metric_of(by_name.get(parents.get(e.name)), probe, metric))
            cells.append(f'<td class="num {cls}">{html}</td>')
        body.append(f'<tr><td title="{escape(about.get(probe, ""))}"><b>{escape(probe)}</b>'
                    f"<div class=small>{escape(metric)}{arrow}</div></td>{''.join(cells)}</tr>")
    compared = "; ".join(f"{escape(e)} with {escape(p)}" for e, p in parents.items())
    details = "".join(_eval_details(e, by_name.get(parents.get(e.name))) for e in evals)
    return (f'<h2 id="probes">Probes</h2><p>Headline metric of every probe per eval stage, with its 95% interval, and '
            f"the change (\u0394) from the eval of the stage's parent model ({compared or 'no parents found'}). "
            f"Green: better than the parent beyond the parent's 95% interval; red: worse beyond it "
            f"(\u2191 higher is better, \u2193 lower is better).</p>"
            f'<div class="scroll"><table><tr><th>probe / metric</th>{head}</tr>{"".join(body)}</table></div>{details}')


def _eval_details(e: Stage, parent: Stage | None) -> str:
    rows = []
    for p in e.probes.values():
        for m in p.metrics:
            pm = _metric_of(parent, p.name, m.name)
            cls, html = _cell(m, pm)
            rows.append(f"<tr><td>{escape(p.name) if m.headline else ''}</td>"
                        f"<td>{'' if m.headline else '&nbsp;&nbsp;'}{escape(m.name)}</td><td class='num {cls}'>{html}</td>"
                        f"<td class=num>{fmt_value(pm.value) if pm else '-'}</td>"
                        f"<td>{escape(lineage.verdict(pm, m) or '-')}</td></tr>")
    vs = f" (compared with {escape(parent.name)})" if parent else ""
    return (f"<details><summary>{escape(e.name)}: every metric{vs}</summary><table><tr><th>probe</th><th>metric</th>"
            f"<th>value [95% CI]</th><th>parent</th><th>vs parent</th></tr>{''.join(rows)}</table></details>")


def _curves(run: Run, problems: list[str]) -> str:
    figs = []
    for st in run.stages:
        if not st.metrics_lines:
            continue
        png = curves_png(st.metrics_lines, f"{st.name} ({st.kind}): {len(st.metrics_lines)} metrics lines")
        if png:
            figs.append(f"<figure>{_img(run, png, f'training curves of {st.name}', problems)}"
                        f"<figcaption>{escape(st.name)}: from {escape(str(st.path / 'metrics.jsonl'))}</figcaption></figure>")
    return '<h2 id="curves">Training curves</h2>' + (f"<div class=figs>{''.join(figs)}</div>" if figs else
                                                     "<p>No stage of this run logged training metrics.</p>")


def _overoptimisation(run: Run, problems: list[str]) -> str:
    found = [(run.path / n, "the run") for n in run.images if "overoptimisation" in n]
    if not found:
        found = [(st.images[n], st.name) for st in run.stages for n in st.images if "overoptimisation" in n]
    figs = "".join(f"<figure>{_img(run, None, f'over-optimisation ({who})', problems, path)}"
                   f"<figcaption>{escape(str(path))}</figcaption></figure>" for path, who in found)
    text = ("<p>Proxy (reward model) and gold (judge) reward against the distance from the starting policy "
            "(best-of-n and RL, Gao et al. 2022): the proxy keeps rising while the gold reward stops.</p>")
    return '<h2 id="overopt">Over-optimisation</h2>' + (text + figs if figs else
                                                         "<p>No over-optimisation curve in this run (PPO and GRPO "
                                                         "write one with track.every, and so does a bon stage).</p>")


def _gates(run: Run) -> str:
    rows = []
    for st in run.stages:
        for g in st.gates:
            if not isinstance(g, dict):
                rows.append(f"<tr><td>{escape(st.name)}</td><td colspan=6><code>{escape(repr(g))}</code></td></tr>")
                continue
            passed = g.get("passed")
            result = {True: "<span class=pass>passed</span>", False: "<span class=fail>FAILED</span>"}.get(passed, "-") \
                if isinstance(passed, bool) else "-"
            other = "; ".join(f"{escape(str(k))}: {_v(v)}" for k, v in g.items()
                              if k not in ("name", "probe", "metric", "value", "threshold", "passed"))
            metric = f"{g['probe']} {g.get('metric', '-')}" if isinstance(g.get("probe"), str) else g.get("metric", "-")
            rows.append(f"<tr><td>{escape(st.name)}</td><td>{_v(g.get('name', '-'))}</td><td>{_v(metric)}</td>"
                        f"<td class=num>{_v(g.get('value', '-'))}</td><td class=num>{_v(g.get('threshold', '-'))}</td>"
                        f"<td>{result}</td><td class=small>{other}</td></tr>")
    if not rows:
        return '<h2 id="gates">Gates</h2><p>No gates declared in this run.</p>'
    return ('<h2 id="gates">Gates</h2><table><tr><th>stage</th><th>gate</th><th>metric</th><th>value</th>'
            f"<th>threshold</th><th>result</th><th>details</th></tr>{''.join(rows)}</table>")


def _sample_cell(s: dict | None) -> str:
    if s is None:
        return '<td class="sample small">not in this eval</td>'
    text = f"<pre>{escape(s['response'] or '')}</pre>"
    if s["response_2"] is not None:
        text += f"<div class=small>second turn:</div><pre>{escape(s['response_2'])}</pre>"
    outcome = ", ".join(f"{escape(k)}: {_v(v)}" for k, v in s["outcome"].items())
    return f'<td class="sample">{text}<div class=small>{outcome}</div></td>'


def _samples(run: Run) -> str:
    evals = _evals(run)
    names = list(dict.fromkeys(p for e in evals for p in e.probes))
    blocks = []
    for i, probe in enumerate(names):
        having = [e for e in evals if probe in e.probes and e.probes[probe].samples]
        if not having:
            continue
        index = [{s["prompt_sha256"]: s for s in e.probes[probe].samples} for e in having]
        first = having[0].probes[probe].samples
        chosen = sorted(range(len(first)), key=lambda j: (-sum(first[j]["prompt_sha256"] in ix for ix in index), j))
        rows = []
        for j in chosen[:SAMPLES_PER_PROBE]:
            h = first[j]["prompt_sha256"]
            prompt = run.prompts.get(h)
            shown = f"<pre>{escape(prompt)}</pre>" if prompt else f"<span class=small>prompt sha256 {escape(h[:16])}\u2026</span>"
            rows.append(f'<tr><td class="sample prompt"><div class=small>{escape(first[j]["id"])}</div>{shown}</td>'
                        + "".join(_sample_cell(ix.get(h)) for ix in index) + "</tr>")
        head = "".join(f"<th>{escape(e.name)}</th>" for e in having)
        blocks.append(f"<details{' open' if i < 2 else ''}><summary>{escape(probe)}</summary><div class=scroll><table>"
                      f"<tr><th>held-out prompt</th>{head}</tr>{''.join(rows)}</table></div></details>")
    return ('<h2 id="samples">Samples</h2><p>The same held-out probe prompts answered by each eval stage '
            f"(greedy unless the probe samples; responses as stored, at most 300 characters).</p>{''.join(blocks) or '<p>No samples.</p>'}")


def render(run: Run) -> str:
    """The whole page as a string."""
    problems: list[str] = []
    sections = [_pipeline(run), _probes(run), _curves(run, problems), _overoptimisation(run, problems), _gates(run),
                _samples(run)]
    if problems:
        sections.insert(0, "<div class=problems><ul>" + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul></div>")
    name = run.path.resolve().name or str(run.path)
    css = CSS.strip()
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(css)}; script-src {_csp_hash(SCRIPT)}; "
           f"base-uri 'none'; form-action 'none'")
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in [("pipeline", "Pipeline"), ("probes", "Probes"),
                   ("curves", "Training curves"), ("overopt", "Over-optimisation"), ("gates", "Gates"), ("samples", "Samples")])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="generator" content="{GENERATOR} {__version__}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>posttrain report: {escape(name)}</title><style>{css}</style></head><body><main>"
            f"<h1>posttrain report: {escape(name)}</h1><p class=meta>{escape(str(run.path))}: {len(run.stages)} stages, "
            f"{len(_evals(run))} evals. Written {when} by posttrain {__version__}; self-contained, no network.</p>"
            f"<nav>{nav}</nav>{''.join(sections)}</main><script>{SCRIPT}</script></body></html>\n")
