"""Loading models and tokenizers from local directories, and choosing a dtype.

Everything is a `transformers` causal LM: the built-in toy model and a 7B model
take exactly this path. Weights load from safetensors only, and remote code
stays off unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import struct
import time
from pathlib import Path

import torch

from posttrain.console import notice
from posttrain.errors import PosttrainError, bad_utf8

DTYPES = ("auto", "fp32", "bf16")


DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"


def resolve_device(device: str = "auto", option: str = "--device") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a torch.device that exists here; else an error naming `option`."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise PosttrainError(f"{option} {device!r} is not a device posttrain knows; use auto, cpu, cuda or cuda:N.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PosttrainError(f"{option} is '{device}', but PyTorch sees no CUDA GPU on this machine (a CPU-only "
                                 f"build of torch {torch.__version__}, or no driver); use cpu or auto.")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise PosttrainError(f"{option} is '{device}', but this machine has {torch.cuda.device_count()} CUDA "
                                 f"GPU(s), numbered from 0; use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return torch.device(device)


def _matmul_seconds(dtype: torch.dtype, n: int = 512, give_up_after: float = math.inf) -> float:
    """Best of 5 timings of four n x n matmuls in `dtype` on this CPU; only the first when it already
    takes longer than `give_up_after` seconds (the others would not change the verdict)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm up
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        times.append(time.perf_counter() - t)
        if times[-1] > give_up_after:
            break
    return min(times)


@functools.lru_cache(maxsize=None)
def _cpu_bf16_is_faster() -> bool:
    """Time a small matmul in fp32 and in bf16 on this CPU, once per process.

    CPUs differ: with AMX (or avx512_bf16) bf16 matrix work is several times
    faster than fp32; without it bf16 is emulated and slower. Measuring is
    more reliable than reading CPU flags. bf16 must win by 20%: a near tie is
    not worth its rounding. Emulated bf16 is many times slower, and one timing
    twice fp32's settles it (on a 2-core EPYC without bf16: 1 s instead of 4).
    """
    fp32 = _matmul_seconds(torch.float32)
    return _matmul_seconds(torch.bfloat16, give_up_after=2 * fp32) < 0.8 * fp32


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> str:
    """Turn "auto" into "bf16" or "fp32" from what the hardware does fast."""
    if dtype not in DTYPES:
        raise PosttrainError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'.")
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if os.environ.get("POSTTRAIN_CPU_DTYPE") in ("fp32", "bf16"):
        return os.environ["POSTTRAIN_CPU_DTYPE"]
    return "bf16" if _cpu_bf16_is_faster() else "fp32"


def autocast(dtype: str, device: torch.device):
    """bf16 autocast context (weights stay fp32, matmuls run in bf16), or a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=(dtype == "bf16"))


@contextlib.contextmanager
def head_in_fp32(model, device: torch.device):
    """Inside a bf16 autocast region, run the model's output projection (the LM head) in fp32.

    Log-probabilities are differences between logits of a few units; a bf16 head
    rounds each logit to about 3 significant digits, an error of ~0.01 nats per token
    that sums over an answer (calibration) or a rollout (RL ratios). The body keeps
    its bf16 speed; only the one projection per step runs in the head's own dtype
    (fp32 master weights) on an input upcast to match. Hooks, not a reimplemented
    forward, so whatever the model does after the head (soft-capping, scaling) still runs.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None:
        yield
        return
    autocast_off = torch.autocast(device.type, enabled=False)

    def before(module, args):
        autocast_off.__enter__()
        return tuple(a.to(weight.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def after(module, args, output):
        autocast_off.__exit__(None, None, None)

    handles = [head.register_forward_pre_hook(before), head.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


# Files from which transformers builds a tokenizer (fast, sentencepiece, BPE vocab, WordPiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tokenizer.tiktoken")
REMOTE_CODE_FIX = ("posttrain runs such code only when asked: if you trust it (you have read the .py files there), "
                   "add --set model.trust_remote_code=true; otherwise use a model that transformers supports itself.")


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise PosttrainError(
            f"model directory '{path}' does not exist. Pass --model with a local transformers model "
            "directory or a posttrain artifact (nothing is downloaded)."
        )
    if not any(path.iterdir()):
        raise PosttrainError(f"model directory '{path}' is empty. Pass --model with a directory that holds a "
                             f"model (config.json, *.safetensors) and its tokenizer, as save_pretrained writes them.")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded (truncated, empty, a corrupt header), or None if it looks whole.

    Reads only the header: 8 bytes of header length, the JSON header, and the file size it implies.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is {size} bytes long, too short to be a safetensors file"
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            return f"is truncated or not a safetensors file (its header claims {n} bytes; the file has {size})"
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "has a corrupt header (not the JSON table of tensors safetensors writes)"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "damaged"
        return f"is {size} bytes long, but its header describes {expected} bytes: the file is {state}"
    return None


ADAPTER_CONFIG = "adapter_config.json"


def adapter_parent(path: str | Path) -> Path | None:
    """The parent model of an unmerged LoRA artifact (peft's adapter_config.json, no config.json); else None."""
    path = Path(path)
    if (path / "config.json").exists() or not (path / ADAPTER_CONFIG).is_file():
        return None
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError) as e:
        raise PosttrainError(f"'{path / ADAPTER_CONFIG}' is damaged ({e}); save the adapter again.") from e
    return Path(base)


def check_model_dir(path: str | Path) -> None:
    """A model directory that posttrain can load: config.json (valid JSON) and whole safetensors weights.

    An unmerged LoRA artifact (adapter weights only) is checked with the parent model it names.
    Cheap (reads headers only), so stages call it before loading the tokenizer or reading data.
    """
    path = Path(path)
    _check_dir(path)
    parent = adapter_parent(path)
    if parent is not None:
        if not parent.is_dir():
            raise PosttrainError(f"'{path}' is a LoRA adapter for the model in '{parent}', which does not exist "
                                 f"any more. Put the parent model back there, or merge the adapter when training "
                                 f"(model.lora.merge_on_save=true).")
        check_model_dir(parent)
    config = path / "config.json"
    if parent is not None:
        config = parent / "config.json"
    if not config.exists():
        raise PosttrainError(f"'{path}' has no config.json, so it is not a transformers model directory.")
    raw = config.read_bytes()
    try:
        json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PosttrainError(f"'{config}' {bad_utf8(raw, e)}; the model directory is damaged. Copy config.json "
                             f"again from where the model came from.") from e
    except ValueError as e:
        raise PosttrainError(f"'{config}' is not valid JSON ({e}); the model directory is damaged. Copy config.json "
                             f"again from where the model came from.") from e
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise PosttrainError(
            f"'{path}' holds no .safetensors weights. posttrain loads safetensors only (pickle-based .bin "
            "files can run code on load); convert them with `transformers` save_pretrained(safe_serialization=True)."
        )
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            raise PosttrainError(f"'{w}' {problem}. Copy the weights again from where the model came from (or "
                                 f"save the model again with save_pretrained).")


def _remote_code_error(path) -> PosttrainError:
    return PosttrainError(f"'{path}' ships its own model code (auto_map in config.json or tokenizer_config.json), "
                          f"which would run on this machine when loaded. {REMOTE_CODE_FIX}")


def ships_remote_code(path: Path) -> bool:
    """Whether config.json or tokenizer_config.json asks for code shipped in the directory (an `auto_map`)."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return True
    return False


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a model (or tokenizer) directory; a directory without one is an error saying so."""
    from transformers import AutoTokenizer

    path = Path(path)
    _check_dir(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise PosttrainError(f"'{path}' holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}). Save the tokenizer "
                             f"beside the weights with tokenizer.save_pretrained('{path}'), or pass --model with the "
                             f"directory that has both.")
    if not trust_remote_code and ships_remote_code(path):
        raise _remote_code_error(path)  # before transformers reads (and warns about) the foreign config
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise _remote_code_error(path) from e
        raise PosttrainError(f"the tokenizer in '{path}' cannot be loaded: {_first_line(e)}. Save it again with "
                             f"tokenizer.save_pretrained.") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PosttrainError(f"the tokenizer in '{path}' cannot be loaded: {_first_line(e)}. A tokenizer file is "
                             f"damaged; copy it again, or save it again with tokenizer.save_pretrained.") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0].rstrip(".") if text else type(e).__name__


def load_model(path: str | Path, device: str | torch.device = "auto", trust_remote_code: bool = False,
               head: str = "causal"):
    """Load a model in fp32 master weights (bf16 runs through autocast) on `device`.

    head: "causal" (AutoModelForCausalLM) or "score", a scalar head on the same trunk
    (AutoModelForSequenceClassification with one label: reward and value models; the head is new
    when `path` holds a causal LM).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(path)
    check_model_dir(path)
    parent = adapter_parent(path)
    if parent is not None:  # an unmerged LoRA artifact: its parent with the adapter merged in
        from peft import PeftModel

        base = load_model(parent, device, trust_remote_code, head)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    device = resolve_device(device)
    auto, extra = (AutoModelForCausalLM, {}) if head == "causal" else (AutoModelForSequenceClassification, {"num_labels": 1})
    try:
        with _quiet_load_report(head == "score"):
            model, info = auto.from_pretrained(
                str(path),
                dtype=torch.float32,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
                output_loading_info=True,
                **extra,
            )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise _remote_code_error(path) from e
        raise
    except (SafetensorError, OSError) as e:
        raise PosttrainError(f"the model in '{path}' cannot be loaded: {_first_line(e)}. Copy the model again from "
                             f"where it came from.") from e
    if head == "score":
        # transformers' load report is silenced for a new scalar head (missing from a causal LM by design);
        # anything else missing or left over is still reported, in one line.
        missing = sorted(k for k in info["missing_keys"] if k.split(".")[0] not in SCORE_HEADS)
        unexpected = sorted(k for k in info["unexpected_keys"] if k.split(".")[0] not in CAUSAL_HEADS)
        if missing or unexpected or info["mismatched_keys"]:
            notice(f"loading '{path}' as a scalar-head model: weights missing from the checkpoint (newly "
                   f"initialised): {_keys(missing)}; checkpoint weights left unused: {_keys(unexpected)}; "
                   f"of another shape: {_keys(sorted(map(str, info['mismatched_keys'])))}.")
    return model.to(device)


SCORE_HEADS = {"score", "classifier"}  # a sequence-classification head's module, by family
CAUSAL_HEADS = {"lm_head"}  # a causal LM's output layer, which a scalar-head model does not use


def _keys(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "") if keys else "none"


@contextlib.contextmanager
def _quiet_load_report(quiet: bool):
    """transformers' log level raised to errors while `quiet`: its load report goes unprinted."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_model_and_tokenizer(path: str | Path, device: str | torch.device = "auto", trust_remote_code: bool = False):
    return load_model(path, device, trust_remote_code), load_tokenizer(path, trust_remote_code)
