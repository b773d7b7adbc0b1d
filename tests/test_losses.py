"""SFT loss against independent references: transformers' own causal-LM loss, and a hand loop."""

import math

import torch

from posttrain.losses import sft_loss


def test_sft_loss_matches_transformers_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (3, 17))
    mask = (torch.rand(3, 17) > 0.4).long()
    mask[:, 0] = 0
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(sft_loss(out.logits, ids, mask), out.loss, atol=1e-5, rtol=1e-5)


def test_sft_loss_by_hand():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6)
    ids = torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]])
    total, n = 0.0, 0
    for b in range(2):
        for t in range(3):
            if mask[b, t + 1]:
                logp = torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]]
                total -= float(logp)
                n += 1
    assert math.isclose(float(sft_loss(logits, ids, mask)), total / n, rel_tol=1e-6)
    assert float(sft_loss(logits, ids, torch.zeros_like(mask))) == 0.0
