"""Personal data in Indonesian text: NIK numbers, phone numbers and email addresses.

A NIK (Nomor Induk Kependudukan, the national ID number) is 16 digits:
PP KK CC DDMMYY SSSS = province, regency/city, district, birth date (women: day + 40)
and a serial number. A bare 16-digit number is flagged only when those parts are
plausible, so card numbers, order ids and timestamps mostly stay quiet (a random
16-digit number passes about 1 time in 40).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KINDS = ("nik", "phone", "email")
TOKENS = {"nik": "[NIK]", "phone": "[PHONE]", "email": "[EMAIL]"}

# Kemendagri province codes. 91-96: Papua; NIKs issued before the 2022 split carry 91
# (Papua Barat) or 94 (Papua), later ones 91-96, so all six occur in real NIKs.
PROVINCES = frozenset(
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 31, 32, 33, 34, 35, 36, 51, 52, 53,
     61, 62, 63, 64, 65, 71, 72, 73, 74, 75, 76, 81, 82, 91, 92, 93, 94, 95, 96]
)
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# 16 digits, either plain or with one kind of separator (space, dot, dash) between
# groups ("3201 0123 4567 8901", "320101.230495.0001"); never part of a longer number.
NIK_RE = re.compile(r"(?<![\d+])(?<!\d[ .-])\d(?:[ .-]?\d){15}(?![ .-]?\d)")
# +62 / 62 / 0, then a mobile number starting with 8 and 7-11 more digits, with single
# spaces, dots or dashes between groups. Numbers glued to more digits do not match.
PHONE_RE = re.compile(r"(?<![\d+])(?<!\d[ .-])(?:\+62|62|0)[ .-]?8(?:[ .-]?\d){7,11}(?![ .-]?\d)")
EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Cheap pre-filter for a whole column: a text needs 9 digits in a row (allowing single
# separators) or an @ to hold any of the three kinds.
MAYBE_RE = r"@|\d(?:[ .-]?\d){8}"


def plausible_nik(digits: str) -> bool:
    """Province code on the list, regency and district not 00, a real birth date, serial not 0000."""
    if len(digits) != 16 or not digits.isdigit() or int(digits[:2]) not in PROVINCES:
        return False
    if digits[2:4] == "00" or digits[4:6] == "00" or digits[12:] == "0000":
        return False
    day, month = int(digits[6:8]), int(digits[8:10])
    day = day - 40 if day > 40 else day  # women: birth day + 40
    return 1 <= month <= 12 and 1 <= day <= DAYS_IN_MONTH[month - 1]


def _separators_consistent(text: str) -> bool:
    """'3201 0123 4567 8901' yes, '3201-0123 4567.8901' no: one separator kind per number."""
    return len(set(re.sub(r"\d", "", text))) <= 1


def find_nik(text: str) -> list[tuple[str, int, int, str]]:
    found = []
    for m in NIK_RE.finditer(text):
        value = m.group()
        if _separators_consistent(value) and plausible_nik(re.sub(r"\D", "", value)):
            found.append(("nik", m.start(), m.end(), value))
    return found


def find_pii(text: str) -> list[tuple[str, int, int, str]]:
    """Every NIK, phone number and email in `text` as (kind, start, end, value), by position.
    A phone match inside a NIK is dropped: the NIK is the finding."""
    niks = find_nik(text)
    phones = [("phone", m.start(), m.end(), m.group()) for m in PHONE_RE.finditer(text)]
    phones = [p for p in phones if not _overlaps(p, niks)]
    emails = [("email", m.start(), m.end(), m.group()) for m in EMAIL_RE.finditer(text)]
    return sorted(niks + phones + emails, key=lambda f: f[1])


def _overlaps(finding: tuple, others: Iterable[tuple]) -> bool:
    return any(finding[1] < o[2] and o[1] < finding[2] for o in others)


def redact(text: str) -> str:
    """`text` with each finding replaced by [NIK], [PHONE] or [EMAIL]."""
    for kind, start, end, _ in reversed(find_pii(text)):
        text = text[:start] + TOKENS[kind] + text[end:]
    return text


def mask(kind: str, value: str) -> str:
    """What a report may show: the last 2 digits of a number, the first letter and the
    top-level domain of an email. Reports must never carry a full NIK."""
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@***.{domain.rsplit('.', 1)[-1]}"
    digits = re.sub(r"\D", "", value)
    return "*" * (len(digits) - 2) + digits[-2:]


def find_pii_series(texts):
    """Findings for a pandas Series of texts, as a DataFrame with columns
    row (the Series' index), kind, start, end, value. Only texts that pass a vectorised
    pre-filter go through the regexes one by one."""
    import pandas as pd

    texts = texts.astype(str)
    candidates = texts[texts.str.contains(MAYBE_RE, regex=True)]
    found = {text: find_pii(text) for text in candidates.unique()}  # copies are scanned once
    rows = [(row, *f) for row, text in candidates.items() for f in found[text]]
    return pd.DataFrame(rows, columns=["row", "kind", "start", "end", "value"])


def redact_series(texts):
    """`redact` over a pandas Series; texts without a candidate are returned untouched."""
    texts = texts.astype(str)
    maybe = texts.str.contains(MAYBE_RE, regex=True)
    out = texts.copy()
    out[maybe] = texts[maybe].map(redact)
    return out
