"""`posttrain report`: the run directory read into a map, a probe table against the parent eval, curves,
gates and samples, on one HTML page that needs no network, escapes every text from the run's files, and
renders in headless Chromium without a console message.

The run directory is written by hand (`write_run`), in the formats the stages write (provenance.json,
eval_report.json, metrics.jsonl, manifest.json, recipe_state.json), with hostile text in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.evals.report import prompt_sha256
from posttrain.reporting import lineage
from posttrain.reporting.page import render
from posttrain.reporting.rundir import read_run

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
PROMPT = {"id": "qa-0000", "messages": [{"role": "user", "content": "Capital of France? " + XSS}]}
OTHER = {"id": "qa-0001", "messages": [{"role": "user", "content": "Capital of Japan?"}]}


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _eval(model: str, value: float, ci: list, responses: tuple[str, str], gates=None) -> dict:
    samples = [{"id": row["id"], "prompt_sha256": prompt_sha256(row), "correct": i == 0, "response": text}
               for i, (row, text) in enumerate(zip([PROMPT, OTHER], responses))]
    report = {"format": "posttrain.eval_report", "model": model, "source": "builtin:seed=0", "n": 2,
              "created_utc": "2026-01-01T00:00:00+00:00", "wall_time_s": 1.0,
              "probes": {"qa": {"description": "answers questions " + XSS, "metric": "accuracy", "value": value,
                                "ci95": ci, "n": 50, "higher_is_better": True,
                                "secondary": {"length": {"value": 12.0, "ci95": [10.0, 14.0], "n": 50}},
                                "samples": samples}}}
    if gates is not None:
        report["gates"] = gates
    return report


def _artifact(stage: str, aid: str, parent: dict, data: list, config=None, gates=None) -> dict:
    prov = {"artifact_id": aid, "stage": stage, "created_unix": 1767225600, "parent": parent, "data": data,
            "config": config or {}, "metrics": {"train_loss": 0.5, "eval_loss": 0.6, "steps": 4}, "wall_time_s": 3.0}
    if gates is not None:
        prov["gates"] = gates
    return prov


def write_run(root: Path, gates: bool = True) -> Path:
    """A small run: world -> eval_base (of a base model outside the run) -> sft -> eval_sft -> reward,
    ppo (against the reward model) -> eval_ppo, and eval_bon (best-of-4 of sft by the reward model)."""
    root = Path(root)
    names = ["world", "eval_base", "sft", "eval_sft", "reward", "ppo", "eval_ppo", "eval_bon"]
    _json(root / "recipe_state.json", {"done": {n: "0" * 16 for n in names}, "started": {n: "0" * 16 for n in names}})
    _json(root / "world" / "manifest.json", {"generator": "world-2.0", "seed": 0,
                                             "files": {"sft.jsonl": {"sha256": "a" * 64, "rows": 10},
                                                       "prompts.jsonl": {"sha256": "b" * 64, "rows": 5}}})
    (root / "world" / "probes").mkdir()
    (root / "world" / "probes" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [PROMPT, OTHER]))
    base = {"path": "base", "artifact_id": "pretrain-000000000000", "weights_sha256": "c" * 64}
    sft_gates = [{"name": "qa floor " + XSS, "metric": "qa.accuracy", "value": 0.6, "threshold": 0.5, "passed": True},
                 {"name": "qa vs parent", "metric": "qa.accuracy", "value": 0.6, "threshold": 0.7, "passed": False}]
    _json(root / "sft" / "provenance.json", _artifact("sft", "sft-111111111111", base,
                                                      [{"path": "sft.jsonl", "sha256": "a" * 64, "rows": 10, "role": "train"}],
                                                      gates=sft_gates if gates else None))
    (root / "sft" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "loss": 1.5, "lr": 1e-3}, {"step": 2, "eval_loss": 1.7}]))
    sft = {"path": "sft", "artifact_id": "sft-111111111111", "weights_sha256": "d" * 64}
    _json(root / "reward" / "provenance.json", _artifact("reward", "reward-222222222222", sft, []))
    _json(root / "ppo" / "provenance.json", _artifact(
        "ppo", "ppo-333333333333", sft, [{"path": "prompts.jsonl", "sha256": "b" * 64, "rows": 5, "role": "train"}],
        {"reward": {"model": str(root / "reward")}}))
    (root / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": s, "loss": 0.1 / s, "reward": -2 + s, "kl": 0.1 * s, "response_length": 20 + s} for s in (1, 2, 3)]
        + [{"step": 3, "track_proxy": 0.5, "track_kl": 0.3, "track_response_length": 22.0}]))
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 40, 40)).save(root / "ppo" / "overoptimisation.png")
    _json(root / "eval_base" / "eval_report.json", _eval("../models/base", 0.2, [0.1, 0.3], ("Hello there.", "Hi.")))
    _json(root / "eval_sft" / "eval_report.json", _eval("@sft", 0.6, [0.5, 0.7], (XSS + " Paris.", "Tokyo.")))
    _json(root / "eval_ppo" / "eval_report.json", _eval("@ppo", 0.3, [0.2, 0.4], ("Paris!!", "Tokyo!!")))
    _json(root / "eval_bon" / "eval_report.json", _eval("best-of-4 of @sft by @reward", 0.62, [0.5, 0.7],
                                                        ("Paris, France.", "Tokyo, Japan.")))
    return root


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "demo")


def test_lineage_links_parents_data_references_and_the_parent_eval_of_each_eval(run_dir):
    run = read_run(run_dir)
    assert [s.name for s in run.stages] == ["world", "eval_base", "sft", "eval_sft", "reward", "ppo", "eval_ppo", "eval_bon"]
    links = {(e.src, e.dst): e.role for e in lineage.edges(run)}
    assert links == {
        ("ext:base", "eval_base"): "model", ("ext:base", "sft"): "model", ("world", "sft"): "data",
        ("sft", "eval_sft"): "model", ("sft", "reward"): "model", ("sft", "ppo"): "model", ("world", "ppo"): "data",
        ("reward", "ppo"): "reference", ("ppo", "eval_ppo"): "model", ("sft", "eval_bon"): "model",
        ("reward", "eval_bon"): "reference",
    }
    # a stage's eval is compared with the eval of its parent; best-of-n of sft with sft itself
    assert lineage.parent_evals(run) == {"eval_sft": "eval_base", "eval_ppo": "eval_sft", "eval_bon": "eval_sft"}
    pos = lineage.layout(lineage.nodes(run, lineage.edges(run)), lineage.edges(run))
    assert pos["ext:base"][0] == 0 and pos["sft"][0] == 1 and pos["ppo"][0] == 3 and pos["eval_ppo"][0] == 4
    assert run.prompts[prompt_sha256(PROMPT)].startswith("user: Capital of France?")


def test_page_is_self_contained_escapes_every_text_and_shows_each_section(run_dir):
    page = render(read_run(run_dir))
    # no network: no external URL is loaded, every image is a data: URI, one inline script, a CSP that allows nothing else
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "<link" not in page
    assert page.count("<script") == 1 and "<script>addEventListener" in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img src="([^"]*)"', page))
    assert "default-src 'none'" in page
    # every text from the run is escaped: the hostile strings appear only as text
    assert "alert(" in page and '<script>alert("x")' not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    # the probe table: eval_sft is better than eval_base beyond its interval, eval_ppo worse than eval_sft
    assert 'class="num better">0.600<div class=ci>[0.500, 0.700] n=50</div><div class="d-better">\u0394 +0.400' in page
    assert 'class="num worse">0.300<div class=ci>[0.200, 0.400] n=50</div><div class="d-worse">\u0394 -0.300' in page
    assert "vs eval_sft" in page and "no parent eval" in page
    assert 'title="answers questions &lt;script&gt;alert(&quot;x&quot;)' in page  # the probe's description, on hover
    # curves of sft and ppo, the over-optimisation plot
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3
    assert 'alt="training curves of sft"' in page and 'alt="over-optimisation (ppo)"' in page
    # gates, with both outcomes
    assert "<span class=pass>passed</span>" in page and "<span class=fail>FAILED</span>" in page
    assert "qa floor &lt;script&gt;" in page
    # samples: the same prompt's answers side by side, the prompt text recovered from the world's probe set
    row = page[page.index("qa-0000"):]
    row = row[: row.index("</tr>")]
    assert [c for c in ("Hello there.", "Paris.", "Paris!!", "Paris, France.") if c in row] == \
           ["Hello there.", "Paris.", "Paris!!", "Paris, France."]
    assert "user: Capital of France? &lt;script&gt;" in row


def test_a_run_without_gates_says_so(tmp_path):
    page = render(read_run(write_run(tmp_path / "r", gates=False)))
    assert "No gates declared in this run." in page and "<span class=fail>" not in page


def test_damaged_files_are_listed_on_the_page_and_as_notices(run_dir, capsys):
    (run_dir / "eval_ppo" / "eval_report.json").write_text('{"probes": ')
    (run_dir / "ppo" / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 1.0}\nnot json\n\xff\n')
    prov = json.loads((run_dir / "reward" / "provenance.json").read_text())
    prov.update(parent="sft", data="x", metrics=[1], gates=7)
    (run_dir / "reward" / "provenance.json").write_text(json.dumps(prov))
    assert main(["report", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{run_dir / 'eval_ppo' / 'eval_report.json'}: not valid JSON" in err
    assert f"{run_dir / 'ppo' / 'metrics.jsonl'}: not valid UTF-8" in err
    assert "'gates' is not a list" in err
    page = (run_dir / "report.html").read_text()
    assert "Parts of this run could not be read" in page and "eval_report.json: not valid JSON" in page


def test_cli_replaces_its_own_report_but_not_another_file(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    first = (run_dir / "report.html").read_text()
    assert first.startswith("<!DOCTYPE html>") and f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0  # a report written before is replaced without asking
    mine = tmp_path / "mine.html"
    mine.write_text("<p>my notes</p>")
    assert main(["report", str(run_dir), "--out", str(mine)]) == 2
    assert "is a file (15 bytes) that is not a posttrain report" in capsys.readouterr().err
    assert mine.read_text() == "<p>my notes</p>"
    assert main(["report", str(run_dir), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_text().startswith("<!DOCTYPE html>")
    # a single stage folder is a run of one stage
    assert main(["report", str(run_dir / "ppo"), "--out", str(tmp_path / "ppo.html")]) == 0
    assert 'alt="training curves of ppo"' in (tmp_path / "ppo.html").read_text()


# ---------------------------------------------------------------- headless Chromium


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("Chromium is not installed, so the report's rendering cannot be checked: install Debian's package "
                "(apt-get install chromium; scripts/test.sh does so where apt-get is available).")


def render_in_chromium(page: Path, tmp_path: Path, screenshot: Path) -> tuple[str, list[str]]:
    """(the DOM after the load event, the page's console messages) of `page` in headless Chromium, screenshot taken."""
    cmd = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", "--dump-dom",
           f"--screenshot={screenshot}", "--window-size=1280,2000", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Chromium logs each console message (log, warning, error, uncaught exception, CSP violation) as INFO:CONSOLE
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_in_headless_chromium_without_console_messages(run_dir, tmp_path):
    import numpy as np
    from PIL import Image

    chromium()  # skips, saying why, where it is not installed
    t0 = time.perf_counter()
    assert main(["report", str(run_dir)]) == 0
    shot = tmp_path / "report.png"
    dom, console = render_in_chromium(run_dir / "report.html", tmp_path, shot)
    assert console == []
    assert '<html lang="en" data-loaded="ok">' in dom  # the page's script ran after load: every image decoded
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = len(image.getcolors(maxcolors=2**24))
    not_white = float((np.asarray(image).min(axis=2) < 235).mean())
    assert colours > 200 and not_white > 0.03, (colours, not_white)  # text, tables, plots: not a blank page
    # the check would see a broken page: a control page with a script error and a blocked request
    bad = tmp_path / "bad.html"
    bad.write_text((run_dir / "report.html").read_text().replace("</main>", "</main><img src='https://example.com/x.png'>"))
    _, console = render_in_chromium(bad, tmp_path, tmp_path / "bad.png")
    assert any("Content Security Policy" in line for line in console), console
    print(f"chromium checks took {time.perf_counter() - t0:.1f}s")
