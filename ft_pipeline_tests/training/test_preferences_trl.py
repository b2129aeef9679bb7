"""preferences.jsonl through TRL's own DPO preprocessing and one DPO step on the tiny model."""

import json

import pytest

from ft_pipeline.core.datasets import build_task_dataset


@pytest.fixture
def preferences(tiny_base_settings, tiny_model_dir, write_settlement_rows, make_settlement):
    """datasets/support/preferences.jsonl built from edited settlements."""
    from transformers import AutoTokenizer

    settings = tiny_base_settings.replace(min_train_examples=1, dev_share=0.0, test_share=0.0)
    earlier = json.dumps([{"role": "user", "content": "Where is order 3?"}, {"role": "assistant", "content": "It ships."}])
    write_settlement_rows(
        settings.lake_dir,
        [
            make_settlement("e1", decision="edited", output="Order 4 ships.", final_text="Order 4 ships tomorrow."),
            make_settlement("e2", decision="edited", output="Hi.", final_text="Hello there!", messages=earlier),
            make_settlement("a1"),
        ],
    )
    build_task_dataset(settings, "support", AutoTokenizer.from_pretrained(tiny_model_dir))
    return settings.datasets_dir / "support" / "preferences.jsonl"


def test_trl_prepares_and_trains_dpo_on_the_preference_file(preferences, tiny_model_dir, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    torch.set_num_threads(1)
    dataset = load_dataset("json", data_files=str(preferences), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(dataset) == 2 and is_conversational(dataset[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=2,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    by_id = {row["id"]: row for row in prepared}
    # the completions are exactly the assistant turns, the prompt ends with the template's generation prompt
    assert tokenizer.decode(by_id["e1"]["chosen_ids"]).startswith("Order 4 ships tomorrow.<|im_end|>")
    assert tokenizer.decode(by_id["e1"]["rejected_ids"]).startswith("Order 4 ships.<|im_end|>")
    prompt = tokenizer.decode(by_id["e2"]["prompt_ids"])
    assert "It ships." in prompt and prompt.endswith("<|im_start|>assistant\n")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())
