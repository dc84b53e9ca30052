"""The evaluation report (reports/eval.md and eval.html): tables, curves and examples."""
