"""xprune: explainability-guided layer pruning for object detectors, with exact folding for real speed."""

__version__ = "0.1.0"
