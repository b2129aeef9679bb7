import json

from ft_pipeline.cli import main


def test_demo_writes_the_inbox_of_the_data_dir(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "demo", "--records", "200", "--days", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary and sorted(p.name for p in (tmp_path / "inbox").glob("*.jsonl*"))


def test_status_of_an_empty_data_dir(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "train", "--task", "support"]) == 2
    assert "materialize task_dataset first" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "train", "--task", "../etc"]) == 2
    assert "must match" in capsys.readouterr().err
