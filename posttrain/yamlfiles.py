"""Reading YAML files strictly: config files and recipes.

PyYAML's own loader silently keeps the last of two equal keys, so a config that
sets `lr` twice trains with whichever came second. Here a repeated key, a file
that is not UTF-8 and a syntax error are each a ConfigError naming the file,
the line and the fix.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from posttrain.errors import ConfigError, bad_utf8


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice; `problem_mark` is the second one."""

    def __init__(self, key, first_line: int, mark):
        super().__init__(None, None, f"key '{key}' appears twice (first at line {first_line})", mark)
        self.key, self.first_line = key, first_line


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with a repeated key (merge keys `<<` may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKeyError(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_strict(text: str):
    """yaml.safe_load, but a repeated mapping key is an error (DuplicateKeyError)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def _yaml_problem(e: yaml.YAMLError) -> tuple[int | None, str]:
    """(1-based line or None, one-line description) of a PyYAML error."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    line = mark.line + 1 if mark is not None else None
    if mark is not None and not isinstance(e, DuplicateKeyError):
        problem = f"{problem} at column {mark.column + 1}"
    return line, problem


def read_yaml_mapping(path: Path, what: str, holds: str = "a mapping") -> dict:
    """A YAML file that must hold a mapping; errors name the file (and line) and say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} '{path}' does not exist.")
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a directory; give a YAML file.")
    if not path.is_file():  # a FIFO or a device: reading it could wait forever for a writer
        raise ConfigError(f"{what} '{path}' is not a regular file (a pipe, socket or device); give a YAML file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} '{path}' {bad_utf8(raw, e)}. Save it as UTF-8.") from e
    try:
        loaded = load_strict(text)
    except DuplicateKeyError as e:
        line, problem = _yaml_problem(e)
        raise ConfigError(f"{what} '{path}', line {line}: {problem}; YAML would silently keep only the last "
                          f"value. Keep one of them.") from e
    except yaml.YAMLError as e:
        line, problem = _yaml_problem(e)
        where = f", line {line}" if line else ""
        raise ConfigError(f"{what} '{path}'{where}: is not valid YAML ({problem}). Check the indentation and "
                          f"quoting there.") from e
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} '{path}' must hold {holds}.")
    return loaded


def key_lines(path: Path) -> dict[str, int]:
    """The 1-based line of every key of a (valid) YAML file, by dotted path: {'train.lr': 4, ...}."""
    out: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = f"{prefix}{key_node.value}"
                    out.setdefault(key, key_node.start_mark.line + 1)
                    walk(value_node, key + ".")

    try:
        walk(yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader), "")
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        pass
    return out
