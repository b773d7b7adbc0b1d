"""posttrain: turn a pretrained base language model into an assistant, and prove what each stage did."""

__version__ = "0.1.0"
