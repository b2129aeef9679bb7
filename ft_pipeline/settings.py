"""Every ft_pipeline knob in one place: defaults that run on a laptop, overridable by environment variables."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ft_pipeline.core.schema import LineLimits


def knob(default: Any, env: str, stage: str, help: str) -> Any:
    """A settings field with its environment variable, the stage that uses it and its help text."""
    factory = (lambda: dict(default)) if isinstance(default, dict) else None
    metadata = {"env": env, "stage": stage, "help": help}
    if factory:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """All knobs of the pipeline; `None` on a quality threshold switches that filter off."""

    data_dir: str = knob(
        "./data", "FT_DATA_DIR", "general", "Root of the inbox, lake, quarantine, reports, datasets, models and stores."
    )
    partitions_start: str = knob(
        "2020-01-01", "FT_PARTITIONS_START", "general", "First day of the daily partitions; older records are quarantined."
    )
    ingest_memory_limit: str = knob(
        "1GB", "FT_INGEST_MEMORY_LIMIT", "general", "DuckDB memory limit of the raw_logs ingest; beyond it DuckDB spills to disk."
    )
    ingest_max_line_bytes: int = knob(
        8 << 20, "FT_INGEST_MAX_LINE_BYTES", "general", "Longest input line in bytes; longer ones are quarantined as too_large."
    )
    ingest_max_depth: int = knob(
        64,
        "FT_INGEST_MAX_DEPTH",
        "general",
        "Deepest nesting of arrays and objects in a record; deeper ones are quarantined as too_deep.",
    )
    ingest_max_keys: int = knob(
        256, "FT_INGEST_MAX_KEYS", "general", "Most top-level keys of a record; more are quarantined as too_many_keys."
    )
    archive_inbox: bool = knob(
        True,
        "FT_ARCHIVE_INBOX",
        "general",
        "Move each fully ingested inbox file to inbox/processed/<day>/; off keeps it in place (the manifest skips it).",
    )
    inbox_retention_days: int | None = knob(
        0, "FT_INBOX_RETENTION_DAYS", "general", "Days inbox/processed/<day>/ folders are kept; 0 or empty keeps them forever."
    )
    raw_retention_days: int | None = knob(
        0,
        "FT_RAW_RETENTION_DAYS",
        "general",
        "Days of raw_logs partitions kept before today (UTC); 0 or empty keeps them forever.",
    )
    quarantine_retention_days: int | None = knob(
        0,
        "FT_QUARANTINE_RETENTION_DAYS",
        "general",
        "Days quarantine files are kept after they were last written; 0 or empty keeps them forever.",
    )
    feedback_retention_days: int | None = knob(
        0,
        "FT_FEEDBACK_RETENTION_DAYS",
        "general",
        "Days of feedback partitions kept before today (UTC); 0 or empty keeps them forever.",
    )

    # settlements: quality filters (each applied only when the record has the field)
    min_quality_score: float | None = knob(
        7.0, "FT_MIN_QUALITY_SCORE", "settlements", "Minimum quality_score (0-10) of a settled record."
    )
    min_confidence: float | None = knob(0.7, "FT_MIN_CONFIDENCE", "settlements", "Minimum confidence (0-1) of a settled record.")
    min_user_rating: float | None = knob(
        4.0, "FT_MIN_USER_RATING", "settlements", "Minimum user_rating (1-5) of a settled record."
    )
    min_final_chars: int | None = knob(
        2, "FT_MIN_FINAL_CHARS", "settlements", "Minimum length in characters of the approved text."
    )

    # pattern report
    significance: float = knob(0.05, "FT_SIGNIFICANCE", "report", "p-value under which a regression or an A/B difference counts.")
    regression_min_drop: float = knob(
        0.10, "FT_REGRESSION_MIN_DROP", "report", "Fall of a rate (0-1) in the last 7 days that counts as a regression."
    )
    regression_min_n: int = knob(
        20,
        "FT_REGRESSION_MIN_N",
        "report",
        "Reviewed records a group needs on each side of the 7-day line before a regression is tested.",
    )
    alert_rejection_rate: float = knob(
        0.2, "FT_ALERT_REJECTION_RATE", "report", "Rejection rate of a task above which its alert check fails."
    )
    alert_latency_p95_ms: float = knob(
        2000.0, "FT_ALERT_LATENCY_P95_MS", "report", "Latency p95 in ms of a task above which its alert check fails."
    )
    alert_confidence_drop: float = knob(
        0.1, "FT_ALERT_CONFIDENCE_DROP", "report", "Fall of mean confidence in the last 7 days above which the alert check fails."
    )
    report_min_group_n: int = knob(
        5,
        "FT_REPORT_MIN_GROUP_N",
        "report",
        "Reviewed records a group (a task, agent, user...) needs in the whole history to be listed in the report; "
        "the others are counted in groups_omitted.",
    )
    report_top_phrases: int = knob(10, "FT_REPORT_TOP_PHRASES", "report", "Phrases listed per agent for deletions and additions.")
    report_markdown_groups: int = knob(
        50,
        "FT_REPORT_MARKDOWN_GROUPS",
        "report",
        "Groups per dimension in the Markdown report and the UI, the most reviewed first; the JSON report lists them all.",
    )
    min_phrase_support: int = knob(3, "FT_MIN_PHRASE_SUPPORT", "report", "Edits a phrase must appear in before it is reported.")

    # datasets
    dev_share: float = knob(
        0.1,
        "FT_DEV_SHARE",
        "dataset",
        "Share of record groups (by hash of the group key) in the dev split: early stopping, checkpoints.",
    )
    test_share: float = knob(
        0.1,
        "FT_TEST_SHARE",
        "dataset",
        "Share of record groups (by hash of the group key) in the test split: the promotion decision only.",
    )
    split_group_by: str = knob(
        "prompt",
        "FT_SPLIT_GROUP_BY",
        "dataset",
        "What records are grouped by before the split: 'prompt' (normalised, with system prompt and prior turns) or a "
        "contract field such as user_id.",
    )
    min_train_examples: int = knob(
        50, "FT_MIN_TRAIN_EXAMPLES", "dataset", "Training examples a task needs before an adapter is trained."
    )
    segment_by: str = knob(
        "",
        "FT_SEGMENT_BY",
        "dataset",
        "Contract field that defines segments within a task (user_id, agent, topic, ...): each segment with "
        "FT_SEGMENT_MIN_EXAMPLES settled examples gets its own dataset and adapter; empty switches segments off.",
    )
    segment_min_examples: int = knob(
        50, "FT_SEGMENT_MIN_EXAMPLES", "dataset", "Settled examples a segment needs before its first adapter is trained."
    )
    max_seq_len: int = knob(
        512, "FT_MAX_SEQ_LEN", "dataset", "Longest tokenized example used for training; longer ones are counted and truncated."
    )
    default_system_prompts: dict = knob(
        {}, "FT_DEFAULT_SYSTEM_PROMPTS", "dataset", "JSON object task -> system prompt used when a record has none."
    )

    # base model
    base_model: str = knob(
        "builtin",
        "FT_BASE_MODEL",
        "model",
        "Hugging Face id or local folder of the base model, or 'builtin' for the small model trained locally.",
    )
    builtin_pretrain_steps: int = knob(300, "FT_BUILTIN_PRETRAIN_STEPS", "model", "Pretraining steps of the built-in base model.")
    builtin_vocab_size: int = knob(4096, "FT_BUILTIN_VOCAB_SIZE", "model", "Vocabulary size of the built-in tokenizer.")

    # LoRA training
    segment_warm_start: bool = knob(
        True,
        "FT_SEGMENT_WARM_START",
        "training",
        "A segment's adapter starts from its task's champion adapter (same LoRA shape and base), else from scratch.",
    )
    lora_r: int = knob(16, "FT_LORA_R", "training", "LoRA rank.")
    lora_alpha: int = knob(32, "FT_LORA_ALPHA", "training", "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = knob(0.05, "FT_LORA_DROPOUT", "training", "Dropout on the LoRA path.")
    lora_target_modules: str = knob(
        "auto",
        "FT_LORA_TARGET_MODULES",
        "training",
        "Comma-separated module names, or 'auto' for the architecture's attention and MLP projections.",
    )
    learning_rate: float = knob(
        1e-3, "FT_LEARNING_RATE", "training", "Peak learning rate (AdamW, linear warmup then cosine decay)."
    )
    batch_size: int = knob(16, "FT_BATCH_SIZE", "training", "Examples per batch.")
    max_steps: int = knob(200, "FT_MAX_STEPS", "training", "Upper bound on optimizer steps per training run.")
    eval_every: int = knob(20, "FT_EVAL_EVERY", "training", "Steps between dev-loss evaluations.")
    early_stopping_patience: int = knob(
        3, "FT_EARLY_STOPPING_PATIENCE", "training", "Evaluations without improvement before training stops."
    )
    checkpoint_every: int = knob(50, "FT_CHECKPOINT_EVERY", "training", "Steps between resumable checkpoints.")
    seed: int = knob(0, "FT_SEED", "training", "Seed of every random choice in training.")
    device: str = knob("auto", "FT_DEVICE", "training", "'auto' (GPU when present), 'cpu' or 'cuda'.")
    torch_threads: int = knob(0, "FT_TORCH_THREADS", "training", "CPU threads for torch; 0 keeps torch's default.")
    mlflow_tracking_uri: str = knob(
        "", "FT_MLFLOW_TRACKING_URI", "training", "MLflow tracking URI; empty means a sqlite store under the data dir."
    )

    # evaluation and promotion
    promotion_p_value: float = knob(
        0.05, "FT_PROMOTION_P_VALUE", "evaluation", "Wilcoxon p-value under which the candidate counts as better."
    )
    eval_generation_samples: int = knob(
        16, "FT_EVAL_GENERATION_SAMPLES", "evaluation", "Test examples that get greedy generations scored by chrF."
    )
    eval_max_new_tokens: int = knob(64, "FT_EVAL_MAX_NEW_TOKENS", "evaluation", "Longest greedy generation in evaluation.")
    generation_tolerance: float = knob(
        0.0,
        "FT_GENERATION_TOLERANCE",
        "evaluation",
        "How far the candidate's chrF may fall below the champion's and still be promoted.",
    )
    dry_run: bool = knob(
        False, "FT_DRY_RUN", "promotion", "Evaluate and record the decision; the promotion step does not move the champion alias."
    )

    # automation
    retrain_threshold: int = knob(
        50, "FT_RETRAIN_THRESHOLD", "automation", "New settled examples of a task that trigger a retrain."
    )
    nightly_retrain_cron: str = knob(
        "0 2 * * *", "FT_NIGHTLY_RETRAIN_CRON", "automation", "Cron of the nightly retrain of every task with new data."
    )
    daily_ingest_cron: str = knob(
        "15 0 * * *", "FT_DAILY_INGEST_CRON", "automation", "Cron of the daily ingest of yesterday's partition."
    )

    # HTTP capture API (ft-pipeline serve)
    serve_max_body_bytes: int = knob(
        16 << 20, "FT_SERVE_MAX_BODY_BYTES", "serve", "Largest request body in bytes; larger ones get 413."
    )
    serve_max_batch: int = knob(1000, "FT_SERVE_MAX_BATCH", "serve", "Most records in one request; more get 413.")
    serve_max_field_chars: int = knob(
        1_000_000,
        "FT_SERVE_MAX_FIELD_CHARS",
        "serve",
        "Longest text field of a record; a longer one rejects the record as field_too_long.",
    )
    serve_body_timeout_seconds: float = knob(
        30.0, "FT_SERVE_BODY_TIMEOUT_SECONDS", "serve", "How long a client may take to send a body before 408."
    )
    serve_publish_every: int = knob(
        # why not smaller: each inbox file costs the ingest tens of milliseconds, whatever its size
        20000,
        "FT_SERVE_PUBLISH_EVERY",
        "serve",
        "Records after which the server publishes its spool file into the inbox.",
    )
    serve_publish_seconds: float = knob(
        5.0, "FT_SERVE_PUBLISH_SECONDS", "serve", "Seconds after which the server publishes its spool file into the inbox."
    )
    serve_backend: str = knob(
        "inprocess",
        "FT_SERVE_BACKEND",
        "serve",
        "Who generates for the gateway: 'inprocess' (transformers + peft here) or 'upstream'.",
    )
    upstream_url: str = knob(
        "",
        "FT_UPSTREAM_URL",
        "serve",
        "OpenAI-compatible server with runtime LoRA loading (vLLM --enable-lora) the upstream backend uses.",
    )
    upstream_api_key: str = knob("", "FT_UPSTREAM_API_KEY", "serve", "Bearer key sent to FT_UPSTREAM_URL.")
    upstream_base_model: str = knob(
        "", "FT_UPSTREAM_BASE_MODEL", "serve", "Model name of the base at FT_UPSTREAM_URL (default: FT_BASE_MODEL)."
    )
    log_url: str = knob(
        "", "FT_LOG_URL", "serve", "Where log_interaction sends records (an ft-pipeline serve URL); empty writes into the inbox."
    )
    log_token: str = knob("", "FT_LOG_TOKEN", "serve", "Bearer API key log_interaction sends with FT_LOG_URL.")

    # staged rollout of a promoted adapter (ft_pipeline/serve/rollout.py)
    rollout_tiers: str = knob(
        "low=100;medium=10,50,100;high=5,25,50,100",
        "FT_ROLLOUT_TIERS",
        "promotion",
        "Risk tiers and their stages: name=percent,...,100 separated by ';'. A tier of only 100 promotes at once.",
    )
    rollout_task_tiers: str = knob(
        "*=medium",
        "FT_ROLLOUT_TASK_TIERS",
        "promotion",
        "Task name patterns (fnmatch) and their tier: pattern=tier separated by ';'; the first match wins, none: at once.",
    )
    rollout_min_reviewed: int = knob(
        100,
        "FT_ROLLOUT_MIN_REVIEWED",
        "promotion",
        "Reviewed candidate calls a rollout needs before it rolls back, and in each stage before it advances.",
    )
    rollout_alpha: float = knob(
        0.05,
        "FT_ROLLOUT_ALPHA",
        "promotion",
        "One-sided p-value under which the candidate's live acceptance counts as worse than the champion's: rollback.",
    )
    rollout_max_error_rate: float = knob(
        0.05,
        "FT_ROLLOUT_MAX_ERROR_RATE",
        "promotion",
        "Share of a candidate's calls its adapter failed to answer (the base answered) above which the rollout rolls back.",
    )
    serve_shadow_rate: float = knob(
        0.0,
        "FT_SERVE_SHADOW_RATE",
        "serve",
        "Share (0-1) of champion-arm requests of an active rollout the candidate also answers, logged, never shown.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from environment variables (or `env`), then explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None or _optional(cls, k)})
        return cls(**values)

    @property
    def line_limits(self) -> LineLimits:
        """The size, depth and key limits every input line is checked against, by ingest and by the client alike."""
        from ft_pipeline.core.schema import LineLimits

        return LineLimits(self.ingest_max_line_bytes, self.ingest_max_depth, self.ingest_max_keys)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some knobs changed."""
        return dataclasses.replace(self, **changes)

    # paths under the data dir
    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def inbox_dir(self) -> Path:
        return self.root / "inbox"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def lake_dir(self) -> Path:
        return self.root / "lake"

    @property
    def state_dir(self) -> Path:
        """Small durable files of the pipeline's own bookkeeping (the inbox manifest)."""
        return self.root / "state"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def evaluations_dir(self) -> Path:
        return self.root / "evaluations"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Where MLflow experiments created by ft_pipeline keep their artifacts."""
        return self.mlflow_dir / "artifacts"


def _optional(cls: type, name: str) -> bool:
    hint = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    return "None" in str(hint)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    """Parse an environment variable into the field's type, with an error that names the variable."""
    kind = str(f.type)
    text = raw.strip()
    try:
        if "None" in kind and text.lower() in {"", "none", "off"}:
            return None
        if kind.startswith("bool"):
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError("expected true or false")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("dict"):
            value = json.loads(text or "{}")
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        return raw
    except ValueError as exc:
        raise ValueError(f"{f.metadata['env']}={raw!r}: {exc}") from None


def knobs() -> list[dataclasses.Field]:
    """The settings fields, for documentation and for building Dagster run config."""
    return list(dataclasses.fields(Settings))
