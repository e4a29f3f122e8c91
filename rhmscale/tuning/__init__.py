"""Hyperparameter tuning with Optuna: studies whose trials are ordinary runs (spec.py, study.py,
worker.py, dispatch.py, report.py)."""
