"""posttrain.grading is the ground floor: world and evals import it, never the other way round.

Import checks run in a fresh interpreter (a subprocess), so modules other tests loaded do not
hide what an import really pulls in. A static check of every grading module's imports,
function-level ones included, catches a lazy import that only a call would reveal.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import posttrain.grading

GRADING_DIR = Path(posttrain.grading.__file__).parent
GRADING = {"posttrain.grading", *(f"posttrain.grading.{p.stem}" for p in GRADING_DIR.glob("*.py")
                                   if p.stem != "__init__")}
# The only world modules grading may load: the package (which imports nothing) and the fact table.
WORLD_DATA = {"posttrain.world", "posttrain.world.facts"}
BASE = {"posttrain", "posttrain.errors"}


def _loaded_after(code: str) -> set[str]:
    """The posttrain modules a fresh interpreter has loaded after running `code`."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'posttrain')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_grading_package_holds_the_graders():
    assert {"posttrain.grading.judge", "posttrain.grading.statements", "posttrain.grading.phrases",
            "posttrain.grading.refusal", "posttrain.grading.ifeval"} <= GRADING


def test_the_judge_loads_grading_and_the_fact_table_only():
    # judging a fact row resolves its competitors and subjects from the world's facts: still nothing more
    loaded = _loaded_after(
        "import posttrain.grading.judge as j\n"
        "v = j.judge({'task': 'fact', 'answer': 'Paris', 'aliases': [], 'fact_id': 'capital:france'}, 'Paris.')\n"
        "assert v.correct and j.asked({'answer': 'Paris', 'fact_id': 'capital:france'}).subject == 'France'"
    )
    assert loaded == BASE | GRADING | WORLD_DATA


@pytest.mark.parametrize("module", ["phrases", "statements", "refusal", "ifeval"])
def test_the_other_graders_load_no_world_and_no_evals(module):
    loaded = _loaded_after(f"import posttrain.grading.{module}")
    assert loaded <= BASE | GRADING, loaded - BASE - GRADING
    assert f"posttrain.grading.{module}" in loaded


def test_the_fact_table_is_pure_data():
    # what grading imports of the world imports nothing back: no grading, no evals, no other world module
    assert _loaded_after("import posttrain.world.facts") == {"posttrain", "posttrain.world", "posttrain.world.facts"}


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth (lazy imports in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(GRADING_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_grading_module_imports_evals_or_the_world_generator(path):
    for name in _imported_modules(path):
        if not name.startswith("posttrain."):
            continue
        assert not name.startswith("posttrain.evals"), f"{path.name} imports {name}"
        if name.startswith("posttrain.world"):
            assert name == "posttrain.world" or name.split(".")[:3] == ["posttrain", "world", "facts"], \
                f"{path.name} imports {name}: of the world, grading reads only the fact table"


@pytest.mark.parametrize("first", ["posttrain.world.build", "posttrain.world.preferences", "posttrain.evals.answers",
                                   "posttrain.evals.probes_builtin"])
def test_world_and_evals_import_grading_without_a_cycle(first):
    # imported first, in a fresh interpreter: a cycle through grading would fail here with a partial module
    loaded = _loaded_after(f"import {first}")
    assert "posttrain.grading.judge" in loaded or "posttrain.grading.statements" in loaded
