"""Tests of segment keys and model keys: values from user data become safe names, or hashes, and PII never a key."""

import pytest

from ft_pipeline.core.segments import checked_model_key, model_key, segment_key, split_model_key


@pytest.mark.parametrize("value", ["user-0001", "ana", "team_7", "h-0123456789abcdef"])
def test_a_safe_name_is_its_own_key(value):
    assert segment_key(value) == value


@pytest.mark.parametrize("value", ["Ana", "../etc", "a/b", "a.b", "user 1", "h-notahash", "x" * 65, "ünï"])
def test_any_other_value_becomes_a_stable_hash_that_is_a_safe_name(value):
    key = segment_key(value)
    assert key is not None and key.startswith("h-") and len(key) == 18 and key == segment_key(value)
    assert split_model_key(model_key("task", key)) == ("task", key)


@pytest.mark.parametrize("value", ["ana@example.com", "[EMAIL]", "user [PHONE]", "+1 415 555 0100", "", None])
def test_pii_or_nothing_is_no_segment(value):
    assert segment_key(value) is None


@pytest.mark.parametrize("key", ["qa", "qa.ana", "qa-1.h-0123456789abcdef"])
def test_model_keys(key):
    assert checked_model_key(key) == key


@pytest.mark.parametrize("key", ["qa/ana", "qa..ana", "qa.ana.bo", "QA", ".ana", "qa.", "qa.ana\n", "qa.../x"])
def test_bad_model_keys_are_refused(key):
    with pytest.raises(ValueError, match="model key"):
        checked_model_key(key)
