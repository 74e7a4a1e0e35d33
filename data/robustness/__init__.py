"""Robustness data: the corruptions and perturbations of the evaluation sets."""
