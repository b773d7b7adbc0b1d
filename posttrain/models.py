"""Loading models and tokenizers from local directories, and choosing a dtype.

Everything is a `transformers` causal LM: the built-in toy model and a 7B model
take exactly this path. Weights load from safetensors only, and remote code
stays off unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

import torch

from posttrain.errors import PosttrainError

DTYPES = ("auto", "fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _matmul_seconds(dtype: torch.dtype, n: int = 512) -> float:
    """Best of 5 timings of four n x n matmuls in `dtype` on this CPU."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm up
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        times.append(time.perf_counter() - t)
    return min(times)


@functools.lru_cache(maxsize=None)
def _cpu_bf16_is_faster() -> bool:
    """Time a small matmul in fp32 and in bf16 on this CPU, once per process.

    CPUs differ: with AMX (or avx512_bf16) bf16 matrix work is several times
    faster than fp32; without it bf16 is emulated and slower. Measuring is
    more reliable than reading CPU flags. bf16 must win by 20%: a near tie is
    not worth its rounding.
    """
    return _matmul_seconds(torch.bfloat16) < 0.8 * _matmul_seconds(torch.float32)


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


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise PosttrainError(
            f"model directory '{path}' does not exist. Pass --model with a local transformers model "
            "directory or a posttrain artifact (nothing is downloaded)."
        )
    if not (path / "config.json").exists():
        raise PosttrainError(f"'{path}' has no config.json, so it is not a transformers model directory.")
    if not list(path.glob("*.safetensors")):
        raise PosttrainError(
            f"'{path}' holds no .safetensors weights. posttrain loads safetensors only (pickle-based .bin "
            "files can run code on load); convert them with `transformers` save_pretrained(safe_serialization=True)."
        )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise PosttrainError(
            f"model directory '{path}' does not exist. Pass --model with a local transformers model "
            "directory or a posttrain artifact (nothing is downloaded)."
        )
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, device: str | torch.device = "auto", trust_remote_code: bool = False):
    """Load a causal LM in fp32 master weights (bf16 runs through autocast) on `device`."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    _check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch.float32,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    return model.to(resolve_device(device) if isinstance(device, str) else device)


def load_model_and_tokenizer(path: str | Path, device: str | torch.device = "auto", trust_remote_code: bool = False):
    return load_model(path, device, trust_remote_code), load_tokenizer(path, trust_remote_code)
