"""mlops: recipes that take a model from experiment to production."""

__version__ = "0.1.0"
