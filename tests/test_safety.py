"""No run destroys data: refused outputs (inputs byte-identical afterwards), writability and room checked
before the model loads, stale temporaries cleaned, and a NaN/divergence guard that only ever keeps
finite, bounded checkpoints and prints advice that works. Resume checks: tests/test_resume.py."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.errors import OutputError
from posttrain.outputs import check_output, clean_stale_temporaries, describe, relation
from posttrain.recipes import Runner, load_recipe
from posttrain.training.trainer import lower_lr, max_abs, weights_pass

QA = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima")]


def write_chats(path, n=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            c, a = QA[i % len(QA)]
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is the capital of {c}?"},
                                             {"role": "assistant", "content": f"The capital of {c} is {a}."}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


def sft_args(model, data, out, *extra):
    sets = ["model.dtype=fp32", "model.device=cpu", "train.batch_size=4", "data.max_length=64", "train.max_steps=2",
            "train.lr=1e-2", "train.log_every=1"]
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress",
            *[a for s in sets for a in ("--set", s)], *extra]


def snapshot(*roots) -> dict:
    """sha256 of every file under each root (a file or a directory)."""
    out = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    assert out, f"nothing to snapshot under {roots}"
    return out


def refused(capsys, argv, *fragments) -> str:
    """Run the CLI, expect exit code 2 and a one-paragraph error holding every fragment."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"posttrain {argv[0]}: error: ") and "\n" not in err and "Traceback" not in err, err
    for frag in fragments:
        assert frag in err, f"{frag!r} not in {err!r}"
    return err


def hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def model_copy(tiny_llama_dir, tmp_path):
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "mcopy"))


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a stage gets as far as loading the model."""
    import posttrain.stages.common as common

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(common, "load_model", boom)


# ---------------------------------------------------------------- victims: inputs survive byte for byte


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_holding_the_training_data_is_refused(tiny_llama_dir, tmp_path, capsys, no_model_load, overwrite):
    victim = tmp_path / "victim"
    data = write_chats(victim / "chat.jsonl")
    (victim / "notes.txt").write_text("my notes")
    before = snapshot(victim)
    refused(capsys, sft_args(tiny_llama_dir, data, victim, *(["--overwrite"] if overwrite else [])),
            f"--out {victim} contains --data {data}", "--overwrite does not change this")
    assert snapshot(victim) == before and hidden_siblings(victim) == []


@pytest.mark.parametrize("out_name", ["mcopy", "mcopy/sft"])
def test_out_at_or_inside_the_model_is_refused_even_with_overwrite(model_copy, chat_file, tmp_path, capsys, no_model_load,
                                                                   out_name):
    before = snapshot(model_copy)
    what = "is the --model path itself" if out_name == "mcopy" else f"lies inside --model {model_copy}"
    refused(capsys, sft_args(model_copy, chat_file, tmp_path / out_name, "--overwrite"), what)
    assert snapshot(model_copy) == before and not (model_copy / "sft").exists()


def test_out_holding_the_config_file_or_eval_data_is_refused(tiny_llama_dir, chat_file, tmp_path, capsys, no_model_load):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "sft.yaml").write_text("train:\n  max_steps: 2\n")
    eval_data = write_chats(victim / "eval.jsonl", n=5)
    before = snapshot(victim)
    refused(capsys, sft_args(tiny_llama_dir, chat_file, victim, "--overwrite", "--config", str(victim / "sft.yaml")),
            "contains --config")
    refused(capsys, sft_args(tiny_llama_dir, chat_file, victim, "--overwrite", "--set", f"data.eval_data={eval_data}"),
            "contains data.eval_data")
    assert snapshot(victim) == before


def test_existing_file_at_out_is_kept(tiny_llama_dir, chat_file, tmp_path, capsys, no_model_load):
    target = tmp_path / "results.txt"
    target.write_text("three weeks of results")
    refused(capsys, sft_args(tiny_llama_dir, chat_file, target), f"--out {target} is a file (22 bytes)", "--overwrite")
    assert target.read_text() == "three weeks of results" and hidden_siblings(target) == []


def test_directory_that_is_not_an_artifact_is_kept(tiny_llama_dir, chat_file, tmp_path, capsys, no_model_load):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    refused(capsys, sft_args(tiny_llama_dir, chat_file, target),
            "is a directory that is not a posttrain artifact (1 entries: notes.txt)", "pass --overwrite")
    assert (target / "notes.txt").read_text() == "keep me"


def test_second_run_to_the_same_out_needs_overwrite(tiny_llama_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "sft"
    out.mkdir()  # an empty directory holds nothing to lose
    assert main(sft_args(tiny_llama_dir, chat_file, out, "--set", "train.max_steps=1")) == 0
    first = json.loads((out / "provenance.json").read_text())
    before = snapshot(out)
    refused(capsys, sft_args(tiny_llama_dir, chat_file, out),
            f"already holds a finished posttrain artifact ({first['artifact_id']}, stage sft)", "--overwrite")
    assert snapshot(out) == before
    assert main(sft_args(tiny_llama_dir, chat_file, out, "--overwrite")) == 0
    assert json.loads((out / "provenance.json").read_text())["metrics"]["steps"] == 2
    assert hidden_siblings(out) == []


# ---------------------------------------------------------------- where --out may be at all


@pytest.mark.parametrize("out,why", [(".", "the current directory"), ("..", "a parent of the current directory"),
                                     ("/", "the filesystem root")])
def test_out_dot_dotdot_and_root_are_refused(tiny_llama_dir, chat_file, tmp_path, capsys, monkeypatch, no_model_load,
                                             out, why):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.name for p in tmp_path.iterdir())
    refused(capsys, sft_args(tiny_llama_dir, chat_file, out, "--overwrite"), f"--out {out} is {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and list(work.iterdir()) == []


def test_out_under_a_file_is_refused_before_the_model_loads(tiny_llama_dir, chat_file, tmp_path, capsys, no_model_load):
    (tmp_path / "somefile").write_text("x")
    err = refused(capsys, sft_args(tiny_llama_dir, chat_file, tmp_path / "somefile" / "sub"))
    assert f"cannot be created: {tmp_path / 'somefile'} is a file" in err


def test_unwritable_parent_is_refused_before_the_model_loads(tiny_llama_dir, chat_file, tmp_path, capsys, monkeypatch,
                                                             no_model_load):
    import posttrain.outputs as outputs

    ro = tmp_path / "readonly"
    ro.mkdir()
    real_access = os.access  # tests run as root, for whom chmod does not block writes
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    refused(capsys, sft_args(tiny_llama_dir, chat_file, ro / "new" / "sft"), f"{ro} is not writable")
    assert list(ro.iterdir()) == []


def test_no_room_for_the_artifact_is_refused_before_the_model_loads(tiny_llama_dir, chat_file, tmp_path, capsys,
                                                                    monkeypatch, no_model_load):
    import posttrain.outputs as outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "sft"
    err = refused(capsys, sft_args(tiny_llama_dir, chat_file, out), "has 0.00 GB free, but the result needs about")
    assert "has 0.00 GB free, but the result needs about" in err and not out.exists()


def test_relation_and_describe(tmp_path):
    a = tmp_path / "a"
    assert relation(a, a) == "is" and relation(a, a / "x") == "contains" and relation(a / "x", a) == "inside"
    assert relation(a, tmp_path / "ab") is None
    assert describe(a) is None
    a.mkdir()
    assert describe(a) is None  # empty: nothing to lose
    (a / "tokenizer_provenance.json").write_text("{}")
    assert describe(a) == "already holds a finished posttrain tokenizer"
    with pytest.raises(OutputError, match="already holds a finished posttrain tokenizer"):
        check_output(a, inputs={}, overwrite=False)
    assert check_output(a, inputs={}, overwrite=True) == a.resolve()


# ---------------------------------------------------------------- temporaries of killed saves


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_cleaned_at_the_next_start(tiny_llama_dir, chat_file, tmp_path, capsys):
    pid = dead_pid()
    stale = tmp_path / f".sft.tmp-{pid}-1700000000000"
    (stale / "model.safetensors").parent.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    live = tmp_path / f".sft.tmp-{os.getpid()}-1"  # a process that is still running: left alone
    live.mkdir()
    other = tmp_path / f".other.tmp-{pid}-1"  # another output's: not ours to judge
    other.mkdir()
    ckpts = tmp_path / "sft.checkpoints"
    (ckpts / f".step-000002.tmp-{pid}-5").mkdir(parents=True)
    assert main(sft_args(tiny_llama_dir, chat_file, tmp_path / "sft")) == 0
    err = capsys.readouterr().err
    assert f"removed {stale}, a temporary copy left by a save that was killed" in err
    assert f".step-000002.tmp-{pid}-5" in err
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "sft" / "provenance.json").exists()


def test_a_target_moved_aside_by_a_killed_replace_is_restored(tmp_path, capsys):
    pid = dead_pid()
    old = tmp_path / f".sft.old-{pid}"
    old.mkdir()
    (old / "provenance.json").write_text('{"artifact_id": "sft-1"}')
    assert clean_stale_temporaries(tmp_path, "sft") == [
        f"restored {tmp_path / 'sft'} from {old.name}, left by a save that was killed (process gone)"]
    assert (tmp_path / "sft" / "provenance.json").read_text() == '{"artifact_id": "sft-1"}'
    assert "restored" in capsys.readouterr().err


# ---------------------------------------------------------------- recipes: publish.to and run directories


def sft_recipe(tmp_path, model, data, publish_to):
    recipe = {"name": "r", "stages": [{"name": "sft", "stage": "sft", "model": str(model), "data": str(data),
                                        "config": {"model": {"dtype": "fp32", "device": "cpu"},
                                                   "train": {"max_steps": 1, "batch_size": 4}}}],
              "publish": {"stage": "sft", "to": publish_to}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def forbid_training(monkeypatch):
    import posttrain.stages.sft as sft

    monkeypatch.setattr(sft.STAGE, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained anyway")))


def test_publish_to_an_existing_folder_is_refused_before_training(tiny_llama_dir, chat_file, tmp_path, capsys, monkeypatch):
    dest = tmp_path / "models" / "sft"
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"the model I shipped")
    before = snapshot(dest)
    recipe = sft_recipe(tmp_path, tiny_llama_dir, chat_file, "models/sft")
    forbid_training(monkeypatch)
    refused(capsys, ["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"],
            f"publish.to ({recipe}) {dest} is a directory that is not a posttrain artifact", "--overwrite")
    assert snapshot(dest) == before


def test_publish_to_the_recipe_folder_is_refused_even_with_overwrite(tiny_llama_dir, chat_file, tmp_path, capsys,
                                                                      monkeypatch):
    recipe = sft_recipe(tmp_path, tiny_llama_dir, chat_file, ".")
    before = snapshot(recipe)
    forbid_training(monkeypatch)
    refused(capsys, ["run", str(recipe), "--out", str(tmp_path / "run"), "--overwrite", "--no-progress"],
            "contains the recipe")
    assert snapshot(recipe) == before


def test_run_directory_that_is_not_one_is_refused(tiny_llama_dir, chat_file, tmp_path, capsys, monkeypatch):
    run = tmp_path / "project"
    run.mkdir()
    (run / "sft").mkdir()
    (run / "sft" / "paper.tex").write_text("draft")
    recipe = sft_recipe(tmp_path, tiny_llama_dir, chat_file, "models/sft")
    forbid_training(monkeypatch)
    refused(capsys, ["run", str(recipe), "--out", str(run), "--no-progress"], "is not a run directory of `posttrain run`")
    (run / "recipe_state.json").write_text('{"done": {}, "started": {}}')  # a run dir, but it never wrote sft/
    with pytest.raises(OutputError, match="but this run did not write it"):
        Runner(load_recipe(recipe), run, progress=False).run()
    assert (run / "sft" / "paper.tex").read_text() == "draft"


# ---------------------------------------------------------------- the divergence guard


def test_weight_check_functions():
    assert max_abs([torch.tensor([1.0, -3.0]), torch.tensor([2.0])]) == 3.0
    assert not weights_pass(max_abs([torch.tensor([1.0, float("nan")])]), 1e4)
    assert not weights_pass(max_abs([torch.tensor([float("-inf")])]), 1e4)
    assert not weights_pass(2e4, 1e4) and weights_pass(9e3, 1e4)
    assert lower_lr(2e-4) == "2e-05" and lower_lr(1e30) == "1e-04" and lower_lr(float("inf")) == "1e-04"


def checkpoint_tensors(ckpts: Path) -> list[dict]:
    return [load_file(str(p / "trainable.safetensors")) for p in sorted(ckpts.glob("step-*"))]


def assert_only_good_checkpoints(ckpts: Path):
    for tensors in checkpoint_tensors(ckpts):
        assert all(torch.isfinite(t).all() for t in tensors.values())
        assert max(float(t.abs().max()) for t in tensors.values()) < 1e4


def nan_after_first_update(monkeypatch):
    """AdamW whose first update leaves every weight nan (what an overflowing update does)."""
    real_step = torch.optim.AdamW.step

    def nan_step(self, *a, **k):
        out = real_step(self, *a, **k)
        with torch.no_grad():
            for g in self.param_groups:
                for p in g["params"]:
                    p.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", nan_step)


# lr=inf is refused by the config's range (a finite lr > 0, at most 1e30); a non-finite update is patched in instead.
@pytest.mark.parametrize("blow_up,what", [("lr=1e30", "the largest trained weight is 1e+30, above the limit 1e+04"),
                                          ("nan", "after the update a trained weight is nan")])
def test_diverging_lr_keeps_no_bad_weights_and_the_advice_works(tiny_llama_dir, chat_file, tmp_path, capsys,
                                                                blow_up, what):
    out = tmp_path / "sft"
    extra = ["--set", "train.lr=1e30"] if blow_up == "lr=1e30" else []
    argv = sft_args(tiny_llama_dir, chat_file, out, *extra, "--set", "train.save_every=1")
    with pytest.MonkeyPatch.context() as mp:
        if blow_up == "nan":
            nan_after_first_update(mp)
        err = refused(capsys, argv, "step 1: ", what, "nothing to resume")
    assert not out.exists()
    assert_only_good_checkpoints(tmp_path / "sft.checkpoints")
    advice = re.search(r"rerun the same command adding (--set train\.lr=\S+) to start again", err).group(1)
    assert main(argv + advice.split()) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"]["train"]["lr"] == 1e-4 and prov["metrics"]["steps"] == 2


def test_blow_up_after_checkpoints_names_the_last_good_one_and_its_resume_works(tiny_llama_dir, chat_file, tmp_path,
                                                                                capsys, monkeypatch):
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def exploding_step(self, *a, **k):
        calls["n"] += 1
        out = real_step(self, *a, **k)
        if calls["n"] == 3:  # the update of step 3 sends the weights to 1e30
            with torch.no_grad():
                for g in self.param_groups:
                    for p in g["params"]:
                        p.mul_(1e30)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", exploding_step)
    out = tmp_path / "sft"
    argv = sft_args(tiny_llama_dir, chat_file, out, "--set", "train.save_every=1", "--set", "train.max_steps=4")
    ckpts = tmp_path / "sft.checkpoints"
    err = refused(capsys, argv, "step 3: after the update the largest trained weight is",
                  f"The last checkpoint that passed the weight check is {ckpts / 'step-000002'} (after step 2)")
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000001", "step-000002"]
    assert_only_good_checkpoints(ckpts)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    advice = re.search(r"rerun the same command adding (--resume --allow-change train\.lr --set train\.lr=\S+?)\.$",
                       err).group(1)
    assert advice == "--resume --allow-change train.lr --set train.lr=1e-04"
    assert main(argv + advice.split()) == 0
    assert "resuming from step 2 of 4" in capsys.readouterr().err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["resumes"] == [{"resumed_at_step": 2, "checkpoint": "step-000002",
                                "changes": [{"key": "train.lr", "from": 0.01, "to": 1e-4}]}]
    assert prov["config"]["train"]["lr"] == 1e-4 and prov["metrics"]["steps"] == 4


# ---------------------------------------------------------------- other commands that write --out


def test_tokenizer_and_world_commands_keep_existing_data(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    corpus = victim / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(20)))
    before = snapshot(victim)
    refused(capsys, ["tokenizer", "train", "--data", str(corpus), "--out", str(victim), "--overwrite"],
            f"--out {victim} contains --data {corpus}")
    refused(capsys, ["world", "build", "--out", str(victim)], "is a directory that is not a posttrain artifact")
    assert snapshot(victim) == before


def test_size_estimate_of_a_new_pretraining_model_is_exact():
    from conftest import build_tokenizer

    from posttrain.stages.pretrain import ArchConfig, llama_parameter_count, new_model

    tok = build_tokenizer()
    for tie in (True, False):
        arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                          max_position=64, tie_embeddings=tie)
        model = new_model(tok, arch, seed=0)
        assert llama_parameter_count(len(tok), arch) == sum(p.numel() for p in model.parameters())
