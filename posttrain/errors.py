"""User-facing errors: each says what went wrong and what to do about it."""


class PosttrainError(Exception):
    """An error caused by input or configuration; the CLI prints it as one paragraph, no traceback."""


class DataError(PosttrainError):
    """A data file is malformed. The message names the file, the line and the field."""

    def __init__(self, path, line: int | None, field: str | None, problem: str, fix: str = ""):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f" field '{field}'" if field else ""
        msg = f"{where}:{what} {problem}"
        if fix:
            msg += f" {fix}"
        super().__init__(msg)
        self.path, self.line, self.field = path, line, field


class ConfigError(PosttrainError):
    """A configuration key or value is invalid. The message names the key and the allowed values."""


class NonFiniteLossError(PosttrainError):
    """Training produced a non-finite loss or gradient, or an update left a weight non-finite or huge.

    Only checkpoints whose weights are all finite and bounded are ever written; the message names the last one.
    """


class OutputError(PosttrainError):
    """An output path would destroy data or cannot be written; the message names the path and the fix."""


class ResumeError(PosttrainError):
    """`--resume` cannot continue: no checkpoint, or one written by a different run (the differences are listed)."""


def bad_utf8(raw: bytes, err: UnicodeDecodeError, first_line: int = 1, offset: int = 0, name_line: bool = True) -> str:
    """Where `raw.decode("utf-8")` failed, in words: 'is not valid UTF-8: byte 0xff at line 3, column 7 (byte offset 42 ...)'.

    `raw` may be one line of a larger file: `first_line` is its line number and `offset` its byte offset
    there; `name_line=False` leaves the line out (the caller names it). Lines and columns are 1-based and
    count bytes, since the text up to there cannot be decoded reliably.
    """
    before = raw[: err.start]
    line = first_line + before.count(b"\n")
    column = err.start - (before.rfind(b"\n") + 1) + 1
    bad = raw[err.start: err.end] or raw[err.start: err.start + 1]
    shown = " ".join(f"0x{b:02x}" for b in bad[:4])
    where = f"line {line}, column {column}" if name_line else f"column {column}"
    return (f"is not valid UTF-8: byte{'s' if len(bad) > 1 else ''} {shown} at {where} "
            f"(byte offset {offset + err.start} of the file: {err.reason})")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training. `checkpoint` holds the weights after step `step` (None: nothing could be saved,
    and the message says why); the command that ran the stage adds how to resume."""

    def __init__(self, message: str, step: int, checkpoint=None):
        super().__init__(message)
        self.message, self.step, self.checkpoint = message, step, checkpoint

    def __str__(self) -> str:
        return self.message
