"""Find and mask personal data and secrets in Japanese and English text.

`find_pii` returns where each e-mail address, phone number, card number, My Number, postal
code, IP address or secret sits in a string; `mask_pii` replaces each with a placeholder such
as `<EMAIL>` and counts them by type, so a data set can be cleaned before fine-tuning.

Data from users is rarely normalized, so full-width digits, letters and punctuation
("０９０－１２３４－５６７８") and the hyphens "‐" and "－" are read as their ASCII forms. The
katakana long-vowel mark "ー" is not a hyphen. Every detector is tuned to refuse the look-alikes
common in real data sets: dates, times, prices, version strings, order numbers, code.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

PII_TYPES: tuple[str, ...] = (
    "email",
    "phone",
    "credit_card",
    "my_number",
    "postal_code",
    "ip_address",
    "secret",
)
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "credit_card": "<CREDIT_CARD>",
    "my_number": "<MY_NUMBER>",
    "postal_code": "<POSTAL_CODE>",
    "ip_address": "<IP_ADDRESS>",
    "secret": "<SECRET>",
}

# When two findings overlap and are as long as each other, the earlier type here wins: a
# password that happens to be all digits is a secret first, a phone number second.
_SPECIFICITY = ("secret", "email", "credit_card", "my_number", "ip_address", "phone", "postal_code")
_RANK = {name: rank for rank, name in enumerate(_SPECIFICITY)}
# Detectors that need a digit somewhere in the row; rows without one skip them all.
_NUMERIC = frozenset({"phone", "credit_card", "my_number", "postal_code", "ip_address"})

Span = tuple[int, int]


@dataclass(frozen=True)
class Finding:
    type: str  # one of PII_TYPES
    start: int  # offset of the first character in the original text
    end: int  # offset one past the last character
    text: str  # the original text[start:end], full-width characters and all


# ---------------------------------------------------------------------------------------------
# Normalization: one character in, one character out, so offsets stay valid for the original.

_TO_ASCII = str.maketrans(
    {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}  # full-width ASCII block
    | {0x3000: " ", 0x2010: "-", 0x2011: "-", 0x2012: "-", 0x2013: "-", 0x2212: "-"}
)
_NEEDS_ASCII = re.compile("[\u2010-\u2013\u2212\u3000\uff01-\uff5e]+")
_DIGIT = re.compile("[0-9]")
_DIGIT_RUN = re.compile("[0-9]+")


def _ascii_view(text: str) -> str:
    """`text` with full-width forms and hyphen variants replaced by ASCII, same length."""
    # Translating only the runs that need it is two to three times faster than translating
    # whole rows: most rows have none, and Japanese rows a few full-width colons or brackets.
    return _NEEDS_ASCII.sub(lambda match: match.group().translate(_TO_ASCII), text)


# ---------------------------------------------------------------------------------------------
# Detectors. Each takes the ASCII view and yields (start, end) spans.
#
# The patterns run on most rows start with a plain character or character class and check the
# character before the match with a lookbehind placed *after* that first character
# (`0(?<![0-9].)`): a leading lookbehind stops `re` from jumping straight to candidate
# characters. Patterns behind a cheap gate ("@" in the row for e-mail) keep the plain form.

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*@"
    # "icon@2x.png" is a retina image name, not an address
    r"(?![0-9]x\.)"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)


def _find_email(s: str) -> Iterator[Span]:
    if "@" not in s:
        return
    for match in _EMAIL.finditer(s):
        yield match.span()


_PHONE = re.compile(
    r"(?:"
    # +81 90 1234 5678, +1 (415) 555-0100, +44 20 7946 0958. Possessive so that a failed
    # match does not retry every way of splitting the digits into groups.
    r"\+(?<![0-9A-Za-z_+].)[1-9][0-9]*+(?:[ -]?(?:\([0-9]++\)|[0-9]++))*+"
    r"|0(?<![0-9A-Za-z_].)(?<![0-9][-.].)(?:"
    r"[0-9]{1,4}([ -])[0-9]{1,4}\1[0-9]{3,4}"  # 03-1234-5678, 0120 123 456
    r"|[0-9]{1,4}\([0-9]{1,4}\)[0-9]{3,4}"  # 03(1234)5678
    r"|[789]0[0-9]{8})"  # 09012345678
    r"|\((?<![0-9A-Za-z_].)0[0-9]{1,4}\) ?[0-9]{1,4}-?[0-9]{3,4}"  # (03) 1234-5678
    r")(?![0-9A-Za-z_])(?![-.][0-9])"
)
_MOBILE_PREFIXES = ("050", "070", "080", "090")  # 11-digit numbers; 0800 toll-free included
_TOLL_FREE_PREFIXES = ("0120", "0570", "0800", "0990")


def _domestic_phone_ok(runs: list[str]) -> bool:
    """Japanese numbers: 10 digits (landline, toll-free) or 11 (mobile, IP phone, 0800)."""
    digits = "".join(runs)
    if len(digits) == 11:
        return digits.startswith(_MOBILE_PREFIXES)
    if len(digits) != 10 or digits[1] == "0" or digits.startswith(_MOBILE_PREFIXES):
        return False
    # A landline's subscriber number is four digits; "012-3456-789" is an order number.
    return len(runs[-1]) != 3 or digits.startswith(_TOLL_FREE_PREFIXES)


def _international_phone_ok(digits: str) -> bool:
    """Country code plus national number, E.164 length, with stricter rules for +1 and +81."""
    if not 8 <= len(digits) <= 15:
        return False
    if digits.startswith("1"):
        return len(digits) == 11  # North America: +1 and ten digits
    if digits.startswith("81"):
        national = digits[2:].removeprefix("0")  # "+81 (0)3 ..." keeps the trunk zero
        if len(national) == 10:
            return national.startswith(("50", "70", "80", "90"))
        return len(national) == 9
    return True


def _international_phone_end(match: re.Match[str]) -> int | None:
    """End of the phone number in `match`, dropping trailing groups that are not part of it.

    Spaces separate both the groups of a number and the number from what follows, so
    "+44 20 7946 0958 2024" matches with the year; shorten until the digits form a number.
    """
    runs = list(_DIGIT_RUN.finditer(match.group()))
    while runs:
        if _international_phone_ok("".join(run.group() for run in runs)):
            end = match.start() + runs[-1].end()
            closes_paren = match.string[end : end + 1] == ")" and match.end() > end
            return end + 1 if closes_paren else end
        if len(runs) <= 2:  # never cut a number down to its country code
            return None
        runs.pop()
    return None


def _find_phone(s: str) -> Iterator[Span]:
    for match in _PHONE.finditer(s):
        if match.group().startswith("+"):
            end = _international_phone_end(match)
            if end is not None:
                yield match.start(), end
        elif _domestic_phone_ok(_DIGIT_RUN.findall(match.group())):
            yield match.span()


_CARD = re.compile(
    # Issuers' numbers start with 2-6 (Mastercard, Amex/JCB/Diners, Visa, Mastercard,
    # Discover/UnionPay); leaving out 1 keeps 13-digit millisecond timestamps out.
    r"[2-6](?<![0-9].)(?<![0-9][-.].)[0-9]{3}(?:"
    r"([- ])[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{3})?"  # 4-4-4-4, 4-4-4-4-3
    r"|([- ])[0-9]{6}\2[0-9]{4,5}"  # Amex 4-6-5, Diners 4-6-4
    r"|[0-9]{9,15})"  # ungrouped, 13-19 digits
    # A space may follow (an expiry date "12/27" often does); a hyphen or dot and a digit
    # would mean the number goes on.
    r"(?![0-9])(?![-.][0-9])"
)


def _find_credit_card(s: str) -> Iterator[Span]:
    for match in _CARD.finditer(s):
        if luhn_valid(match.group()):
            yield match.span()


_MY_NUMBER = re.compile(
    # Stricter edges than cards, spaces included: a 1-in-10 check digit cannot tell a
    # My Number from three groups of a longer spaced number in a table.
    r"[0-9](?<![0-9].)(?<![0-9][-. ].)[0-9]{3}([- ]?)[0-9]{4}\1[0-9]{4}(?![-. ]?[0-9])"
)


def _find_my_number(s: str) -> Iterator[Span]:
    for match in _MY_NUMBER.finditer(s):
        if my_number_valid(match.group()):
            yield match.span()


_POSTAL_CODE = re.compile(
    r"(?:〒|郵便番号[ \t]*(?:[:は][ \t]*)?)[ \t]*〒?[ \t]*"
    r"([0-9]{3}-?[0-9]{4})(?![0-9])(?!-[0-9])"
)


def _find_postal_code(s: str) -> Iterator[Span]:
    # A bare 123-4567 is as likely a part number as a postal code; only the cues count.
    if "〒" not in s and "郵便番号" not in s:
        return
    for match in _POSTAL_CODE.finditer(s):
        yield match.span(1)  # keep the 〒 or 郵便番号 label, mask the number


_IPV4 = re.compile(r"[0-9](?<![0-9A-Za-z_.].)[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9])(?!\.[0-9])")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_.])(?:[0-9A-Fa-f]{1,4}|(?=::))(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:(?:\.[0-9]{1,3}){3})?"  # ::ffff:192.0.2.1
)
_IPV6_GROUP = re.compile("[0-9A-Fa-f]+")


def _ipv6_address(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    # "a[1::2]" slices, "::1" and C++ "Abc::Def" parse as IPv6 too; a real address in text
    # has a digit and either three groups or a group of three hex digits or more.
    groups = _IPV6_GROUP.findall(candidate)
    has_digit = _DIGIT.search(candidate) is not None
    return has_digit and (len(groups) >= 3 or max(map(len, groups), default=0) >= 3)


def _find_ip_address(s: str) -> Iterator[Span]:
    if "." in s:
        for match in _IPV4.finditer(s):
            if all(int(octet) <= 255 for octet in match.group().split(".")):
                yield match.span()
    if s.count(":") >= 2:
        for match in _IPV6.finditer(s):
            start, end = match.span()
            if s[end - 1] == ":" and s[end - 2] != ":":
                end -= 1  # "fe80::1: the router" - the colon belongs to the sentence
            follows_word = s[end : end + 1].isalnum()
            if not follows_word and _ipv6_address(s[start:end]):
                yield start, end


_TOKEN = re.compile(
    # Each branch begins with a literal so `re` can skip to candidate characters; word edges
    # are checked in _find_secret for the same reason.
    r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI sk-, sk-proj-; Anthropic sk-ant-
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|sk_live_[0-9A-Za-z]{10,}|rk_live_[0-9A-Za-z]{10,}|pk_live_[0-9A-Za-z]{10,}"  # Stripe
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|eyJ[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]*"  # JWT
)
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

_PRIVATE_KEY = re.compile(
    # An unterminated block (a truncated row) is masked to the end rather than half leaked.
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)

_ASSIGNMENT = re.compile(
    # Matched against the lower-cased text: an IGNORECASE alternation cannot use the fast
    # first-character skip and made this the slowest detector by far. Word edges before the
    # key are checked in _key_starts_word. Prefixes such as DB_ or x-api- may come before.
    r"(?:api[_-]?key|secret|passwd|password|passphrase|pwd|token|access[_-]?key"
    r"|private[_-]?key|credentials?|authorization"
    r"|パスワード|暗証番号|トークン|シークレット|秘密鍵|アクセスキー|apiキー)"
    r"(?:[_-](?:access[_-])?key)?"  # secret_key, secret_access_key
    r"[\"']?[ \t]*(?:=>|:=|[=:]|は)[ \t]*(?P<quote>[\"'「]?)(?:(?:bearer|basic)[ \t]+)?"
    # The value: printable ASCII except quotes and backticks, so it stops at a closing quote
    # and at Japanese text ("パスワード：abcd1234です").
    r"(?P<value>[!#-&(-_a-~]{8,})"
)
_ASSIGNMENT_IGNORECASE = re.compile(_ASSIGNMENT.pattern, re.IGNORECASE)
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# Values that are code or templates, not secrets: $ENV, {{ var }}, <placeholder>,
# tokenizer.eos_token, os.environ["KEY"], getpass().
_NOT_A_SECRET = re.compile(
    r"[$%{<]|[A-Za-z_][A-Za-z0-9_.]*[(\[]|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$"
)


def _key_starts_word(s: str, start: int) -> bool:
    """Whether a key name at `start` begins a word: "DB_PASSWORD", "authToken", not "mytoken"."""
    if start == 0 or s[start - 1] not in _WORD_CHARS:
        return True
    return s[start].isupper() and not s[start - 1].isupper()  # a camelCase hump


def _assignment_value(s: str, match: re.Match[str]) -> Span | None:
    if not _key_starts_word(s, match.start()):
        return None
    start, end = match.span("value")
    value = s[start:end]  # from the original case, not the lower-cased copy matched
    if not match.group("quote"):
        # Unquoted values run into sentence punctuation: "token=abcd1234efgh."
        value = value.rstrip(".,;:)]}")
        end = start + len(value)
    if len(value) < 8 or _NOT_A_SECRET.match(value):
        return None
    return start, end


def _find_assignments(s: str) -> Iterator[Span]:
    lowered = s.lower()
    # A few characters ("İ") grow when lower-cased and would shift every offset after them.
    same_length = len(lowered) == len(s)
    pattern, target = (_ASSIGNMENT, lowered) if same_length else (_ASSIGNMENT_IGNORECASE, s)
    for match in pattern.finditer(target):
        span = _assignment_value(s, match)
        if span is not None:
            yield span


def _find_secret(s: str) -> Iterator[Span]:
    for match in _TOKEN.finditer(s):
        start, end = match.span()
        before = s[start - 1] if start else " "
        after = s[end] if end < len(s) else " "
        if before not in _TOKEN_CHARS and after not in _TOKEN_CHARS:
            yield start, end
    if "-----BEGIN" in s:
        for match in _PRIVATE_KEY.finditer(s):
            yield match.span()
    yield from _find_assignments(s)


_DETECTORS: dict[str, Callable[[str], Iterator[Span]]] = {
    "email": _find_email,
    "phone": _find_phone,
    "credit_card": _find_credit_card,
    "my_number": _find_my_number,
    "postal_code": _find_postal_code,
    "ip_address": _find_ip_address,
    "secret": _find_secret,
}


# ---------------------------------------------------------------------------------------------
# Public API


def luhn_valid(digits: str) -> bool:
    """Whether a card number passes the Luhn check.

    Spaces and hyphens between groups are ignored and full-width digits accepted; any other
    character, or no digit at all, gives False.
    """
    digits = _ascii_view(digits).replace(" ", "").replace("-", "")
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:  # every second digit from the right is doubled
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def my_number_valid(digits: str) -> bool:
    """Whether 12 digits form a valid Japanese individual number (個人番号, My Number).

    The last digit must equal the check digit computed from the first 11: with P_n the n-th
    digit from the right of those 11 and Q_n = n + 1 (n <= 6) or n - 5 (n >= 7),
    r = sum(P_n * Q_n) mod 11 and the check digit is 0 if r <= 1, else 11 - r. Spaces and
    hyphens between groups are ignored and full-width digits accepted.
    """
    digits = _ascii_view(digits).replace(" ", "").replace("-", "")
    if len(digits) != 12 or not digits.isascii() or not digits.isdigit():
        return False
    body = digits[:11]
    total = sum(int(body[11 - n]) * (n + 1 if n <= 6 else n - 5) for n in range(1, 12))
    remainder = total % 11
    check = 0 if remainder <= 1 else 11 - remainder
    return int(digits[11]) == check


def find_pii(text: str, types: Iterable[str] = PII_TYPES) -> list[Finding]:
    """Personal data and secrets in `text`, sorted by start and never overlapping.

    `types` limits the search to some of PII_TYPES (a single name is accepted too). Where two
    findings overlap, the longer one is kept, and of two equally long the more specific.
    Offsets index `text` itself. Raises ValueError for a type name not in PII_TYPES.
    """
    names = _checked_types(types)
    view = _ascii_view(text)
    has_digit = _DIGIT.search(view) is not None
    spans = [
        (start, end, name)
        for name in names
        if has_digit or name not in _NUMERIC
        for start, end in _DETECTORS[name](view)
    ]
    return [Finding(name, start, end, text[start:end]) for start, end, name in _disjoint(spans)]


def mask_pii(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, Counter[str]]:
    """`text` with every finding of `types` replaced by its placeholder, and counts by type.

    "Mail taro@example.com" -> ("Mail <EMAIL>", Counter({"email": 1})). For key = value
    secrets only the value is replaced; for postal codes only the number after 〒 or 郵便番号.
    Raises ValueError for a type name not in PII_TYPES.
    """
    findings = find_pii(text, types)
    pieces = []
    last = 0
    for finding in findings:
        pieces += [text[last : finding.start], PLACEHOLDERS[finding.type]]
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces), Counter(finding.type for finding in findings)


def _checked_types(types: Iterable[str]) -> tuple[str, ...]:
    if types is PII_TYPES:
        return PII_TYPES
    names = (types,) if isinstance(types, str) else tuple(types)
    for name in names:
        if name not in _DETECTORS:
            raise ValueError(f"unknown PII type {name!r}; choose from: {', '.join(PII_TYPES)}")
    return tuple(dict.fromkeys(names))


def _disjoint(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Keep the longest span of each overlapping group (ties: the more specific type)."""
    if len(spans) <= 1:
        return spans
    kept: list[tuple[int, int, str]] = []
    for span in sorted(spans, key=lambda s: (s[0] - s[1], _RANK[s[2]], s[0])):
        start, end, _ = span
        if all(end <= other[0] or start >= other[1] for other in kept):
            kept.append(span)
    return sorted(kept)
