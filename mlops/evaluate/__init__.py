"""Evaluation: metrics from scikit-learn, plots for people."""
