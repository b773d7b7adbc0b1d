"""Training a byte-level BPE tokenizer with chat special tokens and a chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.artifacts import atomic_dir, data_record, write_json_atomic
from posttrain.config import opt
from posttrain.data.chat import default_template
from posttrain.data.formats import load_dataset_rows
from posttrain.outputs import check_output, clean_stale_temporaries, refuse_protected

EOS = "<|endoftext|>"
PAD = "<|pad|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
# Reserved for tool use: the runtime wraps a call and its injected result in these.
TOOL_TOKENS = ["<|tool_call|>", "<|/tool_call|>", "<|tool_result|>", "<|/tool_result|>"]
SPECIAL_TOKENS = [EOS, PAD, *CHAT_TOKENS, *TOOL_TOKENS]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, then the special tokens


@dataclass
class TokenizerConfig:
    """Byte-level BPE training (`posttrain tokenizer train`; a recipe's `tokenizer` stage, which also takes `data`)."""

    vocab_size: int = opt(4096, f"Vocabulary size, special tokens included (at least the {MIN_VOCAB} byte and special tokens).",
                          ge=MIN_VOCAB)
    min_frequency: int = opt(2, "Minimum count of a pair for a merge.", ge=1)
    split_digits: bool = opt(False, "Every digit its own token, as in Llama and Qwen tokenizers: a number is the same digit "
                                    "tokens whatever precedes it. false (the shipped base's tokenizer): BPE merges runs "
                                    "of digits (' 263' one token).")


def train_tokenizer(data_path, out, vocab_size: int = 4096, min_frequency: int = 2, *, split_digits: bool = False,
                    overwrite: bool = False) -> dict:
    """Train BPE on the `text` rows of `data_path`; save a transformers tokenizer with the ChatML template.

    An existing `out` is replaced only with overwrite=True, and never when it holds the data (docs/safety.md).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    refuse_protected(out)
    clean_stale_temporaries(Path(out).resolve().parent, Path(out).resolve().name)
    check_output(out, inputs={"--data": data_path}, overwrite=overwrite)
    _, rows = load_dataset_rows(data_path, allowed=("text",))
    bpe = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator((r.data["text"] for r in rows), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, bos_token=None, pad_token=PAD, unk_token=None,
        additional_special_tokens=CHAT_TOKENS + TOOL_TOKENS,
    )
    tok.chat_template = default_template()
    with atomic_dir(out) as tmp:
        tok.save_pretrained(tmp)
        write_json_atomic(Path(tmp) / "tokenizer_provenance.json", {
            "stage": "tokenizer", "vocab_size": len(tok), "requested_vocab_size": vocab_size,
            "min_frequency": min_frequency, "split_digits": split_digits, "data": [data_record(data_path, len(rows))],
            "special_tokens": SPECIAL_TOKENS,
        })
    return json.loads((Path(out) / "tokenizer_provenance.json").read_text())
