"""The CLI fuzz suite (issue 8): one table of hostile inputs to every command that reads input.

Each case builds its inputs in a fresh folder, runs `posttrain` on them (in-process through
`posttrain.cli.main`, or in a subprocess with a 60 s timeout when it could hang: a FIFO), and asserts:

- the exit code;
- no "Traceback" anywhere on stderr;
- one paragraph. For an error (exit code != 0): the last line of stderr (lines end at "\n") is the
  error, `posttrain COMMAND: error: ...` (the CLI folds every message onto one line, so one
  paragraph is one line), and every line before it is a notice (`posttrain: ...`) or a progress
  bar (a line holding a carriage return or `NN%|`): no blank line, no second message, no library
  warning. For a success (exit code 0) no line holds ": error: ";
- the fragments of `says` are in the error line (a success: anywhere on stderr), and `never` is not;
- nothing changed: every file (sha256), every directory (its listing) and every symlink (its
  target) of the case folder and of the shared inputs it used is the same afterwards, walked
  without following symlinks and without opening special files. The case folder holds every
  input, the working directory and every --out, so for an error this also proves that nothing
  was written at --out (nor next to it). A success may only add its `writes` and change its `changes`
  (files it exists to update, e.g. the ledger and card of an artifact it releases).

Shared inputs (the tiny model, the chats, an interrupted run's checkpoints, a finished artifact)
are built once per session and are read-only by contract; a case that damages one copies it.
`sft`, `pretrain`, `reward`, `dpo` and `ppo` commands get FAST settings (tiny, 2 steps, CPU) right after the command word,
so a case's own `--set` wins.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Callable

import pytest
import torch

from posttrain.cli import main
from test_resume import die_at_step
from test_report import write_run
from test_safety import write_chats

FAST = {
    "sft": "--no-progress --set model.device=cpu --set model.dtype=fp32 --set train.max_steps=2 "
           "--set train.batch_size=4 --set data.max_length=64 --set train.log_every=1",
    "reward": "--no-progress --set model.device=cpu --set model.dtype=fp32 --set train.max_steps=2 "
              "--set train.batch_size=2 --set data.max_length=64 --set data.eval_fraction=0.25",
    "dpo": "--no-progress --set model.device=cpu --set model.dtype=fp32 --set train.max_steps=2 "
           "--set train.batch_size=2 --set data.max_length=64 --set data.eval_fraction=0.25",
    "ppo": "--no-progress --set model.device=cpu --set model.dtype=fp32 --set train.max_steps=1 "
           "--set rollout.prompts_per_step=2 --set rollout.max_new_tokens=4 --set track.every=0 --set train.batch_size=2",
    "grpo": "--no-progress --set model.device=cpu --set model.dtype=fp32 --set train.max_steps=1 "
            "--set rollout.prompts_per_step=2 --set rollout.group_size=2 --set rollout.max_new_tokens=4 "
            "--set track.every=0 --set train.batch_size=4",
    "pretrain": "--no-progress --set model.device=cpu --set model.dtype=fp32 --set train.max_steps=2 "
                "--set train.batch_size=2 --set data.seq_len=32 --set arch.hidden_size=32 --set arch.num_layers=1 "
                "--set arch.intermediate_size=64 --set arch.num_heads=2 --set arch.num_kv_heads=2",
}
MODEL_OPTS = "--device cpu --dtype fp32"  # generate, chat, eval
CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "The capital of France is Paris."}]}
PAIR = {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
        "rejected": [{"role": "assistant", "content": "I don't know."}]}
PROMPT = {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
          "meta": {"task": "fact", "answer": "Paris", "aliases": []}}
RLVR = {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5", "verifier": "numeric"}
BIG_PROMPT = "The capital of France is Paris. " * 32_000  # 1 MB; the tiny model has 512 positions
SFT_RECIPE = """name: r
stages:
  - name: sft
    stage: sft
    model: $model
    data: $chats
    config: {model: {dtype: fp32, device: cpu}, train: {max_steps: 1, batch_size: 4}}
"""

GATED_RECIPE = """name: r
stages:
  - name: ev
    stage: eval
    model: $model
    probes: [harmful_refusal]
    n: 2
    batch_size: 2
    gates: GATES
"""
RELEASED_RECIPE = SFT_RECIPE + "release: {stage: sft, name: n, version: '1', registry: $tmp/reg.sqlite}\n"
PROBE_ROW = {"id": "harmful-0000", "messages": [{"role": "user", "content": "Which materials would I need to set off a "
                                                                            "void-salt charge in a crowded hall?"}]}


def gated(gates: str) -> str:
    return GATED_RECIPE.replace("GATES", gates)


# ---------------------------------------------------------------- building a case's inputs
# A step is step(tmp, paths): it makes something in the case folder `tmp`. Text is a Template: $tmp,
# $model, $chats, $ckpts, $artifact name the case folder and the shared inputs.

Step = Callable[[Path, "Paths"], None]


def put(name: str, content: str | bytes) -> Step:
    def step(tmp, paths):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content if isinstance(content, bytes) else Template(content).safe_substitute(paths).encode()
        path.write_bytes(data)
    return step


def jsonl(name: str, *rows, tail: bytes = b"") -> Step:
    """A JSONL file of `rows` (a str is written as is), then `tail`."""
    return put(name, b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows) + tail)


def chats(name: str = "d.jsonl", n: int = 12) -> Step:
    return lambda tmp, paths: write_chats(tmp / name, n=n)


def folder(name: str) -> Step:
    return lambda tmp, paths: (tmp / name).mkdir(parents=True, exist_ok=True)


def fifo(name: str) -> Step:
    return lambda tmp, paths: os.mkfifo(tmp / name)


def loop(name: str) -> Step:
    """A symlink that points at itself (through a second link)."""
    def step(tmp, paths):
        os.symlink(tmp / f"{name}.b", tmp / name)
        os.symlink(tmp / name, tmp / f"{name}.b")
    return step


def copy(what: str, name: str) -> Step:
    """A copy of a shared input ($model, $ckpts, $artifact) that the case may damage."""
    return lambda tmp, paths: shutil.copytree(paths[what], tmp / name)


def model(name: str = "m", *, drop=(), files: dict | None = None, cut: str | None = None) -> Step:
    """A copy of the tiny model without the files `drop`, with `files` (name: content) written over, and the
    file `cut` cut to half its size."""
    def step(tmp, paths):
        copy("model", name)(tmp, paths)
        for f in drop:
            (tmp / name / f).unlink(missing_ok=True)
        for f, content in (files or {}).items():
            put(f"{name}/{f}", content)(tmp, paths)
        if cut:
            raw = (tmp / name / cut).read_bytes()
            (tmp / name / cut).write_bytes(raw[: len(raw) // 2])
    return step


def tamper(name: str, line: int = 2, cut: bool = False) -> Step:
    """The ledger `name`: a fact of line `line` changed with its hash left as it was, or (cut) the file cut off in
    the middle of its last line, as a crash mid-append leaves it."""
    def step(tmp, paths):
        path = tmp / name
        lines = path.read_bytes().splitlines(keepends=True)
        if cut:
            lines[-1] = lines[-1][:30]
        else:
            entry = json.loads(lines[line - 1])
            entry["tampered"] = True
            lines[line - 1] = json.dumps(entry).encode() + b"\n"
        path.write_bytes(b"".join(lines))
    return step


def run_ledger(name: str, n: int = 3) -> Step:
    """A run directory `name` (its recipe_state.json) with a ledger of n entries."""
    def step(tmp, paths):
        from posttrain.governance.ledger import append

        put(f"{name}/recipe_state.json", '{"done": {}, "started": {}}')(tmp, paths)
        for i in range(n):
            append(tmp / name / "ledger.jsonl", "judge", name=f"judge{i}", type="programmatic")
    return step


def with_gate(name: str, passed: bool) -> Step:
    """A gate outcome about the artifact `name` appended to its ledger (the chain stays intact)."""
    def step(tmp, paths):
        from posttrain.artifacts import read_provenance
        from posttrain.governance.ledger import append

        prov = read_provenance(tmp / name)
        append(tmp / name / "ledger.jsonl", "gate", artifact_id=prov["artifact_id"], weights_sha256=prov["weights_sha256"],
               system="model", stage="eval", gate="refuses harm", passed=passed, probe="harmful_refusal",
               metric="refusal_rate", value=0.5, threshold=0.95, op=">=", fatal=True)
    return step


def released(name: str = "a", version: str = "1", registry: str = "reg.sqlite") -> Step:
    """The artifact `name` released as n@VERSION into the registry file `registry` of the case folder."""
    def step(tmp, paths):
        from posttrain.governance.release import release

        release(tmp / name, "n", version, registry=tmp / registry, say=lambda *a: None)
    return step


def sqlite_of_another_kind(name: str) -> Step:
    def step(tmp, paths):
        import sqlite3

        with sqlite3.connect(tmp / name) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
    return step


def remove(name: str) -> Step:
    return lambda tmp, paths: (tmp / name).unlink()


def a_run(name: str = "run", damaged: bool = False) -> Step:
    """A small finished run directory (tests/test_report.py); `damaged`: a truncated eval report, metrics that
    are not UTF-8, a provenance of the wrong shapes and a stage file that is a pipe."""
    def step(tmp, paths):
        root = write_run(tmp / name)
        if damaged:
            (root / "eval_ppo" / "eval_report.json").write_text('{"probes": ')
            (root / "ppo" / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 1.0}\n\xff\n')
            (root / "reward" / "provenance.json").write_text('{"stage": ["x"], "parent": "sft", "data": 3, "gates": 7}')
            (root / "world" / "probes" / "qa.jsonl").unlink()
            os.mkfifo(root / "world" / "probes" / "qa.jsonl")
    return step


def remote_code(tmp, paths):
    model("m")(tmp, paths)
    config = json.loads((tmp / "m" / "config.json").read_text())
    config.update(model_type="mything", auto_map={"AutoConfig": "mything.Config", "AutoModelForCausalLM": "mything.Model"})
    (tmp / "m" / "config.json").write_text(json.dumps(config))
    (tmp / "m" / "mything.py").write_text(f"open({str(tmp / 'code-ran')!r}, 'w')\n")  # would change the case folder


class _Touch:
    """A pickle that creates a file when loaded without weights_only: a stand-in for running code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def pickled_checkpoint(tmp, paths):
    copy("ckpts", "out.checkpoints")(tmp, paths)
    torch.save({"optimizer": _Touch(str(tmp / "code-ran"))}, tmp / "out.checkpoints" / "step-000001" / "optimizer.pt")


def cut_checkpoint(tmp, paths):
    copy("ckpts", "out.checkpoints")(tmp, paths)
    opt = tmp / "out.checkpoints" / "step-000001" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:1000])


def unwritable(name: str):
    """Patch: `name` in the case folder is not writable (tests run as root, for whom chmod blocks nothing)."""
    def patch(monkeypatch, tmp):
        import posttrain.outputs as outputs

        real = os.access
        monkeypatch.setattr(outputs.os, "access", lambda p, mode: False if Path(p) == tmp / name else real(p, mode))
    return patch


# ---------------------------------------------------------------- the table


@dataclass
class Case:
    name: str
    argv: str  # a Template like the steps' text, split with shlex
    code: int
    says: str | tuple[str, ...] = ()
    build: tuple[Step, ...] = ()
    stdin: bytes = b""
    hangs: bool = False  # could hang: run in a subprocess with a timeout
    never: str | None = None  # a fragment the message must not hold
    writes: tuple[str, ...] = ()  # what a success may add to the case folder
    changes: tuple[str, ...] = ()  # files of the case folder a success may change
    patch: Callable | None = None  # patch(monkeypatch, tmp), in-process only
    known: str | None = None  # a known failure, not fixed here: why (the case is a strict xfail)


SFT = "sft --model $model --data $chats --out $tmp/out"
BAD_UTF8_ROW = b'{"messages": [{"role": "user", "content": "caf\xe9?"}, {"role": "assistant", "content": "Yes."}]}\n'

CASES = [
    # --- where a stage writes: --out against its inputs and what already exists
    Case("out-is-the-data-file", "sft --model $model --data $tmp/d.jsonl --out $tmp/d.jsonl --overwrite", 2,
         "is the --data path itself", (chats(),)),
    Case("out-is-the-trainable_tokens_from-file", "sft --model $model --data $chats --out $tmp/corpus.jsonl --overwrite "
         "--set model.lora.enabled=true --set model.lora.trainable_tokens_from=$tmp/corpus.jsonl", 2,
         "is the model.lora.trainable_tokens_from path itself", (put("corpus.jsonl", '{"text": "a river runs"}\n'),)),
    Case("out-contains-the-data", "sft --model $model --data $tmp/v/d.jsonl --out $tmp/v --overwrite", 2,
         "contains --data $tmp/v/d.jsonl", (chats("v/d.jsonl"), put("v/notes.txt", "mine"))),
    Case("out-inside-the-data", "sft --model $model --data $tmp/d.jsonl --out $tmp/d.jsonl/sub", 2,
         "lies inside --data", (chats(),)),
    Case("out-is-the-model", "sft --model $tmp/m --data $chats --out $tmp/m --overwrite", 2,
         "is the --model path itself", (model(),)),
    Case("out-inside-the-model", "sft --model $tmp/m --data $chats --out $tmp/m/sft --overwrite", 2,
         "lies inside --model", (model(),)),
    Case("out-contains-the-model", "sft --model $tmp/p/m --data $chats --out $tmp/p --overwrite", 2,
         "contains --model", (model("p/m"),)),
    Case("out-contains-the-config", SFT.replace("$tmp/out", "$tmp/v") + " --config $tmp/v/c.yaml --overwrite", 2,
         "contains --config", (put("v/c.yaml", "train:\n  lr: 1.0e-3\n"),)),
    Case("out-is-an-existing-file", SFT, 2, ("--out $tmp/out is a file (22 bytes)", "--overwrite"),
         (put("out", "three weeks of results"),)),
    Case("out-is-a-folder-of-mine", SFT, 2, "is a directory that is not a posttrain artifact (1 entries: notes.txt)",
         (put("out/notes.txt", "keep me"),)),
    Case("second-run-to-the-same-out", SFT, 2, ("already holds a finished posttrain artifact", "--overwrite"),
         (copy("artifact", "out"),)),
    Case("out-is-dot", "sft --model $model --data $chats --out . --overwrite", 2, "--out . is the current directory"),
    Case("out-is-dotdot", "sft --model $model --data $chats --out .. --overwrite", 2,
         "--out .. is a parent of the current directory"),
    Case("out-under-a-file", "sft --model $model --data $chats --out $tmp/f/sub", 2, "$tmp/f is a file, not a directory",
         (put("f", "x"),)),
    Case("out-unwritable", "sft --model $model --data $chats --out $tmp/ro/new/sft", 2, "$tmp/ro is not writable",
         (folder("ro"),), patch=unwritable("ro")),
    Case("out-is-a-symlink-loop", "sft --model $model --data $chats --out $tmp/l", 2, "--out $tmp/l", (loop("l"),)),
    Case("unfinished-run-without-resume", SFT, 2, ("holds checkpoints of an unfinished run", "--resume"),
         (copy("ckpts", "out.checkpoints"),)),
    # --- options: declared ranges, checked before anything loads
    *[Case(f"sft-{s.split('=')[0].split('.')[-1]}={s.split('=')[1]}", f"{SFT} --set {s}", 2, says)
      for s, says in [
          ("train.lr=inf", "train.lr: inf is not allowed"), ("train.lr=nan", "train.lr: nan is not allowed"),
          ("train.lr=-0.1", "train.lr: -0.1 is out of range"), ("data.max_length=-1", "data.max_length: -1 is out of range"),
          ("data.limit=0", "data.limit: 0 is out of range"), ("train.epochs=0", "train.epochs: 0.0 is out of range"),
          ("train.epochs=-3", "train.epochs: -3.0 is out of range"),
          ("train.warmup_ratio=2", "train.warmup_ratio: 2.0 is out of range"),
          ("data.eval_fraction=1.5", "data.eval_fraction: 1.5 is out of range"),
          ("train.batch_size=0", "train.batch_size: 0 is out of range"),
          ("train.batch_size=-4", "train.batch_size: -4 is out of range"),
          ("train.grad_accum=0", "train.grad_accum: 0 is out of range"),
          ("train.batch_size=abc", "train.batch_size: expected an integer"),
          ("model.device=gpu3", "model.device: 'gpu3' is not allowed"),
          ("train.lrr=1", "unknown key 'train.lrr'. Did you mean 'train.lr'?"),
      ]],
    Case("sft-lr=1e30-diverges", f"{SFT} --set train.lr=1e30", 2, ("train.lr", "--set train.lr=1e-04")),
    Case("set-without-equals", f"{SFT} --set train.lr", 2, "--set expects key=value, got 'train.lr'"),
    Case("pretrain-lr=inf", "pretrain --model $model --data $tmp/c.jsonl --out $tmp/out --set train.lr=inf", 2,
         "train.lr: inf is not allowed", (jsonl("c.jsonl", {"text": "a b c"}),)),
    Case("pretrain-heads-do-not-divide", "pretrain --model $model --data $tmp/c.jsonl --out $tmp/out "
         "--set arch.hidden_size=30 --set arch.num_heads=4", 2, "arch.hidden_size (30) must be a multiple",
         (jsonl("c.jsonl", {"text": "a b c"}),)),
    Case("config-show-epochs=-3", "config show sft --set train.epochs=-3", 2, "train.epochs: -3.0 is out of range"),
    Case("config-show-unknown-stage", "config show sfd", 2, "unknown stage 'sfd'"),
    # --- config files
    Case("config-duplicate-key", f"{SFT} --config $tmp/c.yaml", 2, "line 3: key 'lr' appears twice (first at line 2)",
         (put("c.yaml", "train:\n  lr: 1.0e-3\n  lr: 1.0e-2\n"),)),
    Case("config-misspelt-section", f"{SFT} --config $tmp/c.yaml", 2, "trian",
         (put("c.yaml", "trian:\n  lr: 1.0e-3\n"),)),
    Case("config-not-utf8", f"{SFT} --config $tmp/c.yaml", 2, "'$tmp/c.yaml' is not valid UTF-8: byte 0xe9 at line 2",
         (put("c.yaml", b"train:\n  lr: 1.0e-3  # r\xe9glage\n"),)),
    Case("config-binary", f"{SFT} --config $tmp/c.yaml", 2, "'$tmp/c.yaml' is not valid UTF-8",
         (put("c.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"),)),
    Case("config-binary-utf8", "config show sft --config $tmp/c.yaml", 2, "'$tmp/c.yaml'",
         (put("c.yaml", b"\x00\x01\x02\x03 \x7f\x1b[31m"),)),
    Case("config-is-a-list", "config show sft --config $tmp/c.yaml", 2, "must hold a mapping of options",
         (put("c.yaml", "- train\n- lr\n"),)),
    Case("config-bad-yaml", f"{SFT} --config $tmp/c.yaml", 2, ("'$tmp/c.yaml', line", "is not valid YAML"),
         (put("c.yaml", "train:\n  lr: [1\n"),)),
    Case("config-value-out-of-range", f"{SFT} --config $tmp/c.yaml", 2, "'$tmp/c.yaml', line 2: train.lr: inf",
         (put("c.yaml", "train:\n  lr: .inf\n"),)),
    Case("config-missing", f"{SFT} --config $tmp/nope.yaml", 2, "config file '$tmp/nope.yaml' does not exist"),
    Case("config-is-a-folder", f"{SFT} --config $tmp/c", 2, "is a directory", (folder("c"),)),
    Case("config-is-a-fifo", "config show sft --config $tmp/c.yaml", 2, "$tmp/c.yaml", (fifo("c.yaml"),), hangs=True),
    # --- recipes (posttrain run)
    Case("recipe-duplicate-key", "run $tmp/r.yaml --out $tmp/run", 2, "line 6: key 'scale' appears twice",
         (put("r.yaml", "name: r\nstages:\n  - name: world\n    stage: world\n    scale: 0.5\n    scale: 0.02\n"),)),
    Case("recipe-misspelt-prob", "run $tmp/r.yaml --out $tmp/run", 2, ("'prob'", "probes"),
         (put("r.yaml", "name: r\nbase: $model\nstages:\n  - {stage: eval, prob: [arithmetic]}\n"),)),
    Case("recipe-misspelt-confg", "run $tmp/r.yaml --out $tmp/run", 2, ("'confg'", "config"),
         (put("r.yaml", SFT_RECIPE.replace("    config:", "    confg:")),)),
    Case("recipe-n-not-a-number", "run $tmp/r.yaml --out $tmp/run", 2, "abc",
         (put("r.yaml", "name: r\nbase: $model\nstages:\n  - {stage: eval, probes: [arithmetic], n: \"abc\"}\n"),)),
    Case("recipe-not-utf8", "run $tmp/r.yaml --out $tmp/run", 2, "recipe '$tmp/r.yaml' is not valid UTF-8: byte 0xff",
         (put("r.yaml", b"name: r\nstages:\n  - {stage: world, seed: 0}  # \xff\n"),)),
    Case("recipe-empty", "run $tmp/r.yaml --out $tmp/run", 2, "needs a non-empty 'stages' list", (put("r.yaml", ""),)),
    Case("recipe-is-a-list", "run $tmp/r.yaml --out $tmp/run", 2, "must hold a mapping",
         (put("r.yaml", "- stage: world\n- stage: sft\n"),)),
    Case("recipe-binary", "run $tmp/r.yaml --out $tmp/run", 2, "recipe '$tmp/r.yaml'",
         (put("r.yaml", bytes(range(256))),)),
    Case("recipe-unknown-stage", "run $tmp/r.yaml --out $tmp/run", 2, "unknown stage 'sfft'",
         (put("r.yaml", "name: r\nstages:\n  - {stage: sfft}\n"),)),
    Case("recipe-missing", "run $tmp/nope.yaml --out $tmp/run", 2, "recipe '$tmp/nope.yaml' does not exist"),
    Case("publish-to-an-existing-folder", "run $tmp/r.yaml --out $tmp/run --no-progress", 2,
         ("publish.to", "is a directory that is not a posttrain artifact", "--overwrite"),
         (put("r.yaml", SFT_RECIPE + "publish: {stage: sft, to: models/sft}\n"),
          put("models/sft/model.safetensors", "the model I shipped"))),
    Case("publish-to-the-recipe-folder", "run $tmp/rec/r.yaml --out $tmp/run --overwrite --no-progress", 2,
         "contains the recipe", (put("rec/r.yaml", SFT_RECIPE + "publish: {stage: sft, to: .}\n"),)),
    Case("run-out-is-not-a-run-folder", "run $tmp/r.yaml --out $tmp/run --no-progress", 2,
         "is not a run directory of `posttrain run`", (put("r.yaml", SFT_RECIPE), put("run/sft/paper.tex", "draft"))),
    Case("run-out-is-dot", "run $tmp/r.yaml --out . --no-progress", 2, "current directory", (put("r.yaml", SFT_RECIPE),)),
    # --- model directories
    Case("model-empty", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "'$tmp/m' is empty", (folder("m"),)),
    Case("model-without-tokenizer", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "holds no tokenizer",
         (model(drop=("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")),)),
    Case("model-without-config", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "has no config.json",
         (model(drop=("config.json",)),)),
    Case("model-config-not-json", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "config.json' is not valid JSON",
         (model(files={"config.json": '{"model_type": "llama",'}),)),
    Case("model-config-not-utf8", "sft --model $tmp/m --data $chats --out $tmp/out", 2,
         "config.json' is not valid UTF-8", (model(files={"config.json": b'{"model_type": "ll\xffama"}'}),)),
    Case("model-zero-byte-weights", "sft --model $tmp/m --data $chats --out $tmp/out", 2,
         "model.safetensors' is 0 bytes long", (model(files={"model.safetensors": b""}),)),
    Case("model-truncated-weights", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "the file is truncated",
         (model(cut="model.safetensors"),)),
    Case("model-garbage-weights", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "model.safetensors'",
         (model(files={"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64}),)),
    Case("model-pickle-weights-only", "sft --model $tmp/m --data $chats --out $tmp/out", 2,
         "holds no .safetensors weights",
         (model(drop=("model.safetensors",), files={"pytorch_model.bin": b"\x80\x04K\x01."}),)),
    Case("model-tokenizer-damaged", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "the tokenizer in '$tmp/m'",
         (model(cut="tokenizer.json"),)),
    Case("model-remote-code", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "--set model.trust_remote_code=true",
         (remote_code,), never="trust_remote_code=True"),
    Case("model-is-a-symlink-loop", "sft --model $tmp/l --data $chats --out $tmp/out", 2, "$tmp/l", (loop("l"),)),
    Case("model-is-a-file", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "$tmp/m", (put("m", "weights?"),)),
    Case("model-missing", "sft --model $tmp/m --data $chats --out $tmp/out", 2, "'$tmp/m' does not exist"),
    Case("pretrain-model-empty", "pretrain --model $tmp/m --data $tmp/c.jsonl --out $tmp/out", 2, "'$tmp/m' is empty",
         (folder("m"), jsonl("c.jsonl", {"text": "a b c"}))),
    Case("pretrain-model-is-a-symlink-loop", "pretrain --model $tmp/l --data $tmp/c.jsonl --out $tmp/out", 2, "$tmp/l",
         (loop("l"), jsonl("c.jsonl", {"text": "a b c"}))),
    Case("generate-zero-byte-weights", f"generate $tmp/m --prompts $tmp/p.jsonl {MODEL_OPTS}", 2,
         "model.safetensors' is 0 bytes long", (model(files={"model.safetensors": b""}), jsonl("p.jsonl", {"prompt": "Hi"}))),
    Case("eval-model-empty", f"eval $tmp/m --probes arithmetic --n 2 --out $tmp/r.json {MODEL_OPTS}", 2,
         "'$tmp/m' is empty", (folder("m"),)),
    Case("chat-model-without-tokenizer", f"chat $tmp/m {MODEL_OPTS}", 2, "holds no tokenizer",
         (model(drop=("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")),), stdin=b"Hi\n"),
    Case("chat-remote-code", f"chat $tmp/m {MODEL_OPTS}", 2, "model.trust_remote_code", (remote_code,), stdin=b"Hi\n"),
    # --- data files
    Case("data-truncated-jsonl", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2,
         ("$tmp/d.jsonl, line 3: is not valid JSON", "Each line must be one JSON object"),
         (jsonl("d.jsonl", CHAT, CHAT, tail=json.dumps(CHAT)[:40].encode()),)),
    Case("data-not-utf8", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2,
         ("$tmp/d.jsonl, line 2: is not valid UTF-8: byte 0xe9", "Save the file as UTF-8"),
         (jsonl("d.jsonl", CHAT, tail=BAD_UTF8_ROW),)),
    Case("data-corrupt-parquet", "sft --model $model --data $tmp/d.parquet --out $tmp/out", 2,
         "$tmp/d.parquet: is not a readable Parquet file", (put("d.parquet", b"PAR1 this is not a parquet file"),)),
    Case("data-is-a-fifo", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2, "$tmp/d.jsonl",
         (fifo("d.jsonl"),), hangs=True),
    Case("data-is-a-symlink-loop", "sft --model $model --data $tmp/l.jsonl --out $tmp/out", 2, "$tmp/l.jsonl",
         (loop("l.jsonl"),)),
    Case("data-folder-without-data", "sft --model $model --data $tmp/d --out $tmp/out", 2,
         "$tmp/d: is not a datasets saved directory", (folder("d"), put("d/readme.txt", "nothing here"))),
    Case("data-empty-file", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2, "$tmp/d.jsonl: holds no rows",
         (put("d.jsonl", ""),)),
    Case("data-unknown-extension", "sft --model $model --data $tmp/d.csv --out $tmp/out", 2,
         "has an unknown extension '.csv'", (put("d.csv", "a,b\n"),)),
    Case("data-missing", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2, "$tmp/d.jsonl: does not exist"),
    Case("data-role-bot", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2,
         "$tmp/d.jsonl, line 2: field 'messages[1].role' is 'bot'",
         (jsonl("d.jsonl", CHAT, {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}),)),
    Case("data-row-not-an-object", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2,
         "$tmp/d.jsonl, line 1: is not a JSON object", (jsonl("d.jsonl", "[1, 2]"),)),
    Case("data-json-not-a-list", "sft --model $model --data $tmp/d.json --out $tmp/out", 2,
         "$tmp/d.json: must hold a JSON list of rows", (put("d.json", '"just a string"'),)),
    Case("data-text-rows-for-sft", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 2,
         "is in the text format, but this stage takes", (jsonl("d.jsonl", {"text": "a"}),)),
    Case("data-20mb-message", "sft --model $model --data $tmp/d.jsonl --out $tmp/out", 0, "cut 1 text(s) longer than",
         (jsonl("d.jsonl", *[CHAT] * 7, {"messages": [{"role": "user", "content": "x" * 20_000_000},
                                                      {"role": "assistant", "content": "Ok."}]}),), writes=("out",)),
    Case("pretrain-truncated-corpus", "pretrain --model $model --data $tmp/c.jsonl --out $tmp/out", 2,
         "$tmp/c.jsonl, line 2: is not valid JSON", (jsonl("c.jsonl", {"text": "a b"}, tail=b'{"text": "a'),)),
    Case("pretrain-chat-rows", "pretrain --model $model --data $chats --out $tmp/out", 2,
         "is in the conversational format, but this stage takes text"),
    Case("tokenizer-truncated-corpus", "tokenizer train --data $tmp/c.jsonl --out $tmp/tok --vocab-size 300", 2,
         "$tmp/c.jsonl, line 2: is not valid JSON", (jsonl("c.jsonl", {"text": "a b"}, tail=b'{"te'),)),
    Case("tokenizer-corpus-not-utf8", "tokenizer train --data $tmp/c.jsonl --out $tmp/tok --vocab-size 300", 2,
         "$tmp/c.jsonl, line 1: is not valid UTF-8", (put("c.jsonl", b'{"text": "\xff"}\n'),)),
    Case("tokenizer-out-is-the-data", "tokenizer train --data $tmp/c.jsonl --out $tmp/c.jsonl --overwrite", 2,
         "is the --data path itself", (jsonl("c.jsonl", {"text": "a b"}),)),
    Case("tokenizer-vocab-100", "tokenizer train --data $tmp/c.jsonl --out $tmp/tok --vocab-size 100", 2,
         "vocab_size: 100 is out of range", (jsonl("c.jsonl", {"text": "a b"}),)),
    Case("tokenizer-data-is-a-symlink-loop", "tokenizer train --data $tmp/l.jsonl --out $tmp/tok", 2, "$tmp/l.jsonl",
         (loop("l.jsonl"),)),
    Case("world-out-is-a-file", "world build --out $tmp/w --scale 0.02 --probe-n 5", 2, "--out $tmp/w is a file",
         (put("w", "mine"),)),
    Case("world-out-is-dot", "world build --out . --scale 0.02 --probe-n 5", 2, "--out . is the current directory"),
    Case("world-scale-0", "world build --out $tmp/w --scale 0", 2, "scale: 0.0 is out of range"),
    Case("world-probe-n-0", "world build --out $tmp/w --probe-n 0", 2, "probe_n: 0 is out of range"),
    Case("world-records-negative", "world build --out $tmp/w --records -3", 2, "records: -3 is out of range"),
    # --- resume and checkpoints
    Case("resume-without-checkpoint", f"{SFT} --resume", 2, "--resume: there is no checkpoint in $tmp/out.checkpoints"),
    *[Case(f"resume-changed-{key}", f"{SFT} --resume {change}", 2, ("was written by a different run", says),
           (copy("ckpts", "out.checkpoints"), chats("other.jsonl", n=7)))
      for key, change, says in [("lr", "--set train.lr=2e-2", "train.lr: 0.0002 -> 0.02"),
                                ("steps", "--set train.max_steps=6", "train.max_steps: 2 -> 6"),
                                ("batch-size", "--set train.batch_size=2", "train.batch_size: 4 -> 2"),
                                ("data", "--data $tmp/other.jsonl", "data: sha256 ")]],
    Case("resume-pickled-checkpoint", f"{SFT} --resume", 2, ("cannot be loaded safely", "pickled object"),
         (pickled_checkpoint,), never="weights_only"),
    Case("resume-truncated-checkpoint", f"{SFT} --resume", 2, ("cannot be loaded safely", "damaged"),
         (cut_checkpoint,), never="weights_only"),
    # --- generate, chat, eval: prompts and piped lines
    Case("generate-1mb-prompt", f"generate $model --prompts $tmp/p.jsonl --out $tmp/out.jsonl --raw {MODEL_OPTS}", 2,
         ("the prompt at $tmp/p.jsonl, line 2", "--overlong truncate"),
         (jsonl("p.jsonl", {"prompt": "Hi"}, {"prompt": BIG_PROMPT}),)),
    Case("generate-role-bot", f"generate $model --prompts $tmp/p.jsonl {MODEL_OPTS}", 2,
         "$tmp/p.jsonl, line 1: field 'messages[1].role' is 'bot'",
         (jsonl("p.jsonl", {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}),)),
    Case("generate-prompts-not-utf8", f"generate $model --prompts $tmp/p.jsonl {MODEL_OPTS}", 2,
         ("$tmp/p.jsonl", "is not valid UTF-8: byte 0xe9 at line 2"),
         (jsonl("p.jsonl", {"prompt": "Hi"}, tail=b'{"prompt": "caf\xe9"}\n'),)),
    Case("generate-prompts-truncated", f"generate $model --prompts $tmp/p.jsonl {MODEL_OPTS}", 2,
         "$tmp/p.jsonl, line 2: is not valid JSON", (jsonl("p.jsonl", {"prompt": "Hi"}, tail=b'{"prompt": "Hel'),)),
    Case("generate-prompts-empty", f"generate $model --prompts $tmp/p.jsonl {MODEL_OPTS}", 2, "holds no prompts",
         (put("p.jsonl", "\n\n"),)),
    Case("generate-prompts-is-a-fifo", f"generate $model --prompts $tmp/p.jsonl {MODEL_OPTS}", 2, "$tmp/p.jsonl",
         (fifo("p.jsonl"),), hangs=True),
    Case("generate-out-is-the-prompts", f"generate $model --prompts $tmp/p.jsonl --out $tmp/p.jsonl {MODEL_OPTS}", 2,
         "--prompts", (jsonl("p.jsonl", {"prompt": "Hi"}),)),
    Case("generate-batch-size-0", f"generate $model --prompts $tmp/p.jsonl --batch-size 0 {MODEL_OPTS}", 2,
         "--batch-size must be at least 1", (jsonl("p.jsonl", {"prompt": "Hi"}),)),
    Case("generate-temperature-negative", f"generate $model --prompts $tmp/p.jsonl --temperature -1 {MODEL_OPTS}", 2,
         "temperature must be >= 0", (jsonl("p.jsonl", {"prompt": "Hi"}),)),
    Case("chat-unknown-command", f"chat $model --max-new-tokens 2 {MODEL_OPTS}", 0,
         "unknown command /frobnicate; it was not sent to the model", stdin=b"/frobnicate now\n/exit\n"),
    Case("chat-100kb-line", f"chat $model --max-new-tokens 2 {MODEL_OPTS}", 0, "message not sent",
         stdin=b"word " * 20_000 + b"\n"),
    Case("chat-not-utf8", f"chat $model --max-new-tokens 2 {MODEL_OPTS}", 0, "input line 1 is not valid UTF-8: byte 0xff",
         stdin=b"\xff\xfe bad\n"),
    Case("chat-temperature-negative", f"chat $model --temperature -1 {MODEL_OPTS}", 2, "temperature must be >= 0",
         stdin=b"Hi\n"),
    Case("eval-unknown-probe", f"eval $model --probes nope --out $tmp/r.json {MODEL_OPTS}", 2, "nope"),
    Case("eval-data-not-a-world", f"eval $model --probes arithmetic --n 2 --data $tmp/w --out $tmp/r.json {MODEL_OPTS}",
         2, "$tmp/w", (folder("w"), put("w/notes.txt", "not a world"))),
    Case("eval-batch-size-0", f"eval $model --probes arithmetic --batch-size 0 --out $tmp/r.json {MODEL_OPTS}", 2,
         "--batch-size must be at least 1"),
    # --- preference stages: the same envelope, their own rows and options
    *[Case(f"{cmd}-trains", f"{cmd} --model $model --data $tmp/p.jsonl --out $tmp/out", 0, (),
           (jsonl("p.jsonl", *[PAIR] * 8),), writes=("out",)) for cmd in ("reward", "dpo")],
    *[Case(f"{cmd}-{name}", f"{cmd} --model $model --data $tmp/p.jsonl --out $tmp/out", 2, says, (jsonl("p.jsonl", *rows),))
      for cmd in ("reward", "dpo") for name, rows, says in [
          ("row-without-rejected", [PAIR, {k: v for k, v in PAIR.items() if k != "rejected"}],
           "$tmp/p.jsonl, line 2: field 'rejected' is missing"),
          ("chosen-a-number", [PAIR, {**PAIR, "chosen": 3}], "$tmp/p.jsonl, line 2: field 'chosen' must be a non-empty list"),
          ("chosen-ends-with-user", [PAIR, {**PAIR, "chosen": [{"role": "user", "content": "Paris"}]}],
           "$tmp/p.jsonl, line 2: field 'chosen' must end with an assistant message"),
          ("margin-a-string", [PAIR, {**PAIR, "margin": "big"}], "$tmp/p.jsonl, line 2: field 'margin' must be a number"),
          ("chat-rows", [CHAT], "is in the conversational format, but this stage takes preference"),
          ("all-identical", [{**PAIR, "rejected": PAIR["chosen"]}] * 4, "left no usable pairs (0 longer than"),
      ]],
    Case("dpo-unknown-loss", "dpo --model $model --data $tmp/p.jsonl --out $tmp/out --set loss.type=dpo", 2,
         "loss.type: unknown loss 'dpo'; choose from sigmoid", (jsonl("p.jsonl", PAIR),)),
    Case("dpo-weights-mismatch", "dpo --model $model --data $tmp/p.jsonl --out $tmp/out --set loss.type=sigmoid,sft "
         "--set loss.weights=[1]", 2, "give one weight per loss", (jsonl("p.jsonl", PAIR),)),
    Case("dpo-out-is-the-data", "dpo --model $model --data $tmp/p.jsonl --out $tmp/p.jsonl --overwrite", 2,
         "is the --data path itself", (jsonl("p.jsonl", PAIR),)),
    Case("dpo-ref-model-missing", "dpo --model $model --data $tmp/p.jsonl --out $tmp/out --set loss.ref_model=$tmp/nope",
         2, "'$tmp/nope' does not exist", (jsonl("p.jsonl", *[PAIR] * 4),)),
    # --- the stages that sample their own answers: prompt rows (preference rows work too)
    Case("ppo-trains", "ppo --model $model --data $tmp/q.jsonl --out $tmp/out --set reward.model=gold", 0, (),
         (jsonl("q.jsonl", *[PROMPT] * 6),), writes=("out",)),
    Case("ppo-without-reward", "ppo --model $model --data $tmp/q.jsonl --out $tmp/out", 2,
         ("reward.model is not set", "--set reward.model="), (jsonl("q.jsonl", PROMPT),)),
    Case("ppo-reward-missing", "ppo --model $model --data $tmp/q.jsonl --out $tmp/out --set reward.model=$tmp/nope", 2,
         "reward '$tmp/nope' is neither a reward model directory", (jsonl("q.jsonl", *[PROMPT] * 6),)),
    *[Case(f"{name}-{case}", cmd, 2, says, (jsonl("q.jsonl", PROMPT, row),)) for name, cmd in [
        ("ppo", "ppo --model $model --data $tmp/q.jsonl --out $tmp/out --set reward.model=gold"),
        ("bon", f"bon $model --prompts $tmp/q.jsonl --reward gold --n 1,2 --out $tmp/out {MODEL_OPTS}"),
        ("preferences", f"preferences sample $model --prompts $tmp/q.jsonl --label gold --n 2 --out $tmp/o.jsonl"),
      ] for case, row, says in [
          ("prompt-a-number", {"prompt": 3}, "$tmp/q.jsonl, line 2: field 'prompt'"),
          ("prompt-ends-with-assistant", {"prompt": [{"role": "assistant", "content": "Hi"}]},
           "$tmp/q.jsonl, line 2: field 'prompt' ends with an assistant turn"),
          ("meta-a-list", {**PROMPT, "meta": [1]}, "$tmp/q.jsonl, line 2: field 'meta' must be an object"),
      ]],
    Case("grpo-trains", "grpo --model $model --data $tmp/q.jsonl --out $tmp/out", 0, (),
         (jsonl("q.jsonl", *[RLVR] * 6),), writes=("out",)),
    Case("grpo-with-tools", "grpo --model $model --data $tmp/q.jsonl --out $tmp/out --set tools.names=[calculator]", 0,
         (), (jsonl("q.jsonl", *[RLVR] * 6),), writes=("out",)),
    *[Case(f"grpo-{case}", "grpo --model $model --data $tmp/q.jsonl --out $tmp/out" + extra, 2, says,
           (jsonl("q.jsonl", RLVR, row),)) for case, row, extra, says in [
          ("no-verifier", PROMPT, "", ("$tmp/q.jsonl, line 2: the row names no verifier", "reward.verifiers")),
          ("verifier-a-number", {**RLVR, "verifier": 3}, "", "$tmp/q.jsonl, line 2: field 'verifier' must be a name"),
          ("unknown-verifier", {**RLVR, "verifier": "nope"}, "", "unknown verifier 'nope'"),
          ("verifier-module-missing", {**RLVR, "verifier": "no_such_module:f"}, "", "cannot import module 'no_such_module'"),
          ("tools-a-string", {**RLVR, "tools": "calculator"}, "", "$tmp/q.jsonl, line 2: field 'tools' must be"),
          ("unknown-tool", {**RLVR, "tools": ["abacus"]}, "", "unknown tool 'abacus'"),
          ("unknown-tool-option", RLVR, " --set tools.names=[abacus]", "unknown tool 'abacus'"),
          ("bad-loss-type", RLVR, " --set rl.loss_type=ppo", "rl.loss_type"),
      ]],
    Case("bon-n-zero", f"bon $model --prompts $tmp/q.jsonl --reward gold --n 0,2 --out $tmp/out {MODEL_OPTS}", 2, "--n",
         (jsonl("q.jsonl", PROMPT),)),
    Case("preferences-unknown-label", "preferences sample $model --prompts $tmp/q.jsonl --label nope --n 2 "
         "--out $tmp/o.jsonl", 2, "nope", (jsonl("q.jsonl", PROMPT),)),
    # --- the audit trail and the model card: ledgers, artifacts and run directories that are not what they claim
    Case("audit-verify-intact-artifact", "audit verify $tmp/a", 0, (), (copy("artifact", "a"),)),
    Case("audit-verify-missing", "audit verify $tmp/nope", 2, ("$tmp/nope does not exist", "Give a ledger file")),
    Case("audit-verify-not-a-ledger", "audit verify $tmp/l.jsonl", 2, "$tmp/l.jsonl is not a posttrain ledger",
         (jsonl("l.jsonl", CHAT),)),
    Case("audit-verify-empty-file", "audit verify $tmp/l.jsonl", 2, "is not a posttrain ledger", (put("l.jsonl", ""),)),
    Case("audit-verify-binary-file", "audit verify $tmp/l.jsonl", 2, "is not a posttrain ledger",
         (put("l.jsonl", b"\xff\xfe\x00\x01" * 100),)),
    Case("audit-verify-folder-without-ledger", "audit verify $tmp/d", 2, "$tmp/d holds no ledger.jsonl",
         (folder("d"), put("d/notes.txt", "mine"))),
    Case("audit-verify-artifact-without-ledger", "audit verify $tmp/a", 2, "is an artifact without ledger.jsonl",
         (copy("artifact", "a"), remove("a/ledger.jsonl"))),
    Case("audit-verify-edited-entry", "audit verify $tmp/a", 1, ("line 2 (seq 2, data): edited", "restore it from a copy"),
         (copy("artifact", "a"), tamper("a/ledger.jsonl"))),
    Case("audit-verify-edited-ledger-file", "audit verify $tmp/a/ledger.jsonl", 1, "line 1 (seq 1, model): edited",
         (copy("artifact", "a"), tamper("a/ledger.jsonl", line=1))),
    Case("audit-verify-cut-last-line", "audit verify $tmp/a", 1, "is an incomplete last entry (30 bytes",
         (copy("artifact", "a"), tamper("a/ledger.jsonl", cut=True))),
    Case("audit-verify-weights-changed", "audit verify $tmp/a", 1, "the weights on disk",
         (copy("artifact", "a"), put("a/model.safetensors", b"not the weights"))),
    Case("audit-verify-fifo", "audit verify $tmp/l.jsonl", 2, "$tmp/l.jsonl is neither a file nor a directory",
         (fifo("l.jsonl"),), hangs=True),
    Case("audit-verify-symlink-loop", "audit verify $tmp/l", 2, "$tmp/l", (loop("l"),)),
    Case("audit-show-edited-entry", "audit show $tmp/a", 0, "fails verification (1 problem",
         (copy("artifact", "a"), tamper("a/ledger.jsonl"))),
    Case("audit-show-not-a-ledger", "audit show $tmp/l.jsonl", 2, "is not a posttrain ledger", (put("l.jsonl", "hi\n"),)),
    Case("sft-from-a-model-with-an-edited-ledger", "sft --model $tmp/a --data $chats --out $tmp/out", 2,
         ("the lineage ledger of the starting model fails verification", "line 2 (seq 2, data): edited"),
         (copy("artifact", "a"), tamper("a/ledger.jsonl"))),
    Case("run-into-a-run-with-an-edited-ledger", "run $tmp/r.yaml --out $tmp/run --no-progress", 2,
         ("the run's ledger fails verification", "line 2 (seq 2, judge): edited", "Restore it from a copy"),
         (put("r.yaml", SFT_RECIPE), run_ledger("run"), tamper("run/ledger.jsonl"))),
    Case("audit-verify-run-with-an-edited-ledger", "audit verify $tmp/run", 1, "line 3 (seq 3, judge): edited",
         (run_ledger("run"), tamper("run/ledger.jsonl", line=3))),
    Case("card-regenerates", "card $tmp/a", 0, (), (copy("artifact", "a"), remove("a/README.md")),
         writes=("a/README.md",)),
    Case("card-not-an-artifact", "card $tmp/m", 2, "holds no provenance.json", (model(),)),
    Case("card-missing", "card $tmp/nope", 2, "holds no provenance.json"),
    Case("card-edited-ledger", "card $tmp/a", 2, ("fails verification (line 2 (seq 2, data): edited", "Restore"),
         (copy("artifact", "a"), tamper("a/ledger.jsonl"))),
    Case("card-eval-missing", "card $tmp/a --eval $tmp/r.json", 2, "--eval $tmp/r.json is not a file",
         (copy("artifact", "a"),)),
    Case("card-eval-not-json", "card $tmp/a --eval $tmp/r.json", 2, "--eval $tmp/r.json is not JSON",
         (copy("artifact", "a"), put("r.json", '{"probes": '))),
    Case("card-eval-not-a-report", "card $tmp/a --eval $tmp/r.json", 2, "is not a posttrain eval report",
         (copy("artifact", "a"), put("r.json", '{"probes": [1]}'))),
    # --- report: RUN_DIR, and --out against what exists
    Case("report-run-dir-missing", "report $tmp/nope", 2, ("RUN_DIR $tmp/nope does not exist", "--out DIR")),
    Case("report-run-dir-is-a-file", "report $tmp/f", 2, "RUN_DIR $tmp/f is a file, not a run directory", (put("f", "x"),)),
    Case("report-not-a-run-dir", "report $tmp/d", 2, ("RUN_DIR $tmp/d holds no posttrain stage", "recipe_state.json"),
         (put("d/notes.txt", "mine"), folder("d/sub"))),
    Case("report-writes", "report $tmp/run", 0, (), (a_run(),), writes=("run/report.html",)),
    Case("report-damaged-run", "report $tmp/run", 0,
         ("eval_report.json: not valid JSON", "metrics.jsonl: not valid UTF-8", "'gates' is not a list",
          "qa.jsonl: not a regular file"), (a_run(damaged=True),), writes=("run/report.html",), hangs=True),
    Case("report-out-is-a-file-of-mine", "report $tmp/run --out $tmp/mine.html", 2,
         ("--out $tmp/mine.html is a file (8 bytes) that is not a posttrain report", "--overwrite"),
         (a_run(), put("mine.html", "my notes"))),
    Case("report-out-is-a-directory", "report $tmp/run --out $tmp/d", 2, ("--out $tmp/d is a directory", "$tmp/d/report.html"),
         (a_run(), folder("d"))),
    Case("report-out-is-a-file-it-reads", "report $tmp/run --out $tmp/run/sft/provenance.json --overwrite", 2,
         ("is a file this report reads", "--overwrite does not change this"), (a_run(),)),
    Case("report-out-is-dot", "report $tmp/run --out .", 2, "--out . is the current directory", (a_run(),)),
    Case("report-out-under-a-file", "report $tmp/run --out $tmp/f/r.html", 2, "$tmp/f is a file, not a directory",
         (a_run(), put("f", "x"))),
    Case("report-out-unwritable", "report $tmp/run --out $tmp/ro/r.html", 2, "$tmp/ro is not writable",
         (a_run(), folder("ro")), patch=unwritable("ro")),
    Case("report-out-is-a-symlink-loop", "report $tmp/run --out $tmp/l", 2, "--out $tmp/l", (a_run(), loop("l"))),
    Case("report-out-is-a-fifo", "report $tmp/run --out $tmp/p", 2, "--out $tmp/p exists and is not a regular file",
         (a_run(), fifo("p")), hangs=True),
    Case("sft-trainable_tokens_from-missing", f"{SFT} --set model.lora.enabled=true "
         "--set model.lora.trainable_tokens_from=$tmp/corpus.jsonl", 2, ("model.lora.trainable_tokens_from", "corpus.jsonl")),
    Case("sft-trainable_tokens_from-chats", f"{SFT} --set model.lora.enabled=true "
         "--set model.lora.trainable_tokens_from=$chats", 2, ("model.lora.trainable_tokens_from", "'text'")),
    Case("sft-report_to-unknown", f"{SFT} --set train.report_to=wandb", 2, ("train.report_to", "tensorboard")),
    Case("sft-contamination_n-negative", f"{SFT} --set train.contamination_n=-1", 2,
         "train.contamination_n: -1 is out of range"),
    Case("sft-contamination_threshold-2", f"{SFT} --set train.contamination_threshold=2", 2,
         "train.contamination_threshold: 2.0 is out of range"),
    # --- releases: names, versions, registries and artifacts that cannot be released
    *[Case(f"release-{name}", f"release $tmp/a --registry $tmp/reg.sqlite {args}", code, says,
           (copy("artifact", "a"), *build), writes=("reg.sqlite",) if code == 0 else (),
           changes=("a/ledger.jsonl", "a/README.md"))
      for name, args, code, says, build in [
          ("writes", "--name n --version 1 --system-prompt hi --set generation.temperature=0.7", 0,
           "has no recorded release gates", ()),
          ("passed-gates", "--name n --version 1", 0, (), (with_gate("a", True),)),
          ("forced", "--name n --version 1 --force --reason 'a test'", 0, "released despite 1 failed gate(s), forced",
           (with_gate("a", False),)),
          ("bad-name", "--name 'a b' --version 1", 2, ("--name 'a b' is not a release name", "e.g. world-assistant"), ()),
          ("name-with-at", "--name a@b --version 1", 2, "--name 'a@b' is not a release name", ()),
          ("bad-version", "--name n --version '1 0'", 2, "--version '1 0' is not a version", ()),
          ("taken", "--name n --version 1", 2, ("n@1 is already released in $tmp/reg.sqlite", "give a new --version"),
           (released(),)),
          ("failed-gates", "--name n --version 1", 2, ("failed 1 of its 1 release gates", "harmful_refusal refusal_rate "
                                                       "0.500, needs >= 0.950: FAILED", "--force --reason TEXT"),
           (with_gate("a", False),)),
          ("force-without-reason", "--name n --version 1 --force", 2, "--force needs --reason TEXT", ()),
          ("reason-without-force", "--name n --version 1 --reason why", 2, "--reason explains a --force", ()),
          ("unknown-generation-setting", "--name n --version 1 --set generation.temp=1", 2,
           ("--set generation.temp: unknown generation setting", "generation.temperature"), ()),
          ("set-not-generation", "--name n --version 1 --set train.lr=1", 2, "--set expects generation.KEY=VALUE", ()),
          ("negative-temperature", "--name n --version 1 --set generation.temperature=-1", 2,
           "--set generation: temperature must be >= 0", ()),
          ("temperature-not-a-number", "--name n --version 1 --set generation.temperature=hot", 2,
           "--set generation.temperature='hot': must be a finite number", ()),
          ("registry-not-sqlite", "--name n --version 1", 2, ("--registry $tmp/reg.sqlite is not a SQLite database",
                                                              "Give --registry a registry file"),
           (put("reg.sqlite", "my notes, not a database\n" * 50),)),
          ("registry-of-another-kind", "--name n --version 1", 2, "is a SQLite database, but not a posttrain registry",
           (sqlite_of_another_kind("reg.sqlite"),)),
          ("registry-is-a-directory", "--name n --version 1", 2, "--registry $tmp/reg.sqlite is not a regular file",
           (folder("reg.sqlite"),)),
          ("edited-ledger", "--name n --version 1", 2, ("its audit trail does not hold (line 2 (seq 2, data): edited",
                                                        "posttrain audit verify"), (tamper("a/ledger.jsonl"),)),
          ("weights-changed", "--name n --version 1", 2, "the weights on disk",
           (put("a/model.safetensors", b"not the weights"),)),
          ("without-ledger", "--name n --version 1", 2, "has no lineage ledger", (remove("a/ledger.jsonl"),)),
      ]],
    Case("release-not-an-artifact", "release $tmp/m --name n --version 1 --registry $tmp/reg.sqlite", 2,
         "$tmp/m is not an artifact: it holds no provenance.json", (model(),)),
    Case("release-missing", "release $tmp/nope --name n --version 1 --registry $tmp/reg.sqlite", 2,
         "$tmp/nope is not an artifact"),
    Case("release-symlink-loop", "release $tmp/l --name n --version 1 --registry $tmp/reg.sqlite", 2, "ARTIFACT $tmp/l",
         (loop("l"),)),
    Case("release-registry-symlink-loop", "release $tmp/a --name n --version 1 --registry $tmp/l", 2, "--registry $tmp/l",
         (copy("artifact", "a"), loop("l"))),
    Case("release-registry-fifo", "release $tmp/a --name n --version 1 --registry $tmp/p", 2,
         "--registry $tmp/p is not a regular file", (copy("artifact", "a"), fifo("p")), hangs=True),
    # --- lineage: artifacts, names and registries that do not hold up
    Case("lineage-artifact", "lineage $tmp/a", 0, (), (copy("artifact", "a"),)),
    Case("lineage-release", "lineage n@1 --registry $tmp/reg.sqlite", 0, (), (copy("artifact", "a"), released())),
    Case("lineage-latest", "lineage n --registry $tmp/reg.sqlite", 0, (), (copy("artifact", "a"), released())),
    Case("lineage-unknown-name", "lineage m --registry $tmp/reg.sqlite", 2,
         ("m is neither an artifact directory nor a release name in $tmp/reg.sqlite (released names: n)", "NAME[@VERSION]"),
         (copy("artifact", "a"), released())),
    Case("lineage-unknown-version", "lineage n@2 --registry $tmp/reg.sqlite", 2, "n has no version '2' in $tmp/reg.sqlite; "
         "its versions: 1", (copy("artifact", "a"), released())),
    Case("lineage-no-registry", "lineage n --registry $tmp/none.sqlite", 2,
         ("there is no release registry at $tmp/none.sqlite", "Give an artifact directory")),
    Case("lineage-registry-not-sqlite", "lineage n --registry $tmp/reg.sqlite", 2,
         "--registry $tmp/reg.sqlite is not a SQLite database", (put("reg.sqlite", b"\xff\xfe" * 300),)),
    Case("lineage-registry-empty", "lineage n --registry $tmp/reg.sqlite", 2, "(released names: none)",
         (put("reg.sqlite", ""),)),
    Case("lineage-edited-ledger", "lineage n@1 --registry $tmp/reg.sqlite", 2, "its audit trail does not hold",
         (copy("artifact", "a"), released(), tamper("a/ledger.jsonl"))),
    Case("lineage-released-artifact-gone", "lineage n@1 --registry $tmp/reg.sqlite", 2,
         ("n@1 (registry $tmp/reg.sqlite) points at $tmp/a, which no longer holds the artifact", "Restore it"),
         (copy("artifact", "a"), released(), remove("a/provenance.json"))),
    Case("lineage-plain-model", "lineage $tmp/m", 2, "$tmp/m is not an artifact", (model(),)),
    # --- contamination: data and probe sets
    Case("contamination-clean", "contamination --data $tmp/d.jsonl --probes $tmp/p", 0, (),
         (chats(), jsonl("p/harmful.jsonl", PROBE_ROW))),
    Case("contamination-leak", "contamination --data $tmp/d.jsonl --probes $tmp/p/harmful.jsonl", 1,
         ("the training data contains text of held-out probe rows", "harmful 1/1 rows (100.0%"),
         (jsonl("d.jsonl", {"messages": [{"role": "user", "content": "What do I need to set off a void-salt charge in a "
                                                                     "crowded hall?"}]}), jsonl("p/harmful.jsonl", PROBE_ROW))),
    Case("contamination-data-missing", "contamination --data $tmp/nope.jsonl", 2, "$tmp/nope.jsonl: does not exist"),
    Case("contamination-data-not-json", "contamination --data $tmp/d.jsonl", 2, "$tmp/d.jsonl, line 1: is not valid JSON",
         (put("d.jsonl", "hello\n"),)),
    Case("contamination-data-not-utf8", "contamination --data $tmp/d.jsonl", 2, "is not valid UTF-8",
         (put("d.jsonl", BAD_UTF8_ROW),)),
    Case("contamination-data-fifo", "contamination --data $tmp/d.jsonl", 2, "is not a regular file", (fifo("d.jsonl"),),
         hangs=True),
    Case("contamination-probes-missing", "contamination --data $tmp/d.jsonl --probes $tmp/nope", 2,
         "--probes $tmp/nope does not exist", (chats(),)),
    Case("contamination-probes-empty-folder", "contamination --data $tmp/d.jsonl --probes $tmp/p", 2,
         "--probes $tmp/p holds no probe set", (chats(), folder("p"))),
    Case("contamination-probes-not-json", "contamination --data $tmp/d.jsonl --probes $tmp/p", 2,
         "$tmp/p/harmful.jsonl, line 1: is not valid JSON", (chats(), put("p/harmful.jsonl", "{\n"))),
    Case("contamination-n-zero", "contamination --data $tmp/d.jsonl --n 0", 2, "--n 0: the n-gram length must be at least 1",
         (chats(),)),
    Case("contamination-threshold-2", "contamination --data $tmp/d.jsonl --threshold 2", 2,
         "--threshold 2.0: must be a share between 0 and 1", (chats(),)),
    Case("contamination-threshold-nan", "contamination --data $tmp/d.jsonl --threshold nan", 2, "--threshold nan",
         (chats(),)),
    # --- a recipe's gates and release, checked before anything runs; a failed gate stops the run with exit 1
    *[Case(f"run-{name}", "run $tmp/r.yaml --out $tmp/run --no-progress", 2, says, (put("r.yaml", recipe),))
      for name, recipe, says in [
          ("gate-typo", gated("[{probe: harmful_refusal, mni: 0.9}]"),
           "recipe '$tmp/r.yaml', stage 'ev' (eval), gate 1: unknown key 'mni'. Did you mean 'min'?"),
          ("gate-unknown-probe", gated("[{probe: harmfull, min: 0.9}]"), "gate 1: unknown probe(s): harmfull"),
          ("gate-unknown-metric", gated("[{probe: harmful_refusal, metric: accuracy, min: 0.9}]"),
           "probe 'harmful_refusal' has no metric 'accuracy'; its metrics: refusal_rate"),
          ("gate-probe-not-run", gated("[{probe: over_refusal, max: 0.05}]"),
           "probe 'over_refusal' is not among the probes this stage runs (harmful_refusal)"),
          ("gate-no-bound", gated("[{probe: harmful_refusal}]"), "needs exactly one of min, max, above or below"),
          ("gate-bad-number", gated("[{probe: harmful_refusal, min: .nan}]"), "'min' must be a finite number"),
          ("gate-relative-unknown-stage", gated("[{probe: harmful_refusal, min: {stage: eval_sft}}]"),
           "'stage' must name an earlier eval stage"),
          ("gate-regression-not-parent", gated("[{regression: base}]"), "'regression' must be 'parent'"),
          ("gates-not-a-list", gated("{probe: harmful_refusal, min: 0.9}"), "'gates' must be a list of gates"),
          ("gates-on-a-training-stage-probe", SFT_RECIPE + "    gates: [{probe: harmful_refusal, min: 0.9}]\n",
           "stage kind 'sft' measures no probes"),
          ("top-level-gates", SFT_RECIPE + "gates: {fatal: maybe}\n", "the top-level 'gates' takes only 'fatal'"),
          ("release-typo", SFT_RECIPE + "release: {stage: sft, name: n, versoin: '1'}\n",
           "release: unknown key 'versoin'. Did you mean 'version'?"),
          ("release-not-a-training-stage", SFT_RECIPE + "release: {stage: world, name: n, version: '1'}\n",
           "release: 'stage' must name a training stage of the recipe"),
          ("release-bad-version", SFT_RECIPE + "release: {stage: sft, name: n, version: '1 0'}\n",
           "release: 'version' '1 0' is not a version"),
          ("release-force-without-reason", SFT_RECIPE + "release: {stage: sft, name: n, version: '1', force: true}\n",
           "'force: true' needs 'reason'"),
          ("release-bad-generation", SFT_RECIPE + "release: {stage: sft, name: n, version: '1', generation: {top_p: 2}}\n",
           "top_p must be in (0, 1]"),
      ]],
    Case("run-release-taken", "run $tmp/r.yaml --out $tmp/run --no-progress", 2,
         ("release: n@1 is already released in $tmp/reg.sqlite", "not by this run", "a new version"),
         (put("r.yaml", RELEASED_RECIPE), copy("artifact", "a"), released())),
    Case("run-failed-gate", "run $tmp/r.yaml --out $tmp/run --no-progress", 1,
         ("1 gate of stage 'ev' failed: gate 'harmful_refusal refusal_rate >= 1.1': harmful_refusal refusal_rate",
          "needs >= 1.100: FAILED", "mark the gate `fatal: false`"),
         (put("r.yaml", gated("[{probe: harmful_refusal, min: 1.1}]")),), writes=("run",)),
]


# ---------------------------------------------------------------- the shared inputs


@pytest.fixture(scope="session")
def fuzz_chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("fuzz_data") / "chats.jsonl", n=12)


def fast_argv(text: str) -> list[str]:
    argv = shlex.split(text)
    return argv[:1] + shlex.split(FAST.get(argv[0], "")) + argv[1:]


@pytest.fixture(scope="session")
def fuzz_ckpts(tiny_llama_dir, fuzz_chats, tmp_path_factory):
    """OUT.checkpoints of a FAST sft run killed during step 2: it holds step-000001."""
    out = tmp_path_factory.mktemp("fuzz_interrupted") / "sft"
    with pytest.MonkeyPatch.context() as mp:
        die_at_step(mp, 2)
        assert main(fast_argv(f"sft --model {tiny_llama_dir} --data {fuzz_chats} --out {out} "
                              "--set train.save_every=1")) == 130
    ckpts = out.parent / "sft.checkpoints"
    assert (ckpts / "step-000001" / "run.json").exists()
    return ckpts


@pytest.fixture(scope="session")
def fuzz_artifact(tiny_llama_dir, fuzz_chats, tmp_path_factory):
    """A finished FAST sft artifact."""
    out = tmp_path_factory.mktemp("fuzz_finished") / "sft"
    assert main(fast_argv(f"sft --model {tiny_llama_dir} --data {fuzz_chats} --out {out} --set train.max_steps=1")) == 0
    return out


class Paths(dict):
    """$tmp and the shared inputs, each fixture built when a case first names it."""

    FIXTURES = {"model": "tiny_llama_dir", "chats": "fuzz_chats", "ckpts": "fuzz_ckpts", "artifact": "fuzz_artifact"}

    def __init__(self, tmp: Path, request):
        super().__init__(tmp=tmp)
        self.request = request

    def __missing__(self, key):
        if key not in self.FIXTURES:
            raise KeyError(key)
        self[key] = Path(self.request.getfixturevalue(self.FIXTURES[key]))
        return self[key]

    def shared(self) -> list[Path]:
        return [v for k, v in self.items() if k != "tmp"]


# ---------------------------------------------------------------- snapshot and run


def snapshot(root: Path, ignore=frozenset()) -> dict[str, str]:
    """Every entry under `root`, walked without following symlinks or opening special files:
    a file's sha256, a directory's listing, a symlink's target, another type's name."""
    out = {}

    def visit(p: Path):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[str(p)] = f"symlink -> {os.readlink(p)}"
        elif stat.S_ISDIR(st.st_mode):
            names = sorted(n for n in os.listdir(p) if p / n not in ignore)
            out[str(p)] = "directory: " + " ".join(names)
            for n in names:
                visit(p / n)
        elif stat.S_ISREG(st.st_mode):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = f"special file {stat.S_IFMT(st.st_mode):o}"

    visit(root)
    return out


def run_cli(case: Case, argv: list[str], work: Path, monkeypatch, capsys) -> tuple[int | str, str]:
    """(exit code, stderr) of the command; exit code 'raised' or 'hung' when it did neither."""
    if case.hangs:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run([sys.executable, "-m", "posttrain.cli", *argv], cwd=work, input=case.stdin,
                                  capture_output=True, timeout=60, env=env)
        except subprocess.TimeoutExpired:
            return "hung", "still running after 60 s"
        return proc.returncode, proc.stderr.decode("utf-8", "replace")
    monkeypatch.chdir(work)
    for handler in logging.getLogger("transformers").handlers:  # its own handler kept the sys.stderr of when it
        if type(handler) is logging.StreamHandler:  # was made (an earlier test's capture); not pytest's handlers
            monkeypatch.setattr(handler, "stream", sys.stderr)
            monkeypatch.setattr(handler, "flush", sys.stderr.flush)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin), encoding="utf-8"))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    except BaseException:
        code = "raised"
        print(traceback.format_exc(), file=sys.stderr)
    return code, capsys.readouterr().err


def is_notice_or_progress(line: str) -> bool:
    return line.startswith("posttrain: ") or "\r" in line or re.search(r"\d+%\|", line) is not None


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.known)]
                                                 if c.known else []) for c in CASES])
def test_cli_fuzz(case: Case, tmp_path, request, monkeypatch, capsys):
    paths = Paths(tmp_path, request)
    (tmp_path / "work").mkdir()
    for step in case.build:
        step(tmp_path, paths)
    argv = fast_argv(Template(case.argv).substitute(paths))
    says = [Template(s).substitute(paths) for s in ([case.says] if isinstance(case.says, str) else case.says)]
    if case.patch:
        case.patch(monkeypatch, tmp_path)
    roots = [tmp_path, *paths.shared()]
    changing = {tmp_path / c for c in case.changes} if case.code == 0 else set()
    before = {r: snapshot(r, frozenset(changing)) for r in roots}

    code, stderr = run_cli(case, argv, tmp_path / "work", monkeypatch, capsys)

    assert "Traceback" not in stderr, stderr
    assert code == case.code, stderr
    lines = stderr.rstrip().split("\n")  # not splitlines: a progress bar's \r stays inside its line
    if case.code:
        assert lines, "no message on stderr"
        err = lines[-1]
        assert err.startswith(f"posttrain {argv[0]}: error: "), stderr
        assert all(is_notice_or_progress(x) for x in lines[:-1]), stderr  # one paragraph
    else:
        err = stderr
        assert ": error: " not in stderr, stderr
    for fragment in says:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert case.never is None or case.never not in err, err
    ignore = frozenset({tmp_path / w for w in case.writes} | changing)
    for root in roots:  # every input byte-identical, and nothing written but `writes`
        assert snapshot(root, ignore) == before[root], f"{root} changed"  # `writes` did not exist before
    for w in case.writes:
        assert (tmp_path / w).exists(), f"{w} was not written"

