"""Plain-text tables for summaries printed at the end of each stage."""

from __future__ import annotations


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def table(rows: list[list], headers: list[str]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, sep, *body])


def summary(title: str, items: dict) -> str:
    return f"\n{title}\n" + table([[k, v] for k, v in items.items()], ["", "value"])


def notice(msg: str) -> None:
    """A one-line message about what posttrain did on the user's behalf (stderr, so results stay on stdout)."""
    import sys

    print(f"posttrain: {msg}", file=sys.stderr, flush=True)
