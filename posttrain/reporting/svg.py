"""The pipeline map as inline SVG: one box per stage (and per model from outside the run), arrows from
parent to child. Solid arrows carry a model; dashed ones data or a reference (a reward model, a judge)."""

from __future__ import annotations

from html import escape

from posttrain.reporting.lineage import Edge, Node, layout

BOX_W, BOX_H, COL_W, ROW_H, PAD = 184, 50, 250, 66, 16
FILL = {"external": "#e5e7eb", "world": "#ccfbf1", "eval": "#dcfce7", "reward": "#ffedd5", "bon": "#f3e8ff",
        "tokenizer": "#fef9c3"}
TRAINED = "#dbeafe"
STROKE = {"model": "#334155", "reference": "#c2410c", "data": "#0f766e"}


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def pipeline_svg(all_nodes: list[Node], links: list[Edge]) -> str:
    pos = layout(all_nodes, links)
    cols = max((c for c, _ in pos.values()), default=0) + 1
    rows = max((r for _, r in pos.values()), default=0) + 1
    width, height = PAD * 2 + (cols - 1) * COL_W + BOX_W, PAD * 2 + (rows - 1) * ROW_H + BOX_H

    def xy(key):
        c, r = pos[key]
        return PAD + c * COL_W, PAD + r * ROW_H

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="pipeline" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="pipeline map">',
             "<defs>" + "".join(
                 f'<marker id="arrow-{role}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                 f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
                 for role, color in STROKE.items()) + "</defs>"]
    for e in links:
        if e.src not in pos or e.dst not in pos:
            continue
        (x1, y1), (x2, y2) = xy(e.src), xy(e.dst)
        x1, y1, y2 = x1 + BOX_W, y1 + BOX_H / 2, y2 + BOX_H / 2
        bend = max(30.0, (x2 - x1) / 2)
        dash = ' stroke-dasharray="5,4"' if e.role != "model" else ""
        parts.append(f'<path d="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}" '
                     f'fill="none" stroke="{STROKE[e.role]}" stroke-width="1.4"{dash} marker-end="url(#arrow-{e.role})">'
                     f"<title>{escape(e.src.removeprefix('ext:'))} \u2192 {escape(e.dst)}: {escape(e.label)}</title></path>")
    for n in all_nodes:
        x, y = xy(n.key)
        fill = FILL.get(n.kind, TRAINED)
        stroke = ' stroke="#dc2626" stroke-width="2.5"' if n.problem else ' stroke="#64748b" stroke-width="1"'
        parts.append(
            f'<g><title>{escape(n.label)} ({escape(n.kind)}): {escape(n.detail)}</title>'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="7" fill="{fill}"{stroke}/>'
            f'<text x="{x + 9}" y="{y + 20}" class="n">{escape(_short(n.label, 22))}'
            f'<tspan class="k"> {escape(_short(n.kind, 14))}</tspan></text>'
            f'<text x="{x + 9}" y="{y + 38}" class="d">{escape(_short(n.detail, 28))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def legend() -> str:
    items = [("model", "a model: parent to child, model to its eval"), ("reference", "a reference (reward model, judge)"),
             ("data", "data from the world")]
    dashed = ' stroke-dasharray="5,4"'
    return " ".join(f'<span class="legend"><svg width="34" height="10"><line x1="0" y1="5" x2="34" y2="5" '
                    f'stroke="{STROKE[r]}" stroke-width="2"{"" if r == "model" else dashed}/></svg> '
                    f"{escape(text)}</span>" for r, text in items)
