"""Training: LightningModules, the DataModule, the Trainer from the recipe, and the multi-process worker."""
