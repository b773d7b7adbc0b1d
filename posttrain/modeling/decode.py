"""Decode steps for plain decoder families, straight from the model's own weights.

The engine prefills every prompt through the transformers forward. Each later step feeds one token
per row, and for a small model that step is mostly per-call overhead: transformers' Llama forward
builds masks, cache objects and output dataclasses around every layer (about 10 ms a step for 16
rows of the 4.5M built-in model on 2 CPU cores, half of it Python). `Decoder` runs the same
arithmetic as a few fused tensor calls per layer on a preallocated KV buffer:

    h = x + o(attn(rope(q), rope(k), v))   with q, k, v = split(x_n @ [Wq; Wk; Wv]^T + b),  x_n = rmsnorm(x)
    x' = h + down(act(gate) * up)           with gate, up = split(rmsnorm(h) @ [Wg; Wu]^T)
    logits = rmsnorm(x_L) @ W_head^T        (in the head's own dtype: fp32 master weights give fp32 logits,
                                             as the engine's head_in_fp32 asks)

The residual stream, the norms, RoPE and the softmax run in fp32 and the weight products in the compute
dtype, as the transformers forward does under bf16 autocast with fp32 master weights; the KV buffer keeps
the prefill cache's dtypes (under that autocast: fp32 keys, bf16 values), so it costs what transformers'
cache would. Rotary cos/sin come from the model's own rotary module, so every RoPE scaling type (llama3,
yarn, ...) is the model's.

A peft model with plain LoRA adapters (the RL stages' policies) decodes here too: each adapted linear's
weight is W + the sum of its active adapters' s * B @ A, made once per `Decoder` (one per generate call,
so it follows the adapters as they train): the product peft's forward computes as
x @ W^T + s * (x @ A^T) @ B^T. Those merged weights are copies, so a model takes this path only while
they stay within FUSE_BYTES.

Only families whose decoder layer is exactly the above take this path (`Decoder.for_model` returns None
for the rest, for adapters other than plain LoRA (DoRA and other variants, a bias on B, trainable token
rows), or for a non-plain linear such as a quantised one); the engine then keeps the transformers
forward. tests/test_decode.py checks the logits against the transformers (and peft) forward step by
step for each family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Decoder layers that are exactly pre-norm attention + gated MLP with RoPE on every layer.
# qwen3 adds a per-head RMSNorm on q and k before the rotation.
FAMILIES = {"llama", "qwen2", "qwen3", "mistral"}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FUSE_BYTES = 512 * 2**20  # the most the fused q/k/v and gate/up copies may take, all layers together


def _parts(linears, dtype: torch.dtype, fuse: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) in `dtype` of each linear (LoRA merged in), or one pair for all of them stacked (fuse)."""
    pairs = [(_weight(m).to(dtype), None if _base(m).bias is None else _base(m).bias.to(dtype)) for m in linears]
    if not fuse or len(pairs) == 1:
        return pairs
    biases = [b if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs]
    return [(torch.cat([w for w, _ in pairs]), None if all(b is None for _, b in pairs) else torch.cat(biases))]


def _plain_linear(module) -> bool:
    return type(module) is torch.nn.Linear


def _lora_adapters(module) -> list[str] | None:
    """The adapters a peft LoRA linear adds in its forward now ([] when disabled or already merged into its
    weight), or None where the layer is not one whose adapters merge as scale * B @ A."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return None
    if type(module) is not LoraLinear or not _plain_linear(module.get_base_layer()):
        return None
    if module.disable_adapters or module.merged:
        return []
    active = [a for a in module.active_adapters if a in module.lora_A]
    for a in active:
        if a in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(a, False):
            return None  # DoRA and other variants compute more than B @ A
        if module.lora_B[a].bias is not None:
            return None
    return active


def _base(module) -> torch.nn.Linear:
    """The plain linear under a LoRA layer (or the module itself)."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _weight(module) -> torch.Tensor:
    """The weight the module's forward applies: a LoRA layer's base weight plus its active adapters' deltas."""
    adapters = _lora_adapters(module) if not _plain_linear(module) else []
    weight = _base(module).weight
    for a in adapters or []:
        weight = weight + module.get_delta_weight(a).to(weight.dtype)
    return weight


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if hasattr(F, "rms_norm"):  # torch >= 2.4: one fused call
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) [B, kv_heads, T, D] of each layer of a transformers DynamicCache, old layout or new."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _project(x: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """x through one or several (weight, bias) projections, their outputs side by side."""
    if len(parts) == 1:
        return F.linear(x, *parts[0])
    return torch.cat([F.linear(x, w, b) for w, b in parts], dim=-1)


class Decoder:
    """One-token steps over a KV buffer for the model's live rows (see the module doc)."""

    @classmethod
    def for_model(cls, model, dtype: str) -> Decoder | None:
        """A decoder for `model` in `dtype` ("bf16" or "fp32"), or None where only the transformers forward fits."""
        if dtype not in DTYPES:
            return None
        peft = hasattr(model, "get_base_model")
        if peft:
            model = model.get_base_model()
        config = getattr(model, "config", None)
        if not type(model).__module__.startswith("transformers."):
            return None  # a subclass of the user's (or a test's) may compute something else: its forward runs
        if getattr(config, "model_type", None) not in FAMILIES:
            return None
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return None  # mistral's windowed attention: the transformers forward keeps the window
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            return None
        trunk = getattr(model, "model", None)
        layers = getattr(trunk, "layers", None)
        head = model.get_output_embeddings()
        if layers is None or not _plain_linear(head) or head.bias is not None:
            return None
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "hidden_act", "") not in _ACTS:
            return None
        merged = 0  # bytes of the merged LoRA weights the decoder would copy
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            for m in linears:
                if _plain_linear(m):
                    continue
                adapters = _lora_adapters(m) if peft else None
                if adapters is None:
                    return None
                merged += m.get_base_layer().weight.numel() * torch.finfo(DTYPES[dtype]).bits // 8 if adapters else 0
        if peft and (type(trunk.embed_tokens) is not torch.nn.Embedding or merged > FUSE_BYTES):
            return None  # trainable token rows wrap the embedding; or the merged copies would be too large
        return cls(model, DTYPES[dtype])

    def __init__(self, model, dtype: torch.dtype):
        config = model.config
        self.dtype = dtype
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.act = _ACTS[config.hidden_act]
        self.rotary = model.model.rotary_emb
        self.embed = model.model.embed_tokens
        self.norm = model.model.norm.weight.float()
        self.head = model.get_output_embeddings().weight  # its own dtype, as the engine's head_in_fp32: no copy
        layers = model.model.layers
        # Fused [Wq; Wk; Wv] and [Wg; Wu] save two matrix calls a layer, but they are copies: made only while
        # they stay small (a 7B model's would take gigabytes). Unfused, a weight already in the compute dtype
        # is used as it is, without a copy.
        fused = sum(_base(m).weight.numel() for layer in layers for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
            layer.mlp.up_proj)) * torch.finfo(dtype).bits // 8 <= FUSE_BYTES
        self.layers = []
        with torch.no_grad():
            for layer in layers:
                a, m = layer.self_attn, layer.mlp
                self.layers.append(dict(
                    attn_norm=layer.input_layernorm.weight.float(),
                    mlp_norm=layer.post_attention_layernorm.weight.float(),
                    qkv=_parts([a.q_proj, a.k_proj, a.v_proj], dtype, fused),
                    o=_parts([a.o_proj], dtype, False)[0],
                    gate_up=_parts([m.gate_proj, m.up_proj], dtype, fused),
                    down=_parts([m.down_proj], dtype, False)[0],
                    q_norm=None if getattr(a, "q_norm", None) is None else a.q_norm.weight.float(),
                    k_norm=None if getattr(a, "k_norm", None) is None else a.k_norm.weight.float(),
                    eps=getattr(getattr(a, "q_norm", None), "variance_epsilon", self.eps),
                ))
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.bias: torch.Tensor | None = None  # [B, 1, 1, capacity]: 0 where a row may attend, -inf elsewhere
        self.length = 0

    def start(self, cache, attention_mask: torch.Tensor, room: int) -> None:
        """Take over a prefilled transformers cache (its rows as `attention_mask` [B, T] marks them),
        with space for `room` more tokens before the buffer grows."""
        batch, width = attention_mask.shape
        capacity = width + max(room, 1)
        self.keys, self.values = [], []
        for layer_keys, layer_values in _cache_tensors(cache):
            for source, out in ((layer_keys, self.keys), (layer_values, self.values)):
                # The prefill cache's own dtype, so the buffer costs what transformers' cache would.
                buffer = source.new_zeros(batch, self.kv_heads, capacity, self.head_dim)
                buffer[:, :, :width] = source
                out.append(buffer)
        self.bias = torch.full((batch, 1, 1, capacity), float("-inf"), device=attention_mask.device)
        self.bias[:, 0, 0, :width].masked_fill_(attention_mask.bool(), 0.0)
        self.length = width

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows `index` (the rows still generating)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.bias = self.bias.index_select(0, index)

    def _grow(self) -> None:
        more = self.bias.shape[-1]
        self.keys = [torch.cat([k, torch.zeros_like(k[:, :, :more])], dim=2) for k in self.keys]
        self.values = [torch.cat([v, torch.zeros_like(v[:, :, :more])], dim=2) for v in self.values]
        self.bias = torch.cat([self.bias, torch.full_like(self.bias[..., :more], float("-inf"))], dim=-1)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (`tokens` [B], at `positions` [B]); the next-token logits [B, V] in fp32."""
        # The dtypes here are explicit: an enclosing autocast would run the fp32 head in bf16.
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
            return self._step(tokens, positions)

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.length == self.bias.shape[-1]:
            self._grow()
        t = self.length
        self.bias[:, 0, 0, t] = 0.0
        self.length = t + 1
        batch, hd, heads = tokens.shape[0], self.head_dim, self.heads
        x = self.embed(tokens[:, None])[:, 0].float()  # [B, H] residual stream (the module sees [B, 1] ids)
        cos, sin = self.rotary(x[:, None], positions[:, None])  # [B, 1, D], fp32, shared by every layer
        # rotate_half(v) * sin == roll(v, D/2) * [-sin_a, sin_b]: one roll and one fused multiply-add
        sin = torch.cat([-sin[..., : hd // 2], sin[..., hd // 2 :]], dim=-1)
        qk_size, scale = (heads + self.kv_heads) * hd, hd ** -0.5
        bias = self.bias[..., : t + 1]
        for i, w in enumerate(self.layers):
            qkv = _project(_rms_norm(x, w["attn_norm"], self.eps).to(self.dtype), w["qkv"])
            qk = qkv[:, :qk_size].view(batch, heads + self.kv_heads, hd).float()
            self.values[i][:, :, t] = qkv[:, qk_size:].view(batch, self.kv_heads, hd)
            if w["q_norm"] is not None:
                qk = torch.cat([_rms_norm(qk[:, :heads], w["q_norm"], w["eps"]),
                                _rms_norm(qk[:, heads:], w["k_norm"], w["eps"])], dim=1)
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), sin)
            self.keys[i][:, :, t] = qk[:, heads:]
            # The query heads sharing a key/value head stack as rows of one product with its keys. Two
            # matmuls, not sdpa: 2 x 67 us against 226 us for sdpa's CPU kernel here (one query, ~100 keys).
            keys, values = self.keys[i][:, :, : t + 1], self.values[i][:, :, : t + 1]
            q = qk[:, :heads].view(batch, self.kv_heads, heads // self.kv_heads, hd).to(keys.dtype)
            scores = torch.matmul(q, keys.transpose(-1, -2)).float().mul_(scale).add_(bias)
            attended = torch.matmul(scores.softmax(-1).to(values.dtype), values)
            x.add_(F.linear(attended.reshape(batch, heads * hd).to(self.dtype), *w["o"]))
            gate, up = _project(_rms_norm(x, w["mlp_norm"], self.eps).to(self.dtype), w["gate_up"]).chunk(2, dim=-1)
            x.add_(F.linear(self.act(gate) * up, *w["down"]))
        return F.linear(_rms_norm(x, self.norm, self.eps).to(self.head.dtype), self.head).float()


_ACTS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
