"""Declared ranges: every numeric option has one, and a value outside it (or a number that is not finite)
is refused naming the key, the value, the range and where it came from; devices are checked; a key
given twice in a YAML file is an error; recipe stages accept only their own keys, with checked types."""

import dataclasses
import math
import types
import typing

import pytest
import yaml

from posttrain.cli import main
from posttrain.config import _hints, _leaf_paths, from_dict, load_config
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models import resolve_device
from posttrain.recipes import load_recipe
from posttrain.stages.pretrain import PretrainConfig
from posttrain.stages.registry import recipe_stage_configs, stage_configs
from posttrain.stages.sft import SFTConfig

ALL_CONFIGS = {**stage_configs(), **recipe_stage_configs()}


def leaf_fields(cls):
    """(dotted key, dataclasses.Field, type) of every option of `cls`, nested sections included."""
    out = []
    for path in _leaf_paths(cls):
        owner = cls
        for part in path[:-1]:
            owner = _hints(owner)[part]
        f = {f.name: f for f in dataclasses.fields(owner)}[path[-1]]
        out.append((".".join(path), f, _hints(owner)[path[-1]]))
    return out


def numeric_base(tp):
    """int or float for a numeric type (also inside `X | None`), else None (a list of numbers is no number)."""
    if typing.get_origin(tp) not in (None, typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def outside_values(f, tp):
    """Values just outside the declared range of a field, and non-finite numbers for a float."""
    rng = f.metadata["range"]
    values = []
    if rng.lo is not None:
        values.append(rng.lo if rng.lo_open else rng.lo - 1)
    if rng.hi is not None:
        values.append(rng.hi if rng.hi_open else rng.hi + max(1, abs(rng.hi)))
    values = [tp(v) for v in values if v not in rng.also]
    if tp is float:
        values += [math.nan, math.inf, -math.inf]
    return values


NUMERIC = [(stage, key, f, numeric_base(tp)) for stage, cls in ALL_CONFIGS.items()
           for key, f, tp in leaf_fields(cls) if numeric_base(tp)]
CASES = [pytest.param(stage, key, v, id=f"{stage}:{key}={v}")
         for stage, key, f, tp in NUMERIC for v in outside_values(f, tp)]


def test_every_numeric_option_of_every_config_declares_a_range():
    assert len(NUMERIC) > 40  # sft, pretrain and the recipe stages
    missing = [f"{stage}:{key}" for stage, key, f, _ in NUMERIC if f.metadata.get("range") is None]
    assert missing == []


def test_every_default_is_inside_its_range():
    for cls in ALL_CONFIGS.values():
        from_dict(cls, {})  # raises if a default broke its own declared range
    for stage, key, f, _ in NUMERIC:
        if f.default is not None and f.default is not dataclasses.MISSING:
            assert f.metadata["range"].contains(f.default), key


@pytest.mark.parametrize("stage,key,value", CASES)
def test_a_value_outside_the_range_is_refused_from_set_and_from_yaml(stage, key, value, tmp_path):
    cls = ALL_CONFIGS[stage]
    shown = str(value) if isinstance(value, float) and not math.isfinite(value) else repr(value)
    if stage in stage_configs():
        with pytest.raises(ConfigError) as e:
            load_config(cls, overrides=[f"{key}={value}"], stage=stage)
        assert str(e.value).startswith(f"{key}: {shown} is ") and "config file" not in str(e.value)
        path = tmp_path / "c.yaml"
        nested: dict = {}
        *parents, leaf = key.split(".")
        d = nested
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
        path.write_text(yaml.safe_dump(nested))
        with pytest.raises(ConfigError) as e:
            load_config(cls, path, stage=stage)
        line = len(parents) + 1  # safe_dump writes one key per line, a single leaf
        assert str(e.value).startswith(f"config file '{path}', line {line}: {key}: {shown} is ")
    else:
        with pytest.raises(ConfigError) as e:
            from_dict(cls, {key: value})
        assert str(e.value).startswith(f"{key}: {shown} is ")
    f = {k: fld for k, fld, _ in leaf_fields(cls)}[key]
    assert str(f.metadata["range"]) in str(e.value)  # the message states the allowed range


@pytest.mark.parametrize("override,fragment", [
    ("data.max_length=-1", "data.max_length: -1 is out of range; it must be >= 2."),
    ("data.limit=0", "data.limit: 0 is out of range; it must be >= 1."),
    ("train.epochs=0", "train.epochs: 0.0 is out of range; it must be > 0."),
    ("train.epochs=-3", "train.epochs: -3.0 is out of range; it must be > 0."),
    ("train.warmup_ratio=2", "train.warmup_ratio: 2.0 is out of range; it must be in [0, 1]."),
    ("data.eval_fraction=1.5", "data.eval_fraction: 1.5 is out of range; it must be in [0, 1)."),
    ("train.batch_size=0", "train.batch_size: 0 is out of range; it must be >= 1."),
    ("train.grad_accum=0", "train.grad_accum: 0 is out of range; it must be >= 1."),
    ("train.lr=nan", "train.lr: nan is not allowed; it must be a finite number in (0, 1e+30]"),
    ("train.lr=inf", "train.lr: inf is not allowed; it must be a finite number"),
    ("train.lr=-1e-4", "train.lr: -0.0001 is out of range; it must be in (0, 1e+30]."),
    ("train.max_steps=0", "train.max_steps: 0 is out of range; it must be >= 1 or -1."),
    ("model.device=gpu3", "model.device: 'gpu3' is not allowed; use `auto`, `cpu`, `cuda` or `cuda:N`."),
])
def test_the_reviewed_nonsense_values_are_refused_by_the_cli_in_one_paragraph(override, fragment, capsys):
    assert main(["config", "show", "sft", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain config: error: ") and "\n" not in err and "Traceback" not in err
    assert fragment in err


@pytest.mark.parametrize("value", ["nan", "inf", ".inf", "-inf", "1e400"])
def test_an_integer_option_given_a_non_finite_number(value):
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer, got"):
        load_config(SFTConfig, overrides=[f"batch_size={value}"])


def test_the_fix_names_the_key_and_an_allowed_value():
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, overrides=["warmup_ratio=2"])
    assert str(e.value) == ("train.warmup_ratio: 2.0 is out of range; it must be in [0, 1]. Set train.warmup_ratio "
                            "to a value in [0, 1] (the default is train.warmup_ratio=0.05).")


def test_special_values_and_edges_inside_the_range_are_accepted():
    cfg = load_config(SFTConfig, overrides=["max_steps=-1", "eval_fraction=0", "warmup_ratio=1", "limit=null",
                                            "max_grad_norm=0", "lr=1e30", "max_length=2"])
    assert (cfg.train.max_steps, cfg.data.eval_fraction, cfg.train.warmup_ratio, cfg.data.limit) == (-1, 0.0, 1.0, None)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_posttrain_knows_are_accepted_by_the_config(device):
    assert load_config(SFTConfig, overrides=[f"device={device}"]).model.device == device


@pytest.mark.parametrize("device", ["gpu3", "cuda:", "CUDA", "cuda:x", "cpu ", "mps", "cuda:-1"])
def test_other_device_names_are_refused(device):
    with pytest.raises(ConfigError, match=r"model\.device: .* is not allowed; use `auto`, `cpu`, `cuda` or `cuda:N`"):
        load_config(SFTConfig, overrides={"model.device": device})
    with pytest.raises(PosttrainError, match="is not a device posttrain knows; use auto, cpu, cuda or cuda:N"):
        resolve_device(device)


def test_cuda_without_a_gpu_says_so(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PosttrainError, match=r"model\.device is 'cuda', but PyTorch sees no CUDA GPU on this machine"):
        resolve_device("cuda", "model.device")
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PosttrainError, match=r"--device is 'cuda:2', but this machine has 2 CUDA GPU\(s\)"):
        resolve_device("cuda:2")


def test_arch_fields_that_must_divide_each_other():
    with pytest.raises(ConfigError, match=r"arch\.hidden_size \(30\) must be a multiple of arch\.num_heads \(4\)"):
        load_config(PretrainConfig, overrides=["hidden_size=30"])
    with pytest.raises(ConfigError, match=r"arch\.num_kv_heads \(3\) must divide arch\.num_heads \(4\)"):
        load_config(PretrainConfig, overrides=["num_kv_heads=3"])


# ---------------------------------------------------------------- YAML files


def test_a_key_given_twice_in_a_config_file_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  batch_size: 4\n  lr: 5.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path, stage="sft")
    assert str(e.value) == (f"config file '{path}', line 4: key 'lr' appears twice (first at line 2); YAML would "
                            f"silently keep only the last value. Keep one of them.")
    path.write_text("data: {max_length: 64}\ndata: {packing: false}\n")
    with pytest.raises(ConfigError, match=r"line 2: key 'data' appears twice \(first at line 1\)"):
        load_config(SFTConfig, path, stage="sft")
    path.write_text("train: {lr: 1.0e-3, lr: 2.0e-3}\n")
    with pytest.raises(ConfigError, match=r"line 1: key 'lr' appears twice \(first at line 1\)"):
        load_config(SFTConfig, path, stage="sft")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 1.0e-3, batch_size: 4}\nsft:\n  train:\n    <<: *b\n    lr: 5.0e-3\n")
    loaded = yaml.safe_load(path.read_text())
    assert loaded["sft"]["train"] == {"lr": 5e-3, "batch_size": 4}
    from posttrain.yamlfiles import read_yaml_mapping

    assert read_yaml_mapping(path, "config file")["sft"]["train"] == {"lr": 5e-3, "batch_size": 4}


def test_a_set_value_with_a_repeated_key_or_bad_yaml_is_an_error():
    with pytest.raises(ConfigError, match=r"--set x=\{a: 1, a: 2\}: the value is not valid YAML \(key 'a' appears twice"):
        load_config(SFTConfig, overrides=["x={a: 1, a: 2}"])
    with pytest.raises(ConfigError, match=r"--set lr=\[1,: the value is not valid YAML"):
        load_config(SFTConfig, overrides=["lr=[1,"])


def test_yaml_syntax_errors_and_bad_bytes_name_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n    batch_size: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path)
    assert str(e.value).startswith(f"config file '{path}', line 3: is not valid YAML (") and "\n" not in str(e.value)
    path.write_bytes(b"train:\n  lr: 1e-3 # caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, path)
    assert str(e.value).startswith(f"config file '{path}' is not valid UTF-8: byte 0xe9 at line 2, column 17 "
                                   f"(byte offset 23 of the file: invalid continuation byte)")
    assert str(e.value).endswith("Save it as UTF-8.")


def test_a_value_from_the_file_is_reported_with_its_line_and_one_from_set_without(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  data:\n    max_length: 64\n  train:\n    epochs: 0\n")
    with pytest.raises(ConfigError, match=rf"^config file '{path}', line 5: train\.epochs: 0\.0 is out of range"):
        load_config(SFTConfig, path, stage="sft")
    with pytest.raises(ConfigError, match=r"^train\.epochs: -1\.0 is out of range"):
        load_config(SFTConfig, path, overrides=["train.epochs=-1"], stage="sft")
    assert load_config(SFTConfig, path, overrides=["epochs=2"], stage="sft").train.epochs == 2.0  # --set fixes it


# ---------------------------------------------------------------- recipes


def recipe(tmp_path, stages, **extra):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "stages": stages, **extra}, sort_keys=False))
    return path


WORLD = {"name": "world", "stage": "world", "scale": 0.02}


@pytest.mark.parametrize("entry,fragment", [
    ({"name": "ev", "stage": "eval", "model": "m", "prob": ["cloze_recall"]},
     "stage 'ev' (eval): unknown key 'prob'. Did you mean 'probes'? Allowed here: name, stage, model, probes, n, "
     "source, batch_size, best_of_n, reward, temperature, gates."),
    ({"name": "sft", "stage": "sft", "model": "m", "data": "d.jsonl", "confg": {"train": {"lr": 1e-3}}},
     "stage 'sft' (sft): unknown key 'confg'. Did you mean 'config'?"),
    ({"name": "w2", "stage": "world", "sed": 3}, "stage 'w2' (world): unknown key 'sed'. Did you mean 'seed'?"),
    ({"name": "tok", "stage": "tokenizer", "data": "x.jsonl", "vocab": 400},
     "stage 'tok' (tokenizer): unknown key 'vocab'. Did you mean 'vocab_size'?"),
])
def test_a_misspelt_stage_key_is_an_error_naming_the_recipe_the_stage_and_the_key(tmp_path, entry, fragment):
    path = recipe(tmp_path, [WORLD, entry])
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"recipe '{path}', ") and fragment in str(e.value)


@pytest.mark.parametrize("entry,fragment", [
    ({"name": "ev", "stage": "eval", "model": "m", "n": "abc"}, "stage 'ev' (eval): n: expected an integer, got 'abc'"),
    ({"name": "ev", "stage": "eval", "model": "m", "n": 0}, "stage 'ev' (eval): n: 0 is out of range; it must be >= 1."),
    ({"name": "ev", "stage": "eval", "model": "m", "probes": ["clozerecall"]},
     "stage 'ev' (eval): unknown probe(s): clozerecall."),
    ({"name": "w2", "stage": "world", "scale": 0}, "stage 'w2' (world): scale: 0.0 is out of range; it must be > 0."),
    ({"name": "w2", "stage": "world", "seed": "one"}, "stage 'w2' (world): seed: expected an integer, got 'one'"),
    ({"name": "tok", "stage": "tokenizer", "data": "x.jsonl", "vocab_size": 100},
     "stage 'tok' (tokenizer): vocab_size: 100 is out of range; it must be >= 264."),
    ({"name": "tok", "stage": "tokenizer"}, "stage 'tok' (tokenizer): needs 'data'"),
    ({"name": "sft", "stage": "sft", "model": "m", "data": "d.jsonl", "config": {"train": {"warmup_ratio": 2}}},
     "stage 'sft' (sft): config: train.warmup_ratio: 2.0 is out of range; it must be in [0, 1]."),
    ({"name": "sft", "stage": "sft", "model": "m", "data": 3}, "stage 'sft' (sft): 'data' must be a path (a string)"),
    ({"name": "sft", "stage": "sft", "model": "m", "data": "d.jsonl", "config": "fast"},
     "stage 'sft' (sft): 'config' must be a mapping of options"),
])
def test_stage_values_are_type_and_range_checked_when_the_recipe_loads(tmp_path, entry, fragment):
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe(tmp_path, [WORLD, entry]))
    assert fragment in str(e.value)


def test_a_typo_in_quick_is_found_without_quick_and_quick_values_apply(tmp_path):
    stages = [WORLD, {"name": "ev", "stage": "eval", "model": "m", "n": 8}]
    with pytest.raises(ConfigError, match=r"stage 'ev' \(eval\): unknown key 'nn'\. Did you mean 'n'\?"):
        load_recipe(recipe(tmp_path, stages, quick={"ev": {"nn": 2}}))
    path = recipe(tmp_path, stages, quick={"ev": {"n": 2}})
    assert load_recipe(path).stages[1].options.n == 8
    assert load_recipe(path, quick=True).stages[1].options.n == 2


def test_misspelt_top_level_and_publish_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe '.*': unknown key 'publsh'\. Did you mean 'publish'\?"):
        load_recipe(recipe(tmp_path, [WORLD], publsh={"stage": "world", "to": "x"}))
    with pytest.raises(ConfigError, match=r"publish: unknown key 'too'\. Did you mean 'to'\?"):
        load_recipe(recipe(tmp_path, [WORLD], publish={"stage": "world", "to": "x", "too": "y"}))


def test_a_key_given_twice_in_a_recipe_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nstages:\n  - name: world\n    stage: world\n    scale: 0.5\n    scale: 0.02\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"recipe '{path}', line 6: key 'scale' appears twice (first at line 5)")


def test_recipe_stage_options_are_typed(tmp_path):
    path = recipe(tmp_path, [{"name": "world", "stage": "world", "seed": 3, "probe_n": "12"},
                             {"name": "tok", "stage": "tokenizer", "data": "@world/corpus.jsonl"},
                             {"name": "ev", "stage": "eval", "model": "m", "probes": "cloze_recall,arithmetic"}])
    world, tok, ev = (s.options for s in load_recipe(path).stages)
    assert (world.seed, world.scale, world.probe_n) == (3, 1.0, 12)
    assert (tok.vocab_size, tok.min_frequency) == (4096, 2)
    assert (ev.probes, ev.n, ev.source, ev.batch_size) == (["cloze_recall", "arithmetic"], None, None, 64)


def test_the_shipped_recipes_pass_the_checks():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "recipes"
    paths = sorted(root.glob("*.yaml"))
    assert {p.name for p in paths} >= {"base.yaml", "demo.yaml"}
    for path in paths:
        full, quick = load_recipe(path), load_recipe(path, quick=True)
        assert full.stages and [s.name for s in quick.stages] == [s.name for s in full.stages]


def test_world_and_tokenizer_commands_check_the_same_ranges(tmp_path, capsys):
    assert main(["world", "build", "--out", str(tmp_path / "w"), "--scale", "0"]) == 2
    assert "scale: 0.0 is out of range; it must be > 0." in capsys.readouterr().err
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    assert main(["tokenizer", "train", "--data", str(corpus), "--out", str(tmp_path / "t"), "--vocab-size", "100"]) == 2
    assert "vocab_size: 100 is out of range; it must be >= 264." in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
