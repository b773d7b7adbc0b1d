"""The probe suite: fixed, versioned measurements run on every checkpoint.

- probe.py: the Probe abstraction and its registry (PROBES, register_probe)
- probes_builtin.py: the built-in probes
- runner.py: run_probes, through the shared generation engine
- report.py: the report JSON, format_table, compare_table
- stats.py, calibration.py, answers.py: the pure functions they score with, besides the
  gold judge, refusal classifiers and IFEval checkers of posttrain.grading
"""
