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
# A phone number as people write it: a first digit (maybe after "(" and "+"), then more digits
# with separators between: up to two spaces, a dot or a dash, and brackets around a leading code
# ("(+62) 852 3210 7187", "(021) 555 1234", "+62 (0) 812-..."). PHONE_RE takes the whole run,
# never starting inside a longer number; `find_phones` decides on its digits which run, or which
# part of it up to a separator, is a phone number.
SEP = r"[ \t]{0,2}(?:[()][ \t]{0,2})?(?:[.\-][ \t]{0,2})?"
PHONE_RE = re.compile(
    r"(?<![\w+])(?<!\d[ \t.\-])(?<!\d[ \t][ \t.\-])(?<!\d[.\-][ \t])(?<!\d[ \t][.\-][ \t])"
    rf"(?:\([ \t]?)?\+?\d(?:{SEP}\d)*"
)
MOBILE_RE = re.compile(r"08\d{7,11}")  # 08xx: every Indonesian mobile operator; 9-13 digits
LANDLINE_RE = re.compile(r"0[2-79]\d{7,9}")  # area code 021, 0274 ... then the subscriber: 9-11 digits
PRICE_RE = re.compile(r"[1-9]\d{0,2}(?:\.\d{3})+")  # Rp 6.281.234.567: thousands, not a phone
CLOCK_RE = re.compile(r"(?<!\d)\d{2}[.:]\d{2}(?!\d)")  # 08.30 - 10.00 - 12.00: times, not a phone
DATE_RE = re.compile(r"(?<!\d)\d{1,2}[.\-]\d{1,2}[.\-](?:19|20)\d{2}(?!\d)")  # 02-08-2019 08.30
EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Cheap pre-filter for a whole column: a text needs 9 digits close together (separators and
# brackets between) or an @ to hold any of the three kinds.
MAYBE_RE = r"@|\d(?:[ \t.()-]{0,5}\d){8}"


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


def phone_number(written: str) -> bool:
    """Is this PHONE_RE match a phone number? On its digits, as dialled at home: +62 / 62 becomes
    the trunk 0 (+62 (0) 812 too). Mobile: 08 and 9-13 digits. Landline: an area code 02-09
    (not 08) and 9-11 digits, only after 0 or +62 (a bare 62 before a non-mobile number is more
    often a price or an id than a phone). Brackets only around a leading code of up to 5 digits."""
    if PRICE_RE.fullmatch(written) or len(CLOCK_RE.findall(written)) > 1 or DATE_RE.search(written):
        return False
    if not _brackets_lead(written):
        return False
    digits = re.sub(r"\D", "", written)
    if digits.startswith("62"):
        rest = digits[2:]
        national = rest if rest.startswith("0") else "0" + rest
        return bool(MOBILE_RE.fullmatch(national)) or ("+" in written and bool(LANDLINE_RE.fullmatch(national)))
    return bool(MOBILE_RE.fullmatch(digits) or LANDLINE_RE.fullmatch(digits))


def _brackets_lead(written: str) -> bool:
    """'(+62) 852 ...', '+62 (21) ...', '(0852) ...' yes; '0812 (3456) 7890' no. A lone '(' at the
    start is a bracket around the whole number: its ')' follows the last digit."""
    opened, closed = written.count("("), written.count(")")
    if closed == 0:
        return opened == 0 or (opened == 1 and written.lstrip().startswith("("))
    head = written[:written.index(")")]
    return opened == closed == 1 and "(" in head and len(re.sub(r"\D", "", head)) <= 5


def find_phones(text: str) -> list[tuple[str, int, int, str]]:
    """Phone numbers (mobile, landline, in WhatsApp links) as findings. A run of digits that is
    no phone as a whole may start with one ("+62 857 8140 3309 637.000 penonton") or hold several
    ("0812 3456 7890 0813 1111 2222"): its longest part up to a separator that is one counts,
    then the rest is searched again. A run without separators is one number (an 18-digit id
    holds no phone). An unclosed '(' before the number stays out of the span."""
    found = []
    for m in PHONE_RE.finditer(text):
        start, written = m.start(), m.group()
        while written:
            if written.startswith("(") and written.count("(") > written.count(")"):
                skip = len(written) - len(written[1:].lstrip())
                written, start = written[skip:], start + skip
            end = _longest_phone(written)
            if end is None:
                break
            found.append(("phone", start, start + end, written[:end]))
            rest = re.search(r"[(+\d]", written[end:])
            written, start = (written[end + rest.start():], start + end + rest.start()) if rest else ("", 0)
    return found


def _longest_phone(written: str) -> int | None:
    """The end of the longest start of `written`, cut after a digit, that is a phone number."""
    ends = [len(written)] + [d.end() for d in re.finditer(r"\d(?=\D)", written)][::-1]
    return next((end for end in ends if phone_number(written[:end])), None)


def find_pii(text: str) -> list[tuple[str, int, int, str]]:
    """Every NIK, phone number and email in `text` as (kind, start, end, value), by position.
    A phone match inside a NIK is dropped: the NIK is the finding."""
    niks = find_nik(text)
    phones = [p for p in find_phones(text) if not _overlaps(p, niks)]
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
