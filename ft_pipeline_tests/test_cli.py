import json

from ft_pipeline.cli import main


def test_demo_writes_the_inbox_of_the_data_dir(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "demo", "--records", "200", "--days", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary and sorted(p.name for p in (tmp_path / "inbox").glob("*.jsonl*"))


def test_status_of_an_empty_data_dir(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["tasks"] == [] and status["alerts"]["report"] is None and status["alerts"]["failing"] == {}
    assert main(["--data-dir", str(tmp_path), "status"]) == 0
    assert "no pattern report yet" in capsys.readouterr().out


def test_status_shows_the_failing_alert_checks_of_the_report(tmp_path, capsys):
    from ft_pipeline.core.patterns import publish_report
    from ft_pipeline_tests.assets.test_pattern_report import _prepare_lake

    settings = _prepare_lake(tmp_path, with_bad_agent=True)
    publish_report(settings)
    assert main(["--data-dir", str(tmp_path), "status", "--json"]) == 0
    failing = json.loads(capsys.readouterr().out)["alerts"]["failing"]
    assert {"rejection_rate_alert", "latency_p95_alert"} <= set(failing)
    assert any("agent bad" in finding for finding in failing["rejection_rate_alert"])
    assert main(["--data-dir", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out
    assert "FAILED rejection_rate_alert: agent bad" in out and "FAILED latency_p95_alert" in out


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "train", "--task", "support"]) == 2
    assert "materialize task_dataset first" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "train", "--task", "../etc"]) == 2
    assert "must be a task name" in capsys.readouterr().err


def test_user_errors_print_one_line_and_a_traceback_only_with_debug(tmp_path, capsys):
    import pickle

    import pytest

    import ft_pipeline.cli as cli

    def unpickle(args, settings):
        pickle.loads(b"not a pickle")

    parser = cli.build_parser
    for error_args in (["train", "--task", "support\n"], ["generate", "bad name", "hi"]):
        assert main(["--data-dir", str(tmp_path), *error_args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    real = parser()
    real._subparsers._group_actions[0].choices["status"].set_defaults(func=unpickle)
    cli.build_parser = lambda: real
    try:
        assert main(["--data-dir", str(tmp_path), "status"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ft-pipeline status: ") and err.count("\n") == 1
        with pytest.raises(pickle.UnpicklingError):
            main(["--debug", "--data-dir", str(tmp_path), "status"])
    finally:
        cli.build_parser = parser
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["--data-dir", str(tmp_path / "a_file"), "demo", "--records", "5"]) == 2  # an OSError
    err = capsys.readouterr().err
    assert err.startswith("ft-pipeline demo: ") and err.count("\n") == 1
