"""`posttrain report RUN_DIR`: one self-contained HTML page about a recipe run.

rundir.py reads the run's stage folders into plain records, lineage.py links them (which model
came from which, which eval is the parent's), plots.py draws the training curves, page.py
writes the HTML. See docs/report.md.
"""
