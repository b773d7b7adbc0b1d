"""`posttrain run RECIPE`: run a recipe's stages in order."""

NAME = "run"
ORDER = 5
HELP = "Run a recipe (a YAML list of stages): resumes after a crash, skips stages whose inputs did not change."
DESCRIPTION = """Run every stage of a recipe in order, each stage's model being the previous stage's
artifact unless the stage names one. Outputs go to OUT/<stage name>. Rerunning skips
stages whose options and inputs are unchanged and resumes an interrupted training stage
from its checkpoint.

  posttrain run recipes/demo.yaml --out runs/demo
  posttrain run recipes/demo.yaml --out runs/demo-quick --quick
  posttrain run recipes/base.yaml --out runs/base      # rebuild the shipped base model

A stage's failed fatal gate (docs/governance.md) stops the run with exit code 1: nothing later runs, and
nothing is published or released.

Recipe format: see docs/recipes.md."""


def add_arguments(parser):
    parser.add_argument("recipe", help="Recipe YAML file.")
    parser.add_argument("--out", help="Run directory (default runs/<recipe name>).")
    parser.add_argument("--quick", action="store_true", help="Apply the recipe's 'quick' overrides (a short smoke run).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Allow replacing an existing publish.to target and using an --out that is not a run "
                             "directory (never a path that holds or lies inside an input). See docs/safety.md.")
    parser.add_argument("--no-progress", action="store_true", help="No progress output.")


def run(args) -> int:
    from posttrain.recipes import Runner, load_recipe

    import shlex
    import sys

    from posttrain.errors import TrainingInterrupted
    from posttrain.governance.gate_run import GateFailed

    recipe = load_recipe(args.recipe, quick=args.quick)
    out = args.out or f"runs/{recipe.name}" + ("-quick" if args.quick else "")
    try:
        outputs = Runner(recipe, out, progress=not args.no_progress, overwrite=args.overwrite).run()
    except TrainingInterrupted as e:
        again = ["posttrain", "run", args.recipe, "--out", out] + ["--quick"] * args.quick
        again += ["--overwrite"] * args.overwrite + ["--no-progress"] * args.no_progress
        print(f"posttrain run: {e} To continue, run: {shlex.join(again)} (finished stages are skipped and this "
              f"one resumes from its checkpoint).", file=sys.stderr)
        return 130
    except GateFailed as e:  # the stage's outcome is recorded; exit 1 (a failed check), not 2 (bad input)
        print(f"posttrain run: error: {e}", file=sys.stderr)
        return 1
    print(f"recipe '{recipe.name}' finished: " + ", ".join(f"{k} -> {v}" for k, v in outputs.items()))
    return 0
