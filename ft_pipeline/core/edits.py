"""Word-level comparison of a model output with the text a person approved."""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher


@dataclass(frozen=True)
class EditMetrics:
    """How an output became its approved text: similarity, word edit distance and the changed spans."""

    retained: float
    edit_distance: int
    deleted_spans: list[str]
    added_spans: list[str]


UNCHANGED = EditMetrics(retained=1.0, edit_distance=0, deleted_spans=[], added_spans=[])


# A sentence ends with . ! or ? before whitespace; splitting the text there runs in C, unlike a word loop.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def edit_metrics(output: str, final: str) -> EditMetrics:
    """Compare `output` with `final` word by word (whitespace tokens, so punctuation stays with its word)."""
    if output == final:
        return UNCHANGED
    # Reviewers change a few sentences and keep the rest, so sentences are aligned first and words are
    # diffed only inside the sentences that changed: the same word-level spans, at a fraction of the
    # quadratic cost of SequenceMatcher over whole texts.
    a_sent, b_sent = _SENTENCE_END.split(output.strip()), _SENTENCE_END.split(final.strip())
    matched = total = distance = 0
    deleted: list[str] = []
    added: list[str] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a_sent, b_sent, autojunk=False).get_opcodes():
        if op == "equal":
            words = len(" ".join(a_sent[i1:i2]).split())
            matched += words
            total += 2 * words
            continue
        a_words = " ".join(a_sent[i1:i2]).split()
        b_words = " ".join(b_sent[j1:j2]).split()
        total += len(a_words) + len(b_words)
        for wop, k1, k2, l1, l2 in SequenceMatcher(None, a_words, b_words, autojunk=False).get_opcodes():
            if wop == "equal":
                matched += k2 - k1
                continue
            if k2 > k1:
                deleted.append(" ".join(a_words[k1:k2]))
            if l2 > l1:
                added.append(" ".join(b_words[l1:l2]))
            # A replaced run costs one substitution per aligned word plus the extra insertions or deletions.
            distance += max(k2 - k1, l2 - l1)
    return EditMetrics(
        retained=2.0 * matched / total if total else 1.0,
        edit_distance=distance,
        deleted_spans=deleted,
        added_spans=added,
    )


def word_diff(output: str, final: str) -> tuple[list[str], list[str], int]:
    """Deleted spans, added spans and word edit distance from `output` to `final`."""
    m = edit_metrics(output, final)
    return m.deleted_spans, m.added_spans, m.edit_distance


def retained(output: str, final: str) -> float:
    """Share of words kept from `output` in `final` (SequenceMatcher ratio on words; 1.0 when identical)."""
    return edit_metrics(output, final).retained
