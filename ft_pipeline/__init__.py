"""ft_pipeline: from LLM interaction logs to curated datasets, pattern reports and evaluated LoRA adapters."""

__version__ = "0.1.0"
