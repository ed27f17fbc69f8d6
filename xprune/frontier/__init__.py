"""Frontier v2: latency against mAP after real recovery. Points at removed-MAC targets per model and criterion,
each fine-tuned once and evaluated at several epochs against the unpruned model fine-tuned the same way, timed
afterwards on a quiet machine. `benchmarks/frontier.py` is its command line."""
