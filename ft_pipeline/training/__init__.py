"""Base model, LoRA training, evaluation and serving: no dagster import, runnable on its own."""

import warnings

# peft asks transformers for `is_gradient_checkpointing` on every wrap; transformers 5 warns about the rename each time.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
