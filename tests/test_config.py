"""The config system: YAML + --set overrides, key resolution, type and choice errors, generated docs."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from posttrain.cli import main
from posttrain.config import _leaf_paths, load_config, opt, parse_override, resolve_key
from posttrain.errors import ConfigError
from posttrain.stages.pretrain import PretrainConfig
from posttrain.stages.registry import options_page, recipe_stage_configs, stage_configs
from posttrain.stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parent.parent


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- loading


def test_defaults_without_file_or_overrides():
    cfg = load_config(SFTConfig)
    assert cfg.train.lr == 2e-4 and cfg.data.max_length == 1024 and cfg.data.overlength == "truncate"
    assert cfg.model.trust_remote_code is False and cfg.data.eval_data is None


def test_flat_yaml(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"lr": 1e-3, "max_steps": 7}, "data": {"packing": False}})
    cfg = load_config(SFTConfig, path, stage="sft")
    assert cfg.train.lr == 1e-3 and cfg.train.max_steps == 7 and cfg.data.packing is False
    assert cfg.train.batch_size == 8  # untouched default


def test_yaml_nested_under_the_stage_name(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"sft": {"train": {"lr": 5e-4}, "model": {"lora": {"enabled": True, "r": 4}}}})
    cfg = load_config(SFTConfig, path, stage="sft")
    assert cfg.train.lr == 5e-4 and cfg.model.lora.enabled is True and cfg.model.lora.r == 4


def test_yaml_scientific_notation_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-5\n")  # PyYAML reads this as the string '1e-5'
    cfg = load_config(SFTConfig, path)
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(SFTConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of options"):
        load_config(SFTConfig, lst)


def test_unknown_yaml_key_suggests_the_close_one(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'\. Did you mean 'train\.lr'\?"):
        load_config(SFTConfig, path)


# ---------------------------------------------------------------- overrides


def test_override_beats_yaml(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"lr": 1e-3}})
    cfg = load_config(SFTConfig, path, ["train.lr=3e-4"], stage="sft")
    assert cfg.train.lr == 3e-4


@pytest.mark.parametrize("key", ["train.lr", "sft.train.lr", "sft.lr", "lr"])
def test_every_way_of_naming_a_key(key):
    assert resolve_key(SFTConfig, key, stage="sft") == ("train", "lr")
    cfg = load_config(SFTConfig, overrides=[f"{key}=1e-5"], stage="sft")
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)


def test_partial_path_suffix_and_deep_keys():
    assert resolve_key(SFTConfig, "lora.r") == ("model", "lora", "r")
    cfg = load_config(SFTConfig, overrides=["lora.r=8", "model.lora.alpha=4"], stage="sft")
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (8, 4)


def test_ambiguous_bare_name_lists_the_full_keys():
    @dataclass
    class A:
        lr: float = opt(1.0, "a")

    @dataclass
    class B:
        lr: float = opt(2.0, "b")

    @dataclass
    class Both:
        first: A = opt(factory=A)
        second: B = opt(factory=B)

    with pytest.raises(ConfigError, match=r"key 'lr' is ambiguous; write one of: first\.lr, second\.lr"):
        load_config(Both, overrides=["lr=3"])
    assert load_config(Both, overrides=["second.lr=3"]).second.lr == 3.0


def test_unknown_override_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'\. Did you mean 'train\.lr'\?"):
        load_config(SFTConfig, overrides=["train.lrr=1"], stage="sft")
    with pytest.raises(ConfigError, match=r"unknown key 'max_step'\. Did you mean 'train\.max_steps'\?"):
        load_config(SFTConfig, overrides=["max_step=1"], stage="sft")


def test_override_without_equals():
    with pytest.raises(ConfigError, match=r"--set expects key=value, got 'train\.lr'"):
        parse_override("train.lr")


def test_override_values_are_yaml():
    assert parse_override("train.lr=1e-5") == ("train.lr", "1e-5")  # coerced to float by the field type
    assert parse_override("a=0.5") == ("a", 0.5)
    assert parse_override("a=3") == ("a", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=x=y") == ("a", "x=y")
    cfg = load_config(SFTConfig, overrides=["train.lr=1e-5", "max_steps=3", "packing=false", "epochs=2"], stage="sft")
    assert cfg.train.lr == 1e-5 and cfg.train.max_steps == 3 and cfg.data.packing is False
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert type(cfg.train.max_steps) is int


def test_dict_overrides_as_the_recipes_pass_them():
    cfg = load_config(PretrainConfig, overrides={"arch.hidden_size": 32, "train.max_steps": 3}, stage="pretrain")
    assert cfg.arch.hidden_size == 32 and cfg.train.max_steps == 3 and cfg.arch.num_layers == 4


def test_setting_one_key_keeps_the_stage_defaults_of_its_section(tmp_path):
    """pretrain's `train` defaults (lr 3e-3, batch 16, ...) differ from TrainConfig's; setting
    train.max_steps must not silently reset the rest of the section to TrainConfig's."""
    default = load_config(PretrainConfig).train
    assert (default.lr, default.batch_size, default.weight_decay, default.log_every) == (3e-3, 16, 0.1, 25)
    for cfg in (load_config(PretrainConfig, overrides=["train.max_steps=3"], stage="pretrain"),
                load_config(PretrainConfig, write_yaml(tmp_path / "p.yaml", {"train": {"max_steps": 3}}))):
        assert cfg.train.max_steps == 3
        assert (cfg.train.lr, cfg.train.batch_size, cfg.train.weight_decay, cfg.train.log_every) == (3e-3, 16, 0.1, 25)


# ---------------------------------------------------------------- type and choice errors


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=1.5", r"train\.max_steps: expected an integer, got 1\.5"),
    ("train.max_steps=abc", r"train\.max_steps: expected an integer, got 'abc'"),
    ("train.max_steps=true", r"train\.max_steps: expected an integer, got True"),
    ("train.lr=fast", r"train\.lr: expected a number, got 'fast'"),
    ("train.lr=true", r"train\.lr: expected a number, got True"),
    ("data.packing=maybe", r"data\.packing: expected true or false, got 'maybe'"),
    ("data.packing=2", r"data\.packing: expected true or false, got 2"),
    ("model.device=null", r"model\.device: expected a string, got None"),
    ("model.device=[a, b]", r"model\.device: expected a string"),
    ("data.limit=many", r"data\.limit: expected an integer, got 'many'"),
])
def test_wrong_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, overrides=[override], stage="sft")


def test_bool_words():
    for word, value in [("yes", True), ("off", False), ("'true'", True), ("'0'", False)]:
        assert load_config(SFTConfig, overrides=[f"data.packing={word}"]).data.packing is value


def test_choices_error_names_the_allowed_values():
    with pytest.raises(ConfigError, match=r"data\.overlength: 'cut' is not allowed; choose one of truncate, drop\."):
        load_config(SFTConfig, overrides=["data.overlength=cut"], stage="sft")
    with pytest.raises(ConfigError, match=r"model\.dtype: 'fp16' is not allowed; choose one of auto, fp32, bf16\."):
        load_config(SFTConfig, overrides=["dtype=fp16"], stage="sft")


def test_section_given_a_scalar(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": 5})
    with pytest.raises(ConfigError, match=r"train: expected a mapping of TrainConfig options, got 5"):
        load_config(SFTConfig, path)


def test_optional_fields_accept_null():
    cfg = load_config(SFTConfig, overrides=["data.limit=7", "data.eval_data=held.jsonl"])
    assert cfg.data.limit == 7 and cfg.data.eval_data == "held.jsonl"
    for word in ("null", "none", "None", "~"):
        cfg = load_config(SFTConfig, overrides=[f"data.limit={word}", f"data.eval_data={word}"])
        assert cfg.data.limit is None and cfg.data.eval_data is None, word


# ---------------------------------------------------------------- docs and `config show`


def test_docs_options_md_is_generated_from_the_config_classes():
    text = (ROOT / "docs" / "options.md").read_text()
    assert text == options_page(), "docs/options.md is stale: run `posttrain config docs`"


def test_options_markdown_lists_every_key_with_its_default_and_range():
    text = options_page()
    for stage, cls in {**stage_configs(), **recipe_stage_configs()}.items():
        assert f"## `{stage}`" in text
        for path in _leaf_paths(cls):
            assert f"| `{'.'.join(path)}` |" in text
    assert "| `train.lr` | float | `0.003` | in (0, 1e+30] |" in text  # pretrain's default
    assert "| `train.lr` | float | `0.0002` | in (0, 1e+30] |" in text  # sft's default
    assert "| `train.max_steps` | int | `-1` | >= 1 or -1 |" in text
    assert "| `data.eval_fraction` | float | `0.05` | in [0, 1) |" in text
    assert "| `data.limit` | int or none | `None` | >= 1 |" in text
    assert "| `model.dtype` | str | `'auto'` | `auto`, `fp32`, `bf16` |" in text
    assert "| `n` | int or none | `None` | >= 1 |" in text  # the eval recipe stage


def test_config_docs_check_detects_a_stale_page(tmp_path, capsys):
    page = tmp_path / "options.md"
    assert main(["config", "docs", "--out", str(page)]) == 0
    assert page.read_text() == options_page()
    assert main(["config", "docs", "--out", str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("Peak learning rate", "Learning rate"))
    assert main(["config", "docs", "--out", str(page), "--check"]) == 1
    assert "is out of date" in capsys.readouterr().out


def test_config_show_prints_every_key(capsys):
    assert main(["config", "show", "sft"]) == 0
    out = capsys.readouterr().out
    keys = [line.split("`")[1] for line in out.splitlines() if line.startswith("| `")]
    assert keys == [".".join(p) for p in _leaf_paths(SFTConfig)]
    assert len(keys) == 44  # 36 + data.cut_turns + train.max_abs_weight + train.report_to + model.lora.trainable_tokens(_from)
    # + train.stop_at_step
    # + train.contamination_n + train.contamination_threshold


def test_config_show_resolves_overrides_as_yaml(capsys):
    assert main(["config", "show", "sft", "--set", "lr=1e-5", "--set", "lora.enabled=true"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["lr"] == 1e-5 and resolved["model"]["lora"]["enabled"] is True
    assert resolved["data"]["max_length"] == 1024


def test_config_show_errors(capsys):
    assert main(["config", "show", "ppx"]) == 2
    assert "unknown stage 'ppx'; stages: pretrain, sft, reward, dpo, ppo, grpo." in capsys.readouterr().err
    assert main(["config", "show", "sft", "--set", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posttrain config: error: unknown key 'train.lrr'. Did you mean 'train.lr'?")
