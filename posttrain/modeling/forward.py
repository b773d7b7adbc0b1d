"""Forward passes that return what the losses need, for any model a stage holds.

A batch is a dict of [B, T] tensors from `data.packing.collate`: input_ids, position_ids
(restarting at 0 for each packed example), loss_mask (1 = this token is a target) and
sequence_ids (which example of the batch a token belongs to; -1 for padding).

- `token_logps`: log p(target) at every target position (policy, frozen reference, teacher);
- `sequence_logps`: those summed per example, with the number of targets;
- `nll_and_count`: the summed next-token loss, as SFT and pretraining train on;
- `sequence_scores`: a scalar head read at each example's last token (reward and value models).

The speed tricks live here and nowhere else: the vocabulary head runs on target positions
only (for families whose logits are exactly head(final hidden state)), and packed rows
attend per example (modeling.attention) instead of through a dense T x T mask.
"""

from __future__ import annotations

import torch

from posttrain.losses import target_logps, token_nll_sum
from posttrain.modeling.attention import attention_within_examples

# Model families whose logits are exactly lm_head(final hidden state): the head can run on target positions only.
PLAIN_HEAD = {"llama", "qwen2", "qwen3", "mistral", "phi3", "olmo2", "smollm3"}


def unwrap(model):
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _trunk_hidden(base, batch) -> torch.Tensor:
    """Final hidden states [B, T, H] of the transformer trunk, attention kept inside each packed example."""
    ids, pos = batch["input_ids"], batch["position_ids"]
    with attention_within_examples(base, pos) as extra:
        if batch.get("branched") and not extra:
            raise RuntimeError("a batch with shared prompts (rollouts.group_batch) needs posttrain's segment "
                               "attention; check modeling.attention.shares_prefixes before building one.")
        return base.base_model(input_ids=ids, position_ids=pos, use_cache=False, **extra).last_hidden_state


def _target_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [N, V] at the N target positions, their targets [N], the selection [B, T-1])."""
    ids = batch["input_ids"]
    sel = batch["loss_mask"][:, 1:].bool()  # position t predicts token t+1 and counts when t+1 is a target
    targets = ids[:, 1:][sel]
    base = unwrap(model)
    if getattr(base.config, "model_type", None) in PLAIN_HEAD:
        hidden = _trunk_hidden(base, batch)
        logits = base.get_output_embeddings()(hidden[:, :-1][sel])
    else:
        logits = model(input_ids=ids, position_ids=batch["position_ids"], use_cache=False).logits[:, :-1][sel]
    return logits, targets, sel


def nll_and_count(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over the target tokens of a batch (fp32), and the number of targets."""
    logits, targets, sel = _target_logits(model, batch)
    return token_nll_sum(logits, targets), int(sel.sum())


def token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x[t+1] | x[<=t]) in fp32 at each target, flattened [N] in row-major order, and the selection [B, T-1]."""
    logits, targets, sel = _target_logits(model, batch)
    return target_logps(logits, targets), sel


def sequence_logps(model, batch: dict[str, torch.Tensor], n_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of target log-probs per example [S], number of targets per example [S]); S = n_sequences.

    The example of each target comes from batch["sequence_ids"], numbered 0..S-1 by the collator.
    """
    logps, sel = token_logps(model, batch)
    seq = batch["sequence_ids"][:, 1:][sel]
    sums = torch.zeros(n_sequences, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    counts = torch.zeros(n_sequences, dtype=logps.dtype, device=logps.device).index_add(0, seq, torch.ones_like(logps))
    return sums, counts


def last_token_positions(batch: dict[str, torch.Tensor], n_sequences: int) -> torch.Tensor:
    """Flat index (into B*T) of the last token of each example 0..S-1: where a sequence head reads."""
    seq = batch["sequence_ids"].reshape(-1)
    positions = torch.arange(seq.numel(), device=seq.device)
    last = torch.full((n_sequences,), -1, dtype=torch.long, device=seq.device)
    keep = seq >= 0
    return last.scatter_reduce(0, seq[keep], positions[keep], reduce="amax")


def score_head(model):
    """The scalar head of a sequence-classification model (transformers calls it `score` in every family)."""
    base = unwrap(model)
    head = getattr(base, "score", None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has no `score` head; load the model with "
                        f"AutoModelForSequenceClassification (num_labels=1).")
    return head


def sequence_scores(model, batch: dict[str, torch.Tensor], n_sequences: int) -> torch.Tensor:
    """The head's scalar at the last token of each example [S], in fp32.

    This is where transformers' own `ForSequenceClassification` reads an unpadded sequence (its last
    non-padding token), so an artifact scores a chat the same way in plain transformers.
    """
    base = unwrap(model)
    hidden = _trunk_hidden(base, batch)
    flat = hidden.reshape(-1, hidden.shape[-1])[last_token_positions(batch, n_sequences)]
    with torch.autocast(device_type=flat.device.type, enabled=False):  # the head's few weights run in fp32
        return score_head(model)(flat.float()).squeeze(-1)


def target_index(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """For each of the N targets of a batch, in row-major order: (its row, the position whose hidden state
    predicts it, the target token, its example), [N] each.

    A target at position t is predicted from t - 1, except in a branched batch (rollouts.group_batch), whose
    `predictor` [B, T] names the position for each target: a response's first token is predicted by its
    prompt's last token, which the G responses laid out after that prompt share.
    """
    ids = batch["input_ids"]
    if "predictor" in batch:
        rows, cols = batch["loss_mask"].bool().nonzero(as_tuple=True)
        return rows, batch["predictor"][rows, cols], ids[rows, cols], batch["sequence_ids"][rows, cols]
    rows, cols = batch["loss_mask"][:, 1:].bool().nonzero(as_tuple=True)
    return rows, cols, ids[rows, cols + 1], batch["sequence_ids"][rows, cols + 1]


def _target_hidden_and_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final hidden states [N, H] and logits [N, V] at the N target positions, targets [N], their examples [N])."""
    rows, source, targets, sequence = target_index(batch)
    base = unwrap(model)
    if getattr(base.config, "model_type", None) in PLAIN_HEAD:
        hidden = _trunk_hidden(base, batch)[rows, source]
        return hidden, base.get_output_embeddings()(hidden), targets, sequence
    if batch.get("branched"):
        raise RuntimeError(f"{base.config.model_type} models cannot read a batch with shared prompts; "
                           "check modeling.attention.shares_prefixes before building one.")
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                output_hidden_states=True)
    return out.hidden_states[-1][rows, source], out.logits[rows, source], targets, sequence


def policy_outputs(model, batch: dict[str, torch.Tensor], value_head=None, entropy: bool = False,
                   temperature: float = 1.0) -> dict:
    """What an RL objective needs at each target token, flattened [N] in row-major order (fp32):

    logps (log p of the token), entropy (of the whole next-token distribution, when asked) and
    values (value_head on the hidden state that predicts the token, for a value head sharing the
    policy's trunk), plus `sequence` (which example each target belongs to). With a sampling
    temperature T the distribution is softmax(logits / T): the policy the samples came from.
    """
    hidden, logits, targets, sequence = _target_hidden_and_logits(model, batch)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1 is x: skip the pass
    logp_all = torch.log_softmax(logits, dim=-1)
    out = {"logps": logp_all.gather(-1, targets[:, None]).squeeze(-1), "sequence": sequence}
    if entropy:
        with torch.no_grad():
            out["entropy"] = -(logp_all.exp() * logp_all).sum(-1)
    if value_head is not None:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            out["values"] = value_head(hidden.float()).squeeze(-1)
    return out


def token_values(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A value model's scalar head (`score`) on the hidden state before each target token, flattened [N] (fp32)."""
    base = unwrap(model)
    rows, source, _, _ = target_index(batch)
    hidden = _trunk_hidden(base, batch)[rows, source]
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return score_head(model)(hidden.float()).squeeze(-1)


def per_sequence(flat: torch.Tensor, sequence: torch.Tensor, n_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-target values -> ([S, T] left-aligned per example, in token order; [S, T] mask of real entries).

    Targets of one example are contiguous and in order in the flat layout (one packed row holds
    each example whole), so a stable sort by example keeps each example's token order.
    """
    order = torch.argsort(sequence, stable=True)
    seq = sequence[order]
    counts = torch.bincount(seq, minlength=n_sequences)
    starts = torch.cumsum(counts, 0) - counts
    index = torch.arange(seq.numel(), device=seq.device) - starts[seq]
    width = max(1, int(counts.max())) if counts.numel() else 1
    out = flat.new_zeros(n_sequences, width)
    mask = torch.zeros(n_sequences, width, dtype=torch.bool, device=flat.device)
    out = out.index_put((seq, index), flat[order])
    mask[seq, index] = True
    return out, mask
