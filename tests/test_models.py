"""Loading models safely (safetensors only, no remote code unless asked) and choosing a dtype."""

import math

import pytest
import torch

import posttrain.models as models
from posttrain.errors import PosttrainError
from posttrain.models import load_model, load_model_and_tokenizer, load_tokenizer, resolve_dtype


def test_explicit_dtypes_are_returned_as_given(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", "bf16")  # only "auto" reads it
    assert resolve_dtype("fp32") == "fp32"
    assert resolve_dtype("bf16") == "bf16"
    assert resolve_dtype("fp32", "cuda") == "fp32"


def test_auto_on_cpu_follows_the_env_var(monkeypatch):
    def never(*a):
        raise AssertionError("the env var must win over measuring")

    monkeypatch.setattr(models, "_cpu_bf16_is_faster", never)
    for value in ("fp32", "bf16"):
        monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", value)
        assert resolve_dtype("auto") == value
        assert resolve_dtype("auto", torch.device("cpu")) == value


def test_auto_on_cpu_measures_when_the_env_var_is_unset_or_invalid(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_CPU_DTYPE", raising=False)
    monkeypatch.setattr(models, "_cpu_bf16_is_faster", lambda: True)
    assert resolve_dtype("auto") == "bf16"
    monkeypatch.setattr(models, "_cpu_bf16_is_faster", lambda: False)
    assert resolve_dtype("auto") == "fp32"
    monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", "fp16")  # not a choice: ignored
    assert resolve_dtype("auto") == "fp32"


@pytest.mark.parametrize("bf16_s, fp32_s, expected", [(1.0, 3.0, "bf16"), (0.9, 1.0, "fp32"), (2.0, 1.0, "fp32")])
def test_auto_measurement_picks_bf16_only_when_clearly_faster(monkeypatch, bf16_s, fp32_s, expected):
    """The measured timings decide: bf16 must beat fp32 by 20%; the answer is measured once and cached."""
    monkeypatch.delenv("POSTTRAIN_CPU_DTYPE", raising=False)
    timed = []

    def fake_seconds(dtype, n=512, give_up_after=math.inf):
        timed.append(dtype)
        return {torch.bfloat16: bf16_s, torch.float32: fp32_s}[dtype]

    monkeypatch.setattr(models, "_matmul_seconds", fake_seconds)
    models._cpu_bf16_is_faster.cache_clear()
    try:
        assert resolve_dtype("auto") == expected
        assert resolve_dtype("auto", "cpu") == expected
        assert sorted(timed, key=str) == [torch.bfloat16, torch.float32]  # measured once, then cached
    finally:
        models._cpu_bf16_is_faster.cache_clear()  # later tests measure the real CPU, not these timings


def test_a_timing_past_the_limit_ends_the_measurement(monkeypatch):
    """Best of 5 timings, unless the first already takes longer than give_up_after: then that one alone
    (emulated bf16 needs no 5 slow timings to lose)."""
    clock = iter(range(100))  # every perf_counter call one second later: every timing is 1 s
    monkeypatch.setattr(models.time, "perf_counter", lambda: next(clock))
    assert models._matmul_seconds(torch.float32, n=8) == 1
    assert next(clock) == 10  # 5 timings, 2 clock readings each
    assert models._matmul_seconds(torch.float32, n=8, give_up_after=0.5) == 1
    assert next(clock) == 13  # one timing
    assert models._matmul_seconds(torch.float32, n=8, give_up_after=1.5) == 1
    assert next(clock) == 24


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") == "fp32"


@pytest.mark.parametrize("bad", ["fp16", "float32", "", "BF16"])
def test_bad_dtype_is_an_error_listing_the_choices(bad):
    with pytest.raises(PosttrainError, match=rf"dtype must be one of auto, fp32, bf16, got '{bad}'"):
        resolve_dtype(bad)


# ---------------------------------------------------------------- loading


def test_load_model_reads_safetensors_in_fp32(tiny_llama_dir):
    model, tok = load_model_and_tokenizer(tiny_llama_dir, "cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|endoftext|>"


def test_pickle_weights_are_refused_with_a_hint(tiny_llama_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    model = load_model(tiny_llama_dir, "cpu")
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(PosttrainError) as e:
        load_model(d, "cpu")
    msg = str(e.value)
    assert "pickled" in msg and "holds no .safetensors weights" in msg
    assert "save_pretrained(safe_serialization=True)" in msg


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(PosttrainError, match=r"model directory '.*nowhere' does not exist.*nothing is downloaded"):
        load_model(tmp_path / "nowhere", "cpu")


def test_dir_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PosttrainError, match="has no config.json, so it is not a transformers model directory"):
        load_model(tmp_path, "cpu")


def test_remote_code_is_off_and_nothing_is_downloaded_by_default(tiny_llama_dir, monkeypatch):
    import transformers

    calls = []

    def spy(real):
        def wrapped(*args, **kwargs):
            calls.append(kwargs)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        spy(transformers.AutoModelForCausalLM.from_pretrained))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy(transformers.AutoTokenizer.from_pretrained))
    load_model(tiny_llama_dir, "cpu")
    load_tokenizer(tiny_llama_dir)
    assert len(calls) == 2
    for kw in calls:
        assert kw["trust_remote_code"] is False and kw["local_files_only"] is True
    assert calls[0]["use_safetensors"] is True and calls[0]["dtype"] == torch.float32


def test_stages_pass_trust_remote_code_from_the_config(tiny_llama_dir, monkeypatch):
    from posttrain.config import load_config
    from posttrain.stages import common
    from posttrain.stages.sft import SFTConfig

    seen = []
    monkeypatch.setattr(common, "load_tokenizer", lambda path, trc=False: seen.append(("tok", trc)) or load_tokenizer(path))
    monkeypatch.setattr(common, "load_model", lambda path, dev, trc=False, head="causal": seen.append(("model", trc)) or load_model(path, dev))
    common.prepare_model(tiny_llama_dir, load_config(SFTConfig, overrides=["device=cpu", "dtype=fp32"]).model)
    assert seen == [("tok", False), ("model", False)]
    seen.clear()
    common.prepare_model(tiny_llama_dir, load_config(SFTConfig, overrides=["device=cpu", "trust_remote_code=true"]).model)
    assert seen == [("tok", True), ("model", True)]


def test_a_lora_stage_model_builds_without_the_deprecation_warning_peft_triggers(tiny_llama_dir):
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` while wrapping: that FutureWarning
    is filtered where posttrain wraps, and nothing else is."""
    import warnings

    from posttrain.config import load_config
    from posttrain.stages import common
    from posttrain.stages.sft import SFTConfig

    cfg = load_config(SFTConfig, overrides=["device=cpu", "dtype=fp32", "model.lora.enabled=true"]).model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, *_ = common.prepare_model(tiny_llama_dir, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            model.get_base_model().is_gradient_checkpointing  # the warning is still raised outside the wrap
    assert hasattr(model, "get_base_model")
    messages = [str(w.message) for w in caught]
    assert sum("is_gradient_checkpointing" in m for m in messages) == 1, messages


def test_a_new_scalar_head_loads_quietly_and_other_gaps_are_reported(tiny_llama_dir, tmp_path, capfd):
    """A causal LM loaded with a scalar head lacks `score.weight` by design: no transformers load report. A
    checkpoint that lacks trunk weights is still reported, in posttrain's one line."""
    from safetensors.torch import load_file, save_file

    model = load_model(tiny_llama_dir, "cpu", head="score")
    assert model.score.weight.shape[0] == 1
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "posttrain:" not in err, err

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(tiny_llama_dir / "model.safetensors"))
    dropped = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(broken / "model.safetensors"))
    load_model(broken, "cpu", head="score")
    err = capfd.readouterr().err
    assert "weights missing from the checkpoint" in err and dropped in err, err


def test_gradient_checkpointing_turns_on_without_a_deprecation_warning(tiny_llama_dir):
    """`model.gradient_checkpointing: true` enables transformers' (activation) checkpointing by its current name,
    and the model still trains: the same loss and gradients as without it."""
    import warnings

    from posttrain.config import load_config
    from posttrain.stages import common
    from posttrain.stages.sft import SFTConfig

    def loss_and_grads(flag: str):
        cfg = load_config(SFTConfig, overrides=["device=cpu", "dtype=fp32", f"model.gradient_checkpointing={flag}"]).model
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, *_ = common.prepare_model(tiny_llama_dir, cfg)
        model.train()
        ids = torch.arange(3, 19)[None]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return model, loss.item(), model.model.layers[0].mlp.up_proj.weight.grad, [str(w.message) for w in caught]

    on, loss_on, grad_on, caught = loss_and_grads("true")
    off, loss_off, grad_off, _ = loss_and_grads("false")
    checkpointing = getattr(type(on), "is_activation_checkpointing", None)
    assert (on.is_activation_checkpointing if checkpointing is not None else on.is_gradient_checkpointing) is True
    assert on.config.use_cache is False and off.config.use_cache is not False
    assert not [m for m in caught if "checkpointing" in m], caught
    assert loss_on == pytest.approx(loss_off) and torch.allclose(grad_on, grad_off, atol=1e-6)
