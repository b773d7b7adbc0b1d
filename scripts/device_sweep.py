"""Run variants of a recipe side by side on one GPU machine, and pack their results.

Used to choose and build the shipped base model and the demo's SFT settings (see README).
Every variant goes through `posttrain run`; a variant changes one stage's `config`.
    python3 scripts/device_sweep.py RECIPE STAGE VARIANTS_JSON OUT_DIR [--pack STAGE,STAGE]
"""

import argparse
import copy
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml


def merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("stage")
    ap.add_argument("variants", help="JSON object: variant name -> config overrides for STAGE")
    ap.add_argument("out")
    ap.add_argument("--pack", default="", help="comma list of stage outputs to pack per variant")
    args = ap.parse_args()
    recipe_path = Path(args.recipe).resolve()
    base = yaml.safe_load(recipe_path.read_text())
    base.pop("publish", None)
    if base.get("base"):
        base["base"] = str((recipe_path.parent / base["base"]).resolve())
    procs = {}
    for name, over in json.loads(args.variants).items():
        r = copy.deepcopy(base)
        stage = next(s for s in r["stages"] if s["name"] == args.stage)
        stage["config"] = merge(stage.get("config") or {}, over)
        path = Path(f"/tmp/recipe_{name}.yaml")
        path.write_text(yaml.safe_dump(r))
        log = open(f"/tmp/{name}.log", "w")
        cmd = [sys.executable, "-m", "posttrain.cli", "run", str(path), "--out", f"/tmp/runs/{name}", "--no-progress"]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time())
    for name, (p, t0) in procs.items():
        rc = p.wait()
        print(f"== {name}: rc={rc} wall={time.time() - t0:.0f}s")
        if rc:
            print(open(f"/tmp/{name}.log").read()[-2000:])
        run = Path(f"/tmp/runs/{name}")
        for rep in sorted(run.glob("*/eval_report.json")):
            r = json.loads(rep.read_text())
            print(" ", rep.parent.name, {k: (round(v["value"], 3) if v["value"] is not None else None) for k, v in r["probes"].items()})
        for prov in sorted(run.glob("*/provenance.json")):
            m = json.loads(prov.read_text())["metrics"]
            print(" ", prov.parent.name, {k: m.get(k) for k in ("train_loss", "eval_loss", "steps", "tokens_per_s")})
        if args.pack:
            with tarfile.open(Path(args.out) / f"{name}.tgz", "w:gz") as tar:
                for s in args.pack.split(","):
                    if (run / s).exists():
                        tar.add(run / s, arcname=s)


if __name__ == "__main__":
    main()
