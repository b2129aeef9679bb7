"""PII redaction: e-mail addresses, phone numbers, payment cards, IP addresses, secrets, IBANs and US SSNs.

E-mail addresses are found in any script and in spelled-out forms (`name(at)example.org`), cards with spaces, dashes
or dots between their groups, phones in international, national and local (555-0199) forms, vendor keys also
right after `-` or `_`.

Each kind of PII is replaced by a typed placeholder such as [EMAIL]. Candidates found by a regex are
validated where a checksum or a parser exists (Luhn for cards, mod 97 for IBANs, `ipaddress` for IPs),
so ordinary numbers, dates, times, prices and code survive. `redact_column` runs a cheap column-wise
RE2 prefilter and applies the Python patterns only to the rows it flags.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

PII_TYPES = ("SECRET", "EMAIL", "IBAN", "CARD", "SSN", "IP", "PHONE")

# Tokens with a recognisable vendor prefix, JWTs, and `key = value` assignments of credentials. A prefix may follow
# `-` or `_` (`v-AKIA...`, `key_sk-...`): only a letter or digit before it makes it part of a longer word.
_SECRET = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"sk-(?:proj-|ant-|live-|test-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{8,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")"
)
_BEARER = re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]{12,}")
_ASSIGNED = re.compile(
    r"(?i)(\b(?:api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)((?=[^\s\"',;]*\d)(?=[^\s\"',;]*[A-Za-z])[^\s\"',;]{8,})"
)
# Long runs of token characters; kept only when they look random (see _high_entropy).
_LONG_TOKEN = re.compile(r"(?<![\w+/=-])[A-Za-z0-9_+/=-]{32,}(?![\w+/=-])")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Any script: accented and internationalised local parts and domains (josé@exämple.de, 用户@例子.中国), and the
# spelled-out forms people use to dodge filters: name(at)example.org, name [at] example [dot] org.
_EMAIL = re.compile(r"(?<![\w.+-])[^\W_][\w.%+-]*@[^\W_](?:[\w-]*[^\W_])?(?:\.[\w-]+)*\.(?:xn--[a-z0-9-]+|[^\W\d_]{2,})\b")
_SPELLED_AT = r"\s*[\[({<]\s*at\s*[\])}>]\s*"
_SPELLED_DOT = r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\.)"
_OBFUSCATED_EMAIL = re.compile(
    rf"(?i)(?<![\w.+-])[^\W_][\w.%+-]*{_SPELLED_AT}[^\W_][\w-]*(?:{_SPELLED_DOT}[\w-]+)*{_SPELLED_DOT}[^\W\d_]{{2,}}\b"
)

# Country code, two check digits, then the account in groups of four (spaces optional).
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")

# 13-19 digits, contiguous or in groups of four (or Amex 4-6-5) with one consistent separator.
_CARD = re.compile(r"(?<![\d.,-])(?:\d{13,19}|\d{4}([ .-])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?![\d-]|[.,]\d)")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")

_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)?(?:%\w+)?(?![\w:])")

# Phones: international (+CC, 8-15 digits), North American (3-3-4 with brackets or separators),
# and national trunk-prefix numbers (0 then 9-10 digits in groups). A separator is required, and no
# digit may touch the match, so years, times, long ids and card-like runs are left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,5}"
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"
    r"|\d{3}(?P<sep>[ .-])\d{3}(?P=sep)\d{4}"
    r"|\(?0\d{1,4}\)?[ -]\d{3,4}[ -]\d{3,4}"
    r"|0[1-9](?P<pair>[ .-])\d{2}(?:(?P=pair)\d{2}){3}"
    r"|0\d{2,4}[ /-]\d{6,8}"
    r")(?![\w])(?![ .-]\d)"
)
# A local number without area code, 3-4 digits as in 555-0199; no digit, dot or dash may touch it (ISBNs, versions).
_LOCAL_PHONE = re.compile(r"(?<![\w+.,/-])[2-9]\d{2}-\d{4}(?![\w-]|[.,/]\d)")

# Column-wise RE2 prefilter: a row that matches none of these cannot hold anything the patterns redact.
PREFILTER = (
    r"@|\d[\s().-]{0,2}\d[\s().-]{0,2}\d[\s().-]{0,2}\d[\s().-]{0,2}\d[\s().-]{0,2}\d[\s().-]{0,2}\d"
    r"|\d\.\d{1,3}\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:|::"
    r"|sk-|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|AIza|eyJ|(?i:bearer|api.?key|secret|token|passw)"
    r"|(?i:[\[({<]\s*at\s*[\])}>])"
    r"|[A-Za-z0-9_+/=-]{32}|[A-Z]{2}\d{2}"
)


def _luhn(digits: str) -> bool:
    """True when a digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_valid(candidate: str) -> bool:
    """True when `candidate` (spaces allowed) passes the ISO 13616 mod-97 check."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _high_entropy(token: str) -> bool:
    """True for a long token that looks random rather than like an identifier, a URL path or a UUID."""
    if _UUID.match(token):
        return False
    # URL paths are lowercase words and numbers between slashes; base64 secrets are mixed-case runs.
    if "/" in token and any(re.fullmatch(r"[a-z]+\d*|\d+", part) for part in token.split("/")):
        return False
    # snake_case and kebab-case identifiers split into words; random tokens are long runs mixing letters and digits.
    mixed = sum(len(p) for p in re.split(r"[_-]", token) if re.search(r"\d", p) and re.search(r"[A-Za-z]", p))
    if mixed < 16:
        return False
    counts = Counter(token)
    entropy = -sum(c / len(token) * math.log2(c / len(token)) for c in counts.values())
    return entropy >= 3.3


def _ipv6_valid(candidate: str) -> bool:
    """True for a real IPv6 address that is not a C++-style `a::b` scope made of letters only."""
    try:
        ipaddress.IPv6Address(candidate.split("%")[0])
    except ValueError:
        return False
    return bool(re.search(r"\d", candidate)) or candidate.count(":") >= 3


def _phone_valid(candidate: str) -> bool:
    """True when a phone candidate has a plausible digit count (8-15 international, 10-11 national)."""
    digits = sum(ch.isdigit() for ch in candidate)
    return 8 <= digits <= 15 if candidate.startswith("+") else 10 <= digits <= 11


def _card_valid(candidate: str) -> bool:
    """True for 13-19 digits from a card network's range that pass the Luhn check."""
    # Card networks start with 2-6; epoch milliseconds and most ids start with 1.
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn(digits)


# (type, pattern, validator of the matched text, group kept before the placeholder), in the order
# they run: secrets and e-mails first because they contain digit runs the numeric patterns would claim.
_RULES: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None, int]] = [
    ("SECRET", _SECRET, None, 0),
    ("SECRET", _BEARER, None, 1),
    ("SECRET", _ASSIGNED, None, 1),
    ("SECRET", _LONG_TOKEN, _high_entropy, 0),
    ("EMAIL", _EMAIL, None, 0),
    ("EMAIL", _OBFUSCATED_EMAIL, None, 0),
    ("IBAN", _IBAN, None, 0),
    ("CARD", _CARD, _card_valid, 0),
    ("SSN", _SSN, None, 0),
    ("IP", _IPV4, None, 0),
    ("IP", _IPV6, _ipv6_valid, 0),
    ("PHONE", _PHONE, _phone_valid, 0),
    ("PHONE", _LOCAL_PHONE, None, 0),
]


# What an identifier (a log_id, a task name) must not hold: everything but random-looking tokens and bare digit runs,
# which ids are made of (a 128-bit hex id looks like a secret, a 16-digit id passes Luhn one time in ten).
IDENTIFIER_RULES = [rule for rule in _RULES if rule[1] is not _LONG_TOKEN and rule[0] != "CARD"]


def _redact_iban(match: re.Match[str], counts: Counter) -> str:
    """The IBAN placeholder for the longest valid prefix of a candidate (it may have run into a following word)."""
    text = match.group(0)
    end = len(text)
    while end >= 15:
        if _iban_valid(text[:end]):
            counts["IBAN"] += 1
            return "[IBAN]" + text[end:]
        end -= 1
    return text


def redact(text: str, rules: list | None = None) -> tuple[str, dict[str, int]]:
    """`text` with every PII match replaced by its typed placeholder, and the count per type (`rules`: default all)."""
    counts: Counter = Counter()
    for kind, pattern, valid, keep in _RULES if rules is None else rules:
        if kind == "IBAN":
            text = pattern.sub(lambda m: _redact_iban(m, counts), text)
            continue

        def replace(m: re.Match[str], kind: str = kind, valid=valid, keep: int = keep) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return (m.group(keep) if keep else "") + f"[{kind}]"

        text = pattern.sub(replace, text)
    return text, dict(counts)


def _redact_json(text: str) -> tuple[str, dict[str, int]]:
    """Redact every string inside JSON text (escapes such as \\n would hide word boundaries from the patterns)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSON nested past Python's recursion limit is redacted as text
        return redact(text)
    counts: Counter = Counter()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            clean, found = redact(node)
            counts.update(found)
            return clean
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {walk(key): walk(item) for key, item in node.items()}
        return node

    try:
        cleaned = walk(value)
        return (json.dumps(cleaned, ensure_ascii=False) if counts else text), dict(counts)
    except RecursionError:
        return redact(text)


def redact_column(
    values: pa.Array | pa.ChunkedArray, json_text: bool = False, identifiers: bool = False
) -> tuple[pa.Array, dict[str, int]]:
    """A string (or list<string>) column with PII redacted (nulls kept) and the count per type; Python runs only on prefiltered rows.

    With `json_text`, each value is JSON text whose strings are redacted one by one, so the result stays valid JSON;
    with `identifiers`, only IDENTIFIER_RULES apply.
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_list(array.type):  # list<string> (failure reasons): the strings are redacted in place
        strings, found = redact_column(pc.list_flatten(array))
        if not found:
            return array, {}
        offsets = pc.subtract(array.offsets, array.offsets[0])
        return pa.ListArray.from_arrays(offsets, strings, type=array.type, mask=array.is_null()), found
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        raise TypeError(f"redact_column needs a string or list<string> column, got {array.type}")
    mask = pc.fill_null(pc.match_substring_regex(array, PREFILTER), False)
    clean_one = _redact_json if json_text else (lambda text: redact(text, IDENTIFIER_RULES)) if identifiers else redact
    counts: Counter = Counter()
    cleaned = []
    for text in array.filter(mask).to_pylist():
        new, found = clean_one(text)
        cleaned.append(new)
        counts.update(found)
    if not counts:
        return array, {}
    return pc.replace_with_mask(array, mask, pa.array(cleaned, type=array.type)), dict(counts)
