"""Pretrain base-model variants side by side on one GPU, probe each, and pack the results.

Used once to choose and build the shipped models/base (see README). Each variant is
recipes/base.yaml with some options changed; everything goes through `posttrain run`.
    python3 scripts/device_base_sweep.py OUT_DIR
"""

import copy
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "A_h256_l4_e12": {},
    "B_h256_l4_e24": {"train": {"epochs": 24}},
    "C_h320_l6_e12": {"arch": {"hidden_size": 320, "num_layers": 6, "num_heads": 5, "num_kv_heads": 5, "intermediate_size": 960}},
}


def merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main(out_dir: str):
    out = Path(out_dir)
    base = yaml.safe_load((ROOT / "recipes/base.yaml").read_text())
    base.pop("publish")
    procs = {}
    for name, over in VARIANTS.items():
        r = copy.deepcopy(base)
        stage = next(s for s in r["stages"] if s["name"] == "base")
        stage["config"] = merge(stage["config"], over)
        path = Path(f"/tmp/recipe_{name}.yaml")
        path.write_text(yaml.safe_dump(r))
        log = open(f"/tmp/{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(path), "--out", f"/tmp/runs/{name}",
                                         "--no-progress"], stdout=log, stderr=subprocess.STDOUT), time.time())
    for name, (p, t0) in procs.items():
        rc = p.wait()
        print(f"== {name}: rc={rc} wall={time.time() - t0:.0f}s")
        print(open(f"/tmp/{name}.log").read()[-1500:])
        run = Path(f"/tmp/runs/{name}")
        rep = run / "eval_base" / "eval_report.json"
        if rep.exists():
            r = json.loads(rep.read_text())
            print({k: round(v["value"], 3) for k, v in r["probes"].items()})
            prov = json.loads((run / "base" / "provenance.json").read_text())
            print("metrics", prov["metrics"])
            with tarfile.open(out / f"{name}.tgz", "w:gz") as tar:
                tar.add(run / "base", arcname="base")
                tar.add(rep, arcname="eval_base/eval_report.json")
                tar.add(run / "tokenizer", arcname="tokenizer")


if __name__ == "__main__":
    main(sys.argv[1])
