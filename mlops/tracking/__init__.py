"""Tracked runs, as users look at them: `mlops runs` (a table), `diff` (two runs side by side), `reproduce`."""
