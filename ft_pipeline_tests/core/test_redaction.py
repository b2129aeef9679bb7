"""Tests of PII redaction: every type is caught, ordinary numbers and code are left alone."""

import json

import pyarrow as pa
import pytest

from ft_pipeline.core.redaction import PII_TYPES, redact, redact_column

PII = {
    "EMAIL": ["john.doe+news@example.co.uk", "a_b@mail-server.example.org"],
    "PHONE": [
        "+44 20 7946 0958",
        "(555) 123-4567",
        "555-123-4567",
        "+1-202-555-0143",
        "+33 1 23 45 67 89",
        "+44 (0)20 7946 0958",
        "555.123.4567",
        "+91 98765 43210",
        "020 7946 0958",
    ],
    "CARD": ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500005555555559", "3782 822463 10005"],
    "IP": ["192.168.1.10", "10.0.0.255", "2001:db8::1", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
    "SECRET": [
        "sk-proj-abcdefghijklmnop1234567890",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-123456789012-abcdefghijkl",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "3f786850e387550fdab836ed7e6dc881de23001b",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
    "IBAN": [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
    ],
    "SSN": ["123-45-6789", "078-05-1120"],
}

CASES = [(kind, value) for kind, values in PII.items() for value in values]

ORDINARY = [
    "In 2024 the price was $1,234.56 (or 1234.56 EUR), up 3.5% on 2023.",
    "Meet on 2024-01-15 at 12:30:45, or 15/01/2024 at 10:30 am; timestamp 2024-01-15T12:30:45Z.",
    "SELECT id, name FROM users WHERE id = 123456789 AND created_at > '2024-01-01 00:00:00' LIMIT 100 OFFSET 2000;",
    "Card-like but Luhn-invalid: 1234 5678 9012 3456 and 4111111111111112.",
    "Epoch ms 1700000000000, order #12345678, ISBN 978-3-16-148410-0, 1,000,000 users, pi 3.14159.",
    "Use std::vector and Foo::bar, version 10.2.1, path /api/v1/users/12345/orders/67890/items.",
    "uuid 123e4567-e89b-12d3-a456-426614174000 and test_settlement_partition_with_2_rows_v2.",
    "Invalid IBAN DE00 3704 0044 0532 0130 00, SSN-shaped 000-12-3456, score +5 points, 2 + 2 = 4.",
    "token = tokenizer.encode(text); password = input()",
]


@pytest.mark.parametrize(("kind", "value"), CASES)
def test_each_pii_value_is_replaced_by_its_placeholder(kind, value):
    text, counts = redact(f"Contact: {value}. Thanks!")
    assert value not in text
    assert text == f"Contact: [{kind}]. Thanks!"
    assert counts == {kind: 1}


def test_credentials_keep_their_label():
    text, counts = redact("Authorization: Bearer abc123DEF456ghi789 and api_key=abc123def456 and password: hunter2hunter2")
    assert text == "Authorization: Bearer [SECRET] and api_key=[SECRET] and password: [SECRET]"
    assert counts == {"SECRET": 3}


def test_iban_followed_by_capitalised_word_keeps_the_word():
    text, counts = redact("Pay DE89 3704 0044 0532 0130 00 THEN stop")
    assert text == "Pay [IBAN] THEN stop"
    assert counts == {"IBAN": 1}


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == (text, {})


def test_json_text_stays_valid_json():
    text, counts = redact(json.dumps({"email": "x@example.com", "password": "s3cretpass9", "n": 12}))
    assert json.loads(text) == {"email": "[EMAIL]", "password": "[SECRET]", "n": 12}
    assert counts == {"EMAIL": 1, "SECRET": 1}


def test_redact_column_matches_redact_and_keeps_nulls():
    texts = [f"x {value} y" for _, value in CASES] + ORDINARY + [None, "nothing here"]
    column, counts = redact_column(pa.chunked_array([texts[:10], texts[10:]]))
    assert column.to_pylist() == [None if t is None else redact(t)[0] for t in texts]
    assert counts == {kind: len(PII[kind]) for kind in PII_TYPES}


def test_redact_column_without_pii_returns_the_column_unchanged():
    column = pa.array(["plain words", None, "2024 and $5"])
    cleaned, counts = redact_column(column)
    assert cleaned.equals(column)
    assert counts == {}


def test_json_column_redacts_behind_escapes_and_stays_valid():
    messages = json.dumps([{"role": "user", "content": "call me:\n+44 20 7946 0958\tor\nGB82WEST12345698765432"}])
    column, counts = redact_column(pa.array([messages, "not json: bob@example.com", None]), json_text=True)
    assert json.loads(column[0].as_py()) == [{"role": "user", "content": "call me:\n[PHONE]\tor\n[IBAN]"}]
    assert column.to_pylist()[1:] == ["not json: [EMAIL]", None]
    assert counts == {"PHONE": 1, "IBAN": 1, "EMAIL": 1}


# Obfuscated and international forms: each must be caught (recall), and look-alikes must survive (precision).
EVASIVE = [
    ("EMAIL", "name(at)example.org"),
    ("EMAIL", "name [at] example [dot] org"),
    ("EMAIL", "first.last {at} mail (dot) example (dot) com"),
    ("EMAIL", "josé@exämple.de"),
    ("EMAIL", "用户@例子.中国"),
    ("EMAIL", "info@xn--bcher-kva.example"),
    ("CARD", "4111.1111.1111.1111"),
    ("PHONE", "555-0199"),
    ("PHONE", "06 12 34 56 78"),
    ("PHONE", "0171 1234567"),
    ("SECRET", "sk-abc12345"),
    ("SECRET", "v-AKIAIOSFODNN7EXAMPLE"),
    ("SECRET", "key_sk-proj-abcdefghijklmnop1234567890"),
    ("SSN", "078-05-1120"),
]
LOOK_ALIKES = [
    "look at this (at home) and meet me at noon",
    "sk-learn and scikit-learn are libraries",
    "ISBN 978-3-16-148410-0 and version 1.2.3-4567",
    "pages 123-4567 of the 2024-0199 report",
    "release 10.2 is not an address, nor is 1.1111.1111.1111",
    "the ratio 1111.1111 and the year 2026",
    "mask-AKIA is a word, task_name_v2 an identifier",
    "Email me at the office (dot) not here",
    "call extension 12-3456 or room 101",
]


def _caught(kind: str, value: str) -> bool:
    text, counts = redact(f"see {value} now")
    return value not in text and counts.get(kind, 0) >= 1


def test_evasive_pii_is_caught_and_look_alikes_are_left_alone(capsys):
    """Precision and recall over every true positive (plain and evasive PII) and every look-alike in these tests."""
    positives = CASES + EVASIVE
    missed = [value for kind, value in positives if not _caught(kind, value)]
    flagged = [text for text in LOOK_ALIKES + ORDINARY if redact(text)[1]]
    true_pos = len(positives) - len(missed)
    recall = true_pos / len(positives)
    precision = true_pos / (true_pos + len(flagged))
    with capsys.disabled():
        print(
            f"\nredaction corpus: {len(positives)} PII values ({len(EVASIVE)} evasive), "
            f"{len(LOOK_ALIKES) + len(ORDINARY)} look-alikes: recall {recall:.3f}, precision {precision:.3f}"
        )
    assert recall == 1.0, missed
    assert precision >= 0.97, flagged


def test_list_columns_are_redacted_in_place():
    column = pa.array([["too_formal", "ssn 078-05-1120"], None, [], ["ok"]], pa.list_(pa.string()))
    cleaned, counts = redact_column(column)
    assert cleaned.to_pylist() == [["too_formal", "ssn [SSN]"], None, [], ["ok"]] and counts == {"SSN": 1}


def test_json_nested_past_the_recursion_limit_is_redacted_as_text():
    deep = '{"a": ' * 5000 + '"mail bob@example.com"' + "}" * 5000
    cleaned, counts = redact_column(pa.array([deep]), json_text=True)
    assert "bob@example.com" not in cleaned[0].as_py() and counts == {"EMAIL": 1}
