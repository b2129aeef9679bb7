"""Tests of the word-level comparison of outputs with approved texts."""

from ft_pipeline.core.edits import edit_metrics, retained, word_diff


def test_deleted_preamble_is_one_span():
    output = "As an AI language model, I think Paris is the capital of France."
    final = "Paris is the capital of France."
    deleted, added, distance = word_diff(output, final)
    assert deleted == ["As an AI language model, I think"]
    assert added == []
    assert distance == 7
    assert retained(output, final) == 2 * 6 / (13 + 6)


def test_replaced_and_added_words():
    m = edit_metrics("The quick brown fox jumps.", "The slow brown fox jumps over the dog.")
    assert m.deleted_spans == ["quick", "jumps."]
    assert m.added_spans == ["slow", "jumps over the dog."]
    assert m.edit_distance == 1 + 4
    assert 0 < m.retained < 1


def test_identical_and_whitespace_only_changes_are_unchanged():
    for a, b in [("same text here", "same text here"), ("same  text\nhere", "same text here"), ("", "")]:
        m = edit_metrics(a, b)
        assert (m.retained, m.edit_distance, m.deleted_spans, m.added_spans) == (1.0, 0, [], [])


def test_everything_rewritten():
    m = edit_metrics("alpha beta", "gamma delta epsilon")
    assert m.retained == 0.0
    assert m.deleted_spans == ["alpha beta"]
    assert m.added_spans == ["gamma delta epsilon"]
    assert m.edit_distance == 3
