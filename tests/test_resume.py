"""--resume continues only the same run: differences are refused with the list (key: checkpoint -> now),
explicit --allow-change overrides are recorded in provenance, a missing checkpoint is an error, the resume
says where it continues, and the first logging window after a resume averages the right steps."""

import json
import shutil

import pytest
import torch

from posttrain.cli import main
from posttrain.errors import ResumeError
from posttrain.training.resume import differences, format_differences, resolve_allowed, run_identity
from test_safety import refused, sft_args, snapshot, write_chats


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


def die_at_step(monkeypatch, n: int):
    """Make the n-th optimizer step raise KeyboardInterrupt (a killed run); return a function that undoes it."""
    real = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying)
    return lambda: monkeypatch.setattr(torch.optim.AdamW, "step", real)


@pytest.fixture
def interrupted(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    """A 4-step run killed during step 3, with its step-2 checkpoint: (argv of that run, out)."""
    out = tmp_path / "sft"
    argv = sft_args(tiny_llama_dir, chat_file, out, "--set", "train.max_steps=4", "--set", "train.save_every=2")
    undo = die_at_step(monkeypatch, 3)
    assert main(argv) == 130  # interrupted
    undo()
    assert not out.exists() and (tmp_path / "sft.checkpoints" / "step-000002" / "run.json").exists()
    return argv, out


def test_resume_with_other_settings_and_data_is_refused_with_the_differences(interrupted, tmp_path, capsys):
    argv, out = interrupted
    other = write_chats(tmp_path / "other.jsonl", n=30)
    ckpts = tmp_path / "sft.checkpoints"
    before = snapshot(ckpts)
    changed = [a if a != argv[argv.index("--data") + 1] else str(other) for a in argv]
    err = refused(capsys, changed + ["--resume", "--set", "train.lr=2e-2", "--set", "train.max_steps=6",
                                     "--set", "train.batch_size=2"],
                  f"--resume: the checkpoint {ckpts / 'step-000002'} (step 2) was written by a different run: ",
                  "train.batch_size: 4 -> 2", "train.lr: 0.01 -> 0.02", "train.max_steps: 4 -> 6",
                  "--allow-change data --allow-change train.batch_size --allow-change train.lr --allow-change train.max_steps")
    assert "data: sha256 " in err and " -> sha256 " in err
    assert snapshot(ckpts) == before and not out.exists()


def test_allowed_change_is_recorded_with_its_step(interrupted, capsys):
    argv, out = interrupted
    assert main(argv + ["--resume", "--allow-change", "lr", "--set", "train.lr=5e-3"]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 2 of 4" in err and "train.lr: 0.01 -> 0.005" in err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"]["train"]["lr"] == 5e-3 and prov["metrics"]["steps"] == 4
    assert prov["resumes"] == [{"resumed_at_step": 2, "checkpoint": "step-000002",
                                "changes": [{"key": "train.lr", "from": 0.01, "to": 0.005}]}]


def test_same_run_resumes_and_says_where(interrupted, capsys):
    argv, out = interrupted
    assert main(argv + ["--resume", "--set", "train.log_every=2"]) == 0  # how a run is watched may change
    assert "posttrain: resuming from step 2 of 4 (checkpoint " in capsys.readouterr().err
    assert json.loads((out / "provenance.json").read_text())["resumes"][0]["changes"] == []


def test_resume_without_a_checkpoint_is_an_error(tiny_llama_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "sft"
    refused(capsys, sft_args(tiny_llama_dir, chat_file, out, "--resume"),
            f"--resume: there is no checkpoint in {tmp_path / 'sft.checkpoints'}, so there is nothing to resume",
            "Run without --resume to start from scratch")
    assert not out.exists()


def test_fresh_start_over_an_unfinished_run_needs_overwrite(interrupted, tmp_path, capsys):
    argv, out = interrupted
    ckpts = tmp_path / "sft.checkpoints"
    before = snapshot(ckpts)
    refused(capsys, argv, f"{ckpts} holds checkpoints of an unfinished run (latest step-000002)", "--resume", "--overwrite")
    assert snapshot(ckpts) == before
    assert main(argv + ["--overwrite"]) == 0
    assert "removed 1 checkpoint(s) of an earlier run" in capsys.readouterr().err
    assert json.loads((out / "provenance.json").read_text())["resumes"] == []


def test_unknown_allow_change_key_is_an_error(interrupted, capsys):
    argv, _ = interrupted
    err = refused(capsys, argv + ["--resume", "--allow-change", "learning_rate"])
    assert "--allow-change learning_rate: no such key" in err


def test_first_logging_window_after_a_resume_averages_the_right_steps(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    def argv(out):
        return sft_args(tiny_llama_dir, chat_file, out, "--set", "train.max_steps=6", "--set", "train.save_every=2",
                        "--set", "train.log_every=3")

    assert main(argv(tmp_path / "full")) == 0
    undo = die_at_step(monkeypatch, 3)  # killed in step 3: the step-2 checkpoint holds steps 1-2 of the window 1-3
    assert main(argv(tmp_path / "resumed")) == 130
    undo()
    assert main(argv(tmp_path / "resumed") + ["--resume"]) == 0

    def lines(out):
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    full, resumed = lines(tmp_path / "full"), lines(tmp_path / "resumed")
    assert [x["step"] for x in resumed] == [3, 6]
    for a, b in zip(full, resumed):  # the resumed run is bit-identical, so its windows must be too
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=0)


def test_identity_differences_and_allowed_keys():
    old = run_identity({"train": {"lr": 0.01, "log_every": 1}, "data": {"eval_data": "/a/e.jsonl"}}, "m1",
                       {"data": "a" * 64, "data.eval_data": "e" * 64})
    new = run_identity({"train": {"lr": 0.02, "log_every": 5}, "data": {"eval_data": "/moved/e.jsonl"}}, "m1",
                       {"data": "b" * 64, "data.eval_data": "e" * 64})
    assert "train.log_every" not in old  # operational: may change on resume
    diffs = differences(old, new)
    assert diffs == [("data", "a" * 64, "b" * 64), ("train.lr", 0.01, 0.02)]  # a moved file with the same content is the same
    assert format_differences(diffs) == "data: sha256 aaaaaaaaaaaa -> sha256 bbbbbbbbbbbb; train.lr: 0.01 -> 0.02"
    assert resolve_allowed(["lr", "data"], set(old)) == {"train.lr", "data"}
    with pytest.raises(ResumeError, match="no such key"):
        resolve_allowed(["nope"], set(old))


def test_recipe_runner_still_resumes_its_own_interrupted_stage(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    import yaml

    from posttrain.recipes import Runner, load_recipe

    recipe = {"name": "r", "stages": [{"name": "sft", "stage": "sft", "model": str(tiny_llama_dir), "data": str(chat_file),
                                        "config": {"model": {"dtype": "fp32", "device": "cpu"}, "data": {"max_length": 64},
                                                   "train": {"max_steps": 4, "save_every": 2, "batch_size": 4}}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    undo = die_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    undo()
    steps = []
    real = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), real(self, *a, **k))[1])
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    assert len(steps) == 2  # steps 3 and 4 only
    shutil.rmtree(tmp_path / "run" / "sft")  # a finished stage whose folder is gone reruns from scratch
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    assert len(steps) == 6


def test_stop_at_step_gives_the_checkpoint_of_the_whole_run_at_that_step(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    """train.stop_at_step ends the run early on the whole run's schedule: the artifact's weights are the
    step-3 checkpoint's of the uninterrupted 6-step run, and its last lr is that run's at step 3, not the floor."""
    from safetensors.torch import load_file

    def argv(out, *extra):
        return sft_args(tiny_llama_dir, chat_file, out, "--set", "train.max_steps=6", "--set", "train.save_every=3",
                        "--set", "train.log_every=1", *extra)

    undo = die_at_step(monkeypatch, 4)  # the 6-step run killed in step 4 keeps its step-3 checkpoint
    assert main(argv(tmp_path / "full")) == 130
    undo()
    ckpt = load_file(str(tmp_path / "full.checkpoints" / "step-000003" / "trainable.safetensors"))
    assert main(argv(tmp_path / "stopped", "--set", "train.stop_at_step=3")) == 0
    stopped = load_file(str(tmp_path / "stopped" / "model.safetensors"))
    shared = [k for k in ckpt if k in stopped]
    assert shared and all(torch.equal(ckpt[k].to(stopped[k].dtype), stopped[k]) for k in shared)
    lines = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [x["step"] for x in lines] == [1, 2, 3]
    full_lr = json.loads((tmp_path / "full.checkpoints" / "step-000003" / "state.json").read_text())["metrics_lines"][2]["lr"]
    assert lines[2]["lr"] == pytest.approx(full_lr) and lines[2]["lr"] > 1e-2 * 0.1 * 1.5  # well above the floor


def test_resuming_past_stop_at_step_is_refused(interrupted, capsys):
    argv, _ = interrupted  # a 4-step run with its step-2 checkpoint
    capsys.readouterr()
    assert main(argv + ["--resume", "--set", "train.stop_at_step=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain sft: error: ") and "\n" not in err
    assert "is at step 2, past train.stop_at_step=1" in err and "--overwrite" in err


def test_stop_at_step_may_change_on_resume(interrupted, capsys):
    """Where a run stops does not change what its checkpoints hold, so a run killed with stop_at_step 0
    resumes with stop_at_step 3 without --allow-change, and ends after step 3."""
    argv, out = interrupted  # a 4-step run with its step-2 checkpoint
    assert main(argv + ["--resume", "--set", "train.stop_at_step=3"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [x["step"] for x in lines][-1] == 3 and "resume accepts changed settings" not in capsys.readouterr().err
