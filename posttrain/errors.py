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
