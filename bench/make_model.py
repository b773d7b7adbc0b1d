"""Build a model directory for the benchmarks: a Llama shape with random (seeded) weights and the shipped tokenizer.

    python bench/make_model.py /tmp/smol135 --shape 135m --template smollm2 --pad eos
    python bench/sft_vs_trl.py --model /tmp/smol135

Nothing is downloaded. The tokenizer is the shipped base model's (`models/base`, 4,096 tokens); the
`135m` shape keeps SmolLM2-135M's vocabulary of 49,152 rows all the same, so the embedding and the LM
head cost what they cost in the real model (token ids above 4,095 are simply never used).

- shape: `135m` = SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary
  49,152, tied embeddings: 134.5M parameters); `tiny` = a 2-layer model of hidden 64 for tests.
- template: `chatml` = the shipped model's own ChatML template; `smollm2` = SmolLM2-135M-Instruct's template,
  ChatML that inserts the default system prompt when a chat has no system message.
- pad: `own` = the shipped tokenizer's tokens (EOS <|endoftext|>, pad <|pad|>); `eos` = EOS and pad both
  <|im_end|>, the token that ends every chat turn, as SmolLM2-Instruct and many other chat models ship.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "models" / "base"

SHAPES = {
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0),
    # vocab_size None: the tokenizer's own size
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=None, max_position_embeddings=1024, rope_theta=10000.0),
}

# SmolLM2-135M-Instruct's chat template (tokenizer_config.json of HuggingFaceTB/SmolLM2-135M-Instruct). The
# newlines inside the string literals are real newline characters, as in the JSON file.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TEMPLATES = ("chatml", "smollm2")
PADS = ("own", "eos")


def model_config(shape: str, tok):
    """The LlamaConfig of `shape` for tokenizer `tok` (its EOS and pad ids; `tiny`: its vocabulary size)."""
    from transformers import LlamaConfig

    dims = dict(SHAPES[shape])
    rope_theta = dims.pop("rope_theta")
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    if dims["vocab_size"] < len(tok):
        raise ValueError(f"shape {shape}: vocabulary {dims['vocab_size']} is smaller than the tokenizer's {len(tok)}.")
    return LlamaConfig(**dims, head_dim=dims["hidden_size"] // dims["num_attention_heads"], hidden_act="silu",
                       rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                       tie_word_embeddings=True, attention_bias=False, mlp_bias=False, initializer_range=0.02,
                       bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def make_bench_model(out_dir, shape: str = "135m", template: str = "chatml", pad: str = "own",
                     seed: int = 0) -> Path:
    """Write a transformers model directory (config, safetensors weights in bf16, tokenizer) to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    if shape not in SHAPES or template not in TEMPLATES or pad not in PADS:
        raise ValueError(f"shape {shape!r} / template {template!r} / pad {pad!r}: choose shape from "
                         f"{', '.join(SHAPES)}, template from {', '.join(TEMPLATES)}, pad from {', '.join(PADS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(str(BASE), local_files_only=True)
    if template == "smollm2":
        tok.chat_template = SMOLLM2_TEMPLATE  # "chatml": the shipped template, kept as it is
    if pad == "eos":
        tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.save_pretrained(str(out))

    config = model_config(shape, tok)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # bf16 on disk, as released checkpoints; loaded as fp32
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "bench_model.json").write_text(json.dumps(dict(
        shape=shape, template=template, pad=pad, seed=seed, tokenizer=str(BASE),
        parameters=sum(p.numel() for p in model.parameters())), indent=1) + "\n")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="directory to write (created; files in it are overwritten)")
    p.add_argument("--shape", default="135m", choices=tuple(SHAPES))
    p.add_argument("--template", default="chatml", choices=TEMPLATES)
    p.add_argument("--pad", default="own", choices=PADS)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = make_bench_model(a.out, a.shape, a.template, a.pad, a.seed)
    info = json.loads((out / "bench_model.json").read_text())
    print(f"{out}: {a.shape} ({info['parameters'] / 1e6:.1f}M parameters), template {a.template}, pad {a.pad}")


if __name__ == "__main__":
    main()
