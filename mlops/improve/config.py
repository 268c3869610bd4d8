"""The recipe's `improve:` section (config group `configs/improve/`). Pydantic only: imported by the recipe schema,
so `mlops validate` checks it without importing anything heavy."""

from __future__ import annotations

from mlops.recipe.section import Section


class ImproveConfig(Section):
    """Filled by the improve phase."""
