"""Recipes: a tiny world -> tokenizer -> pretrain -> sft -> eval chain, provenance linked stage to stage,
skipping of unchanged stages, reruns of changed ones, quick overrides, publishing, and recipe errors."""

import json
import shutil

import pytest
import yaml

from posttrain.cli import main
from posttrain.errors import ConfigError
from posttrain.recipes import Runner, load_recipe

STAGES = ["world", "tokenizer", "base", "sft", "eval"]
CPU_FP32 = {"dtype": "fp32", "device": "cpu"}
RECIPE = {
    "name": "tiny",
    "stages": [
        {"name": "world", "stage": "world", "seed": 0, "scale": 0.02},
        {"name": "tokenizer", "stage": "tokenizer", "data": "@world/corpus.jsonl", "vocab_size": 400},
        {"name": "base", "stage": "pretrain", "model": "@tokenizer", "data": "@world/corpus.jsonl", "config": {
            "arch": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2,
                     "intermediate_size": 64, "max_position": 128},
            "model": CPU_FP32, "data": {"seq_len": 128}, "train": {"max_steps": 3, "batch_size": 4}}},
        {"name": "sft", "stage": "sft", "data": "@world/sft.jsonl", "config": {
            "model": CPU_FP32, "data": {"max_length": 128}, "train": {"max_steps": 2, "batch_size": 4}}},
        {"name": "eval", "stage": "eval", "probes": ["cloze_recall"], "n": 4, "source": "@world", "batch_size": 4},
    ],
    "quick": {"sft": {"config": {"train": {"max_steps": 1}}}, "eval": {"n": 2}},
    "publish": {"stage": "sft", "to": "published/sft"},
}

# Every function a stage kind runs, as the runner imports it.
# (module, attribute, name recorded): training stages run through their registered Stage object's `run`.
STAGE_FUNCTIONS = [("posttrain.world.build", "build_world", "build_world"),
                   ("posttrain.stages.tokenizer", "train_tokenizer", "train_tokenizer"),
                   ("posttrain.stages.pretrain", "STAGE.run", "run_pretrain"), ("posttrain.stages.sft", "STAGE.run", "run_sft"),
                   ("posttrain.evals.runner", "run_probes", "run_probes")]


def write_recipe(path, recipe):
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def spy_stages(monkeypatch, forbid=False):
    """Record which stage functions run (in order); with forbid=True any call fails the test."""
    import importlib

    calls = []
    for mod_name, attr, name in STAGE_FUNCTIONS:
        owner = importlib.import_module(mod_name)
        *path, fn_name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, fn_name)

        def wrapped(*a, _real=real, _name=name, **k):
            if forbid:
                raise AssertionError(f"{_name} ran, but its stage should have been skipped")
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(owner, fn_name, wrapped)
    return calls


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """The tiny recipe run once to the end: (recipe path, run dir)."""
    root = tmp_path_factory.mktemp("recipe")
    recipe_path = write_recipe(root / "tiny.yaml", RECIPE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSTTRAIN_CPU_DTYPE", "fp32")
        outputs = Runner(load_recipe(recipe_path), root / "run", progress=False).run()
    assert list(outputs) == STAGES
    return recipe_path, root / "run"


def copy_run(done_run, tmp_path):
    """A private copy of the finished run (recipe + run dir), so a test may change it."""
    recipe_path, run_dir = done_run
    shutil.copytree(run_dir.parent, tmp_path / "copy")
    return tmp_path / "copy" / recipe_path.name, tmp_path / "copy" / run_dir.name


def test_every_stage_writes_its_output_with_chained_provenance(done_run):
    _, run = done_run
    assert json.loads((run / "world" / "manifest.json").read_text())
    assert (run / "world" / "sft.jsonl").exists() and (run / "world" / "corpus.jsonl").exists()
    tok_prov = json.loads((run / "tokenizer" / "tokenizer_provenance.json").read_text())
    assert tok_prov["requested_vocab_size"] == 400 and tok_prov["data"][0]["path"] == "corpus.jsonl"

    base = json.loads((run / "base" / "provenance.json").read_text())
    assert base["stage"] == "pretrain" and base["parent"] is None and base["metrics"]["steps"] == 3
    assert base["config"]["arch"]["hidden_size"] == 32 and base["config"]["train"]["lr"] == 3e-3
    assert json.loads((run / "base" / "config.json").read_text())["num_hidden_layers"] == 1

    sft = json.loads((run / "sft" / "provenance.json").read_text())
    assert sft["stage"] == "sft" and sft["metrics"]["steps"] == 2
    assert sft["parent"]["artifact_id"] == base["artifact_id"]
    assert sft["parent"]["path"] == "base"
    world_rows = len((run / "world" / "sft.jsonl").read_text().splitlines())
    assert sft["data"][0]["path"] == "sft.jsonl" and sft["data"][0]["format"] == "conversational"
    assert sft["data"][0]["rows"] == world_rows - round(0.05 * world_rows)  # 5% held out for eval loss

    report = json.loads((run / "eval" / "eval_report.json").read_text())
    assert list(report["probes"]) == ["cloze_recall"]
    assert report["probes"]["cloze_recall"]["n"] == 4
    state = json.loads((run / "recipe_state.json").read_text())
    assert list(state["done"]) == STAGES and state["done"] == state["started"]


def test_publish_copies_the_stage_output(done_run):
    recipe_path, run = done_run
    published = recipe_path.parent / "published" / "sft"
    names = sorted(p.name for p in (run / "sft").iterdir())
    assert sorted(p.name for p in published.iterdir()) == names
    for name in names:
        assert (published / name).read_bytes() == (run / "sft" / name).read_bytes()
    assert sorted(p.name for p in published.parent.iterdir()) == ["sft"]  # no temp dir left beside it


def test_rerun_skips_every_stage(done_run, tmp_path, monkeypatch, capsys):
    recipe_path, run = copy_run(done_run, tmp_path)
    state_before = (run / "recipe_state.json").read_text()
    mtimes = {s: (run / s).stat().st_mtime_ns for s in STAGES}
    spy_stages(monkeypatch, forbid=True)
    runner = Runner(load_recipe(recipe_path), run, progress=True)
    runner.run()
    out = capsys.readouterr().out
    assert out.count("unchanged since its last run: skipped") == 5
    assert runner.reused == STAGES  # what a wall time of this run would not have paid for
    assert {s: (run / s).stat().st_mtime_ns for s in STAGES} == mtimes
    assert (run / "recipe_state.json").read_text() == state_before


def test_changing_a_stage_reruns_it_and_the_later_ones_only(done_run, tmp_path, monkeypatch):
    recipe_path, run = copy_run(done_run, tmp_path)
    old_base = json.loads((run / "base" / "provenance.json").read_text())
    old_state = json.loads((run / "recipe_state.json").read_text())
    recipe = json.loads(json.dumps(RECIPE))
    recipe["stages"][3]["config"]["train"]["max_steps"] = 3
    write_recipe(recipe_path, recipe)
    calls = spy_stages(monkeypatch)
    with monkeypatch.context() as mp:
        mp.setenv("POSTTRAIN_CPU_DTYPE", "fp32")
        Runner(load_recipe(recipe_path), run, progress=False).run()
    assert calls == ["run_sft", "run_probes"]
    sft = json.loads((run / "sft" / "provenance.json").read_text())
    assert sft["metrics"]["steps"] == 3 and sft["parent"]["artifact_id"] == old_base["artifact_id"]
    new_state = json.loads((run / "recipe_state.json").read_text())
    assert {k: new_state["done"][k] == old_state["done"][k] for k in STAGES} == {
        "world": True, "tokenizer": True, "base": True, "sft": False, "eval": False}


def test_changing_the_world_reruns_a_stage_that_reads_it_only_as_eval_source(tiny_llama_dir, tmp_path, monkeypatch):
    """`source: "@world"` is an input: a new world must not leave a stale eval report."""
    recipe = {"name": "src", "stages": [
        {"name": "world", "stage": "world", "seed": 0, "scale": 0.02},
        {"name": "eval", "stage": "eval", "model": str(tiny_llama_dir), "probes": ["cloze_recall"], "n": 2,
         "source": "@world"}]}
    path = write_recipe(tmp_path / "src.yaml", recipe)
    monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", "fp32")
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    recipe["stages"][0]["seed"] = 1
    write_recipe(path, recipe)
    calls = spy_stages(monkeypatch)
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    assert calls == ["build_world", "run_probes"]


def test_a_new_world_generator_reruns_the_world_and_the_evals_of_its_probes(tiny_llama_dir, tmp_path, monkeypatch):
    """A posttrain whose world generator changed (WORLD_VERSION) must not skip the world stage as unchanged, nor an
    eval of the built-in probes: their data would be the old generator's."""
    from posttrain.world import build as world_build

    recipe = {"name": "gen", "stages": [
        {"name": "world", "stage": "world", "seed": 0, "scale": 0.02},
        {"name": "eval", "stage": "eval", "model": str(tiny_llama_dir), "probes": ["cloze_recall"], "n": 2}]}
    path = write_recipe(tmp_path / "gen.yaml", recipe)
    monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", "fp32")
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    calls = spy_stages(monkeypatch)
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    assert calls == []
    monkeypatch.setattr(world_build, "WORLD_VERSION", world_build.WORLD_VERSION + "-next")
    Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    assert calls == ["build_world", "run_probes"]


def test_quick_overrides_merge_into_the_stages(done_run):
    recipe_path, _ = done_run
    full, quick = load_recipe(recipe_path), load_recipe(recipe_path, quick=True)
    sft_full, sft_quick = full.stages[3].raw["config"], quick.stages[3].raw["config"]
    assert sft_full["train"] == {"max_steps": 2, "batch_size": 4}
    assert sft_quick["train"] == {"max_steps": 1, "batch_size": 4}  # merged, not replaced
    assert sft_quick["data"] == {"max_length": 128} and sft_quick["model"] == CPU_FP32
    assert quick.stages[4].raw["n"] == 2 and quick.stages[4].raw["probes"] == ["cloze_recall"]
    assert [s.raw for s in quick.stages[:3]] == [s.raw for s in full.stages[:3]]
    assert full.publish == {"stage": "sft", "to": "published/sft"} and quick.publish is None


def test_quick_run_reruns_the_changed_stages_and_does_not_publish(done_run, tmp_path, monkeypatch, capsys):
    recipe_path, run = copy_run(done_run, tmp_path)
    published = recipe_path.parent / "published" / "sft"
    (published / "marker").write_text("the published artifact")
    calls = spy_stages(monkeypatch)
    monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", "fp32")
    assert main(["run", str(recipe_path), "--out", str(run), "--quick", "--no-progress"]) == 0
    assert calls == ["run_sft", "run_probes"]
    assert json.loads((run / "sft" / "provenance.json").read_text())["metrics"]["steps"] == 1
    assert json.loads((run / "eval" / "eval_report.json").read_text())["probes"]["cloze_recall"]["n"] == 2
    assert (published / "marker").read_text() == "the published artifact"  # untouched by --quick
    assert "recipe 'tiny' finished: world -> " in capsys.readouterr().out


def test_publish_replaces_the_target_atomically(done_run, tmp_path, monkeypatch):
    recipe_path, run = copy_run(done_run, tmp_path)
    published = recipe_path.parent / "published" / "sft"
    (published / "marker").write_text("old")
    # The marker makes the target no longer this run's unmodified publication: replacing it needs --overwrite.
    runner = Runner(load_recipe(recipe_path), run, progress=False, overwrite=True)
    spy_stages(monkeypatch, forbid=True)

    real_copytree = shutil.copytree

    def failing_copytree(src, dst, **kw):
        real_copytree(src, dst, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", failing_copytree)
    with pytest.raises(OSError, match="disk full"):
        runner.run()
    assert (published / "marker").read_text() == "old"  # a failed copy keeps the old target
    assert sorted(p.name for p in published.parent.iterdir()) == ["sft"]
    monkeypatch.setattr(shutil, "copytree", real_copytree)
    Runner(load_recipe(recipe_path), run, progress=False, overwrite=True).run()
    assert not (published / "marker").exists()  # replaced, not merged into
    assert (published / "model.safetensors").read_bytes() == (run / "sft" / "model.safetensors").read_bytes()


# ---------------------------------------------------------------- errors


def recipe_with(tmp_path, stages, **extra):
    return write_recipe(tmp_path / "r.yaml", {"name": "r", "stages": stages, **extra})


def test_unknown_stage_kind(tmp_path):
    path = recipe_with(tmp_path, [{"name": "w", "stage": "world"}, {"name": "x", "stage": "ppx"}])
    with pytest.raises(ConfigError, match=r"stage 2: unknown stage 'ppx'; choose one of world, tokenizer, pretrain, sft, "
                                          r"reward, dpo, ppo, grpo, eval, preferences, bon"):
        load_recipe(path)


def test_stage_without_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"stage 1: needs a 'stage' key"):
        load_recipe(recipe_with(tmp_path, [{"name": "w"}]))


def test_duplicate_stage_names(tmp_path):
    path = recipe_with(tmp_path, [{"stage": "world"}, {"name": "world", "stage": "world", "seed": 1}])
    with pytest.raises(ConfigError, match=r"two stages are named 'world'; give each a unique name"):
        load_recipe(path)


def test_bad_reference_is_reported_before_any_stage_runs(tmp_path, monkeypatch):
    path = recipe_with(tmp_path, [{"name": "world", "stage": "world", "scale": 0.02},
                                  {"name": "sft", "stage": "sft", "model": "m", "data": "@nope/x"}])
    spy_stages(monkeypatch, forbid=True)
    with pytest.raises(ConfigError, match=r"reference '@nope/x' names no earlier stage \(earlier: world\)"):
        Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    assert not (tmp_path / "run" / "world").exists()


def test_reference_to_a_later_stage_is_an_error(tmp_path):
    path = recipe_with(tmp_path, [{"name": "tok", "stage": "tokenizer", "data": "@world/corpus.jsonl"},
                                  {"name": "world", "stage": "world"}])
    with pytest.raises(ConfigError, match=r"reference '@world/corpus.jsonl' names no earlier stage \(earlier: none\)"):
        load_recipe(path)


def test_quick_naming_an_unknown_stage(tmp_path):
    path = recipe_with(tmp_path, [{"name": "world", "stage": "world"}], quick={"wrld": {"scale": 0.1}})
    with pytest.raises(ConfigError, match=r"'quick' names unknown stages: wrld"):
        load_recipe(path)


def test_publish_needs_a_known_stage(tmp_path):
    path = recipe_with(tmp_path, [{"name": "world", "stage": "world"}], publish={"stage": "sft", "to": "x"})
    with pytest.raises(ConfigError, match=r"'publish' needs 'stage' \(a stage name\) and 'to'"):
        load_recipe(path)


def test_missing_recipe_and_empty_stages(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe '.*nope\.yaml' does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"needs a non-empty 'stages' list"):
        load_recipe(recipe_with(tmp_path, []))


def test_training_stage_needs_a_model(tmp_path, monkeypatch):
    path = recipe_with(tmp_path, [{"name": "world", "stage": "world", "scale": 0.02},
                                  {"name": "sft", "stage": "sft", "data": "@world/sft.jsonl"}])
    with pytest.raises(ConfigError, match=r"stage 'sft' needs a model: set 'model' on it or 'base' on the recipe"):
        Runner(load_recipe(path), tmp_path / "run", progress=False).run()


def test_bad_stage_option_names_the_key(tmp_path, tiny_llama_dir):
    path = recipe_with(tmp_path, [{"name": "world", "stage": "world", "scale": 0.02},
                                  {"name": "sft", "stage": "sft", "model": str(tiny_llama_dir), "data": "@world/sft.jsonl",
                                   "config": {"train": {"lrr": 1e-3}}}])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'\. Did you mean 'train\.lr'\?"):
        Runner(load_recipe(path), tmp_path / "run", progress=False).run()
