"""`posttrain tokenizer train`: BPE tokenizer with chat special tokens."""

NAME = "tokenizer"
ORDER = 11
HELP = "Train a byte-level BPE tokenizer (chat special tokens, ChatML template) on a text corpus."
DESCRIPTION = HELP + """

  posttrain tokenizer train --data world/corpus.jsonl --out runs/tokenizer --vocab-size 4096

The data is JSONL rows {"text": ...}. The result is a transformers tokenizer directory."""


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="Train a tokenizer.", description=DESCRIPTION)
    t.add_argument("--data", required=True, help="Corpus: JSONL rows with a 'text' field.")
    t.add_argument("--out", required=True, help="Tokenizer directory to write.")
    t.add_argument("--vocab-size", type=int, default=4096, help="Vocabulary size, special tokens included (default 4096).")
    t.add_argument("--min-frequency", type=int, default=2, help="Minimum pair frequency for a merge (default 2).")
    t.add_argument("--split-digits", action="store_true",
                   help="Every digit its own token, as in Llama and Qwen (default: BPE merges runs of digits).")
    t.add_argument("--overwrite", action="store_true", help="Replace an existing --out (never one holding the data).")


def run(args) -> int:
    from posttrain.config import from_dict
    from posttrain.stages.tokenizer import TokenizerConfig, train_tokenizer

    # the ranges of docs/options.md (recipe stage `tokenizer`): e.g. --vocab-size 100 is refused
    opts = from_dict(TokenizerConfig, {"vocab_size": args.vocab_size, "min_frequency": args.min_frequency,
                                         "split_digits": args.split_digits})
    info = train_tokenizer(args.data, args.out, opts.vocab_size, opts.min_frequency, split_digits=opts.split_digits,
                           overwrite=args.overwrite)
    print(f"tokenizer with {info['vocab_size']} tokens written to {args.out}")
    return 0
