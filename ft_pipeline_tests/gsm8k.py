"""OpenAI's GSM8K model solutions as a real review log: one contract record per (question, model)."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

GSM8K_PATH = Path(__file__).parent / "data" / "example_model_solutions.jsonl.gz"
MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 14


def gsm8k_records(path: Path = GSM8K_PATH) -> list[dict]:
    """Contract records: the model's solution as output, accepted when correct, else edited to the human reference."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        questions = [json.loads(line) for line in fh if line.strip()]
    step = timedelta(days=DAYS) / len(questions)
    records = []
    for index, item in enumerate(questions):
        for offset, model in enumerate(MODELS):
            size, method = model.split("_")
            correct = item[model]["is_correct"]
            record = {
                "log_id": hashlib.sha256(f"gsm8k:{index}:{model}".encode()).hexdigest()[:32],
                # the four models answer each question a minute apart, questions spread evenly over DAYS
                "timestamp": (START + index * step + timedelta(minutes=offset)).isoformat(),
                "task": "math_qa",
                "prompt": item["question"],
                "output": item[model]["solution"],
                "decision": "accepted" if correct else "edited",
                "agent": model,
                "model": f"gpt3-{size}",
                "reasoning_mode": method,
                "metadata": {"source": "openai/grade-school-math", "question_index": index},
            }
            if not correct:
                record["final_output"] = item["ground_truth"]
            records.append(record)
    return records
