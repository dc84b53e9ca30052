"""Measuring models: the evaluation harness (held-out loss, multiple choice, generation with
tools), answer scoring, log-likelihood, the judge, and rates with their intervals (stats)."""
