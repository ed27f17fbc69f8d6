"""`xprune auto`: the whole job on a user's own model and data in one command.

    score (attr) -> iterative pruning under an mAP budget with fine-tuning -> export with the fold ->
    interleaved benchmark against the unpruned export (A/A control, mAP per image) -> report.md

Each stage writes its file into OUT and is skipped when that file is there from a run with the same arguments and
checkpoint (`auto.stamp.json` records them, `xprune.resume`) and the same input files (`auto.json`), and the budget
search keeps each fine-tuning step in OUT/pruned.steps: an interrupted run picks up where it stopped. `run.py` holds the stages, `report.py` renders report.md from the results files.
"""
