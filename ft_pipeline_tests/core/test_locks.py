"""Cross-process locks and scratch folders: held across processes, released by death, dead owners' folders swept."""

import subprocess
import sys

import pytest

from ft_pipeline.core.locks import LockBusy, hold, is_free, lock_path
from ft_pipeline.core.scratch import scratch_dir, scratch_root, sweep

HOLDER = """
import sys, time
from pathlib import Path
from ft_pipeline.core.locks import hold
from ft_pipeline.core.scratch import scratch_dir
with hold(Path(sys.argv[1]), "ingest"), scratch_dir(Path(sys.argv[1]), "ingest") as folder:
    (folder / "rows.parquet").write_bytes(b"half written")
    print("ready", flush=True)
    time.sleep(60)
"""


def _start_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_another_process_waits_or_is_refused_until_the_holder_dies(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        assert not is_free(lock_path(tmp_path, "ingest"))
        with pytest.raises(LockBusy, match=f"pid {proc.pid}"), hold(tmp_path, "ingest", timeout=0.2):
            pass
        # a live owner's staging folder is never swept
        assert sweep(tmp_path, "ingest") == []
        assert len(list(scratch_root(tmp_path).glob("ingest-*/rows.parquet"))) == 1
    finally:
        proc.kill()
        proc.wait()
    with hold(tmp_path, "ingest", timeout=5):  # the kernel dropped the dead holder's lock
        pass
    removed = sweep(tmp_path, "ingest")
    assert len(removed) == 1 and not removed[0].exists()
    assert list(scratch_root(tmp_path).iterdir()) == []


def test_a_lock_is_reentrant_within_a_process_and_exclusive_across(tmp_path):
    with hold(tmp_path, "train-summarize"), hold(tmp_path, "train-summarize"):
        assert not is_free(lock_path(tmp_path, "train-summarize"))
    assert is_free(lock_path(tmp_path, "train-summarize"))


def test_a_waiting_caller_gets_the_lock_once_it_is_released(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.replace("time.sleep(60)", "time.sleep(0.5)"), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    with hold(tmp_path, "ingest"):
        # the holder let go of its scratch folder inside its lock: getting the lock means it is done
        assert list(scratch_root(tmp_path).glob("ingest-*")) == []
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x\n"])
def test_lock_names_never_become_paths_unchecked(tmp_path, name):
    with pytest.raises(ValueError):
        lock_path(tmp_path, name)


def test_a_finished_scratch_folder_leaves_nothing(tmp_path):
    with scratch_dir(tmp_path, "settle") as folder:
        (folder / "x").write_text("x")
    assert list(scratch_root(tmp_path).iterdir()) == []


def test_another_thread_waits_for_a_lock_this_thread_holds(tmp_path):
    import threading

    order = []

    def other():
        with hold(tmp_path, "alias-t"):
            order.append("other")

    with hold(tmp_path, "alias-t"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(0.3)
        order.append("first")
    thread.join()
    assert order == ["first", "other"]
