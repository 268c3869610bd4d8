"""Continuous improvement: triggers, retraining, champion/challenger decisions, A/B readout, error analysis."""
