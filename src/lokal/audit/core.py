"""`run_audit`: every finding about one dataset, as the dict that becomes audit.json.

The records (Contract 1: id, split, label, text | path, optional group) first get two
columns: `exact` (rows that are the same item: same folded text, same pixels, same
bytes) and `item` (exact groups joined by near-duplicate links). Every section below reads
those two columns, so duplicates, leakage and label conflicts always agree with each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from lokal.audit.groups import UnionFind
from lokal.audit.settings import AuditSettings
from lokal.errors import LokalError

EXAMPLE_CHARS = 80


@dataclass
class Analysis:
    """The records with their group columns, plus what the sections need besides."""

    frame: pd.DataFrame
    modality: str
    settings: AuditSettings
    link_scores: dict[int, float] = field(default_factory=dict)  # item -> weakest link (text Jaccard / image bits)
    images: list = field(default_factory=list)  # ImageInfo per row (images only)
    pii: pd.DataFrame | None = None  # row, kind, start, end, value (text only)
    label_errors: dict = field(default_factory=dict)
    flagged: list[int] = field(default_factory=list)  # row positions of every likely label error


def run_audit(records: pd.DataFrame, modality: str, settings: AuditSettings | None = None, **overrides) -> dict:
    """Audit `records` of one modality ("text", "image" or "audio"); returns audit.json's content."""
    return report(analyse(records, modality, settings, **overrides))


def analyse(records: pd.DataFrame, modality: str, settings: AuditSettings | None = None,
            **overrides) -> Analysis:
    """Group, hash, scan and model the records once; `report` and `lokal clean` both read the result."""
    settings = settings or AuditSettings(**overrides)
    _check_records(records, modality)
    frame = records.reset_index(drop=True).copy()
    frame[["id", "split", "label"]] = frame[["id", "split", "label"]].astype(str)
    analysis = Analysis(frame, modality, settings)
    {"text": _group_texts, "image": _group_images, "audio": _group_audio}[modality](analysis)
    if modality == "text":
        from lokal.audit.pii import find_pii_series

        analysis.pii = find_pii_series(frame["text"])
    if settings.label_errors:
        _label_errors(analysis)
    else:
        analysis.label_errors = {"checked": 0, "flagged": 0, "rows": [], "note": "not searched (label errors off)"}
    return analysis


def _check_records(records: pd.DataFrame, modality: str) -> None:
    column = {"text": "text", "image": "path", "audio": "path"}.get(modality)
    if column is None:
        raise LokalError(f"cannot audit modality {modality!r}: lokal audits text, image and audio data")
    if len(records) == 0:
        raise LokalError("no rows to audit: the data is empty (check the path and the column names)")
    missing = [c for c in ("id", "split", "label", column) if c not in records.columns]
    if missing:
        raise LokalError(f"records lack column(s) {missing}; the data module's records() must give "
                         f"id, split, label and {column}")


# -- grouping ---------------------------------------------------------------------------
def _group_texts(a: Analysis) -> None:
    """exact = folded text; item = exact groups linked by equal near keys or near-gram Jaccard."""
    from lokal.audit.text import exact_key, near_duplicate_pairs, near_key

    texts = a.frame["text"].astype(str)
    empty = texts.str.strip() == ""
    a.frame["problem"] = np.where(empty, "empty text", None)
    codes, keys = pd.factorize(exact_key(texts).mask(empty, None), use_na_sentinel=True)
    codes = _unique_negatives(codes)
    a.frame["exact"] = codes
    if not a.settings.near:
        a.frame["item"] = codes
        return
    near_codes, near_keys = pd.factorize(pd.Series([near_key(k) for k in keys]))
    blank = {i for i, k in enumerate(near_keys) if not k}  # all punctuation: nothing to compare
    links = [(i, j, 1.0) for i, j in _same_code_pairs(near_codes) if near_codes[j] not in blank]
    pairs = near_duplicate_pairs(list(near_keys), a.settings.text_threshold)
    first_of = _first_positions(near_codes)
    links += [(first_of[i], first_of[j], score) for i, j, score in pairs]
    _link(a, int(codes.max()) + 1, links, weakest=min)


def _group_images(a: Analysis) -> None:
    """exact = same decoded pixels; item = exact groups linked by pHash/dHash distance."""
    from lokal.audit.images import inspect_images, near_image_pairs

    a.images = inspect_images(a.frame["path"].astype(str).tolist(), a.settings.workers)
    a.frame["problem"] = [info.error for info in a.images]
    a.frame["sha256"] = [info.sha256 for info in a.images]
    pixels = pd.Series([info.pixels or None for info in a.images])
    codes, _ = pd.factorize(pixels, use_na_sentinel=True)
    a.frame["exact"] = codes = _unique_negatives(codes)
    if not a.settings.near:
        a.frame["item"] = codes
        return
    firsts = _first_positions(codes)  # one row per exact group stands for it
    ok = [r for r in firsts if a.images[r].error is None]
    phash = np.array([a.images[r].phash for r in ok]).reshape(len(ok), 64)
    dhash = np.array([a.images[r].dhash for r in ok]).reshape(len(ok), 64)
    chroma = np.array([a.images[r].chroma for r in ok]).reshape(len(ok), 3)
    links = [(codes[ok[i]], codes[ok[j]], float(d))
             for i, j, d in near_image_pairs(phash, dhash, a.settings.image_threshold, chroma)]
    _link(a, int(codes.max()) + 1, links, weakest=max)


def _group_audio(a: Analysis) -> None:
    """exact = same file bytes; audio has no near-duplicate search."""
    from lokal.audit.images import file_sha256
    from lokal.data.checks import check_file

    paths = a.frame["path"].astype(str)
    a.frame["problem"] = [check_file(p) for p in paths]
    a.frame["sha256"] = [None if bad else file_sha256(p) for p, bad in zip(paths, a.frame["problem"], strict=True)]
    codes, _ = pd.factorize(a.frame["sha256"], use_na_sentinel=True)
    a.frame["exact"] = a.frame["item"] = _unique_negatives(codes)


def _unique_negatives(codes: np.ndarray) -> np.ndarray:
    """Rows without a key (empty, unreadable) each become their own group after the others."""
    codes = np.asarray(codes).copy()
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(missing.sum())
    return codes


def _first_positions(codes) -> list[int]:
    """For each code 0..K-1, the position of its first occurrence."""
    codes = np.asarray(codes)
    _, first = np.unique(codes, return_index=True)
    return first.tolist()


def _same_code_pairs(codes) -> list[tuple[int, int]]:
    firsts = _first_positions(codes)
    return [(firsts[c], i) for i, c in enumerate(np.asarray(codes).tolist()) if firsts[c] != i]


def _link(a: Analysis, n_exact: int, links: list[tuple[int, int, float]], weakest) -> None:
    """Union exact groups along `links`; keep each item's weakest link for the report."""
    sets = UnionFind(int(n_exact))
    for i, j, _ in links:
        sets.union(int(i), int(j))
    leader = np.array([sets.find(i) for i in range(int(n_exact))])
    a.frame["item"] = leader[a.frame["exact"].to_numpy()]
    for i, _, score in links:
        item = int(leader[int(i)])
        a.link_scores[item] = weakest(a.link_scores.get(item, score), score)


# -- label errors -------------------------------------------------------------------------
def _label_errors(a: Analysis) -> None:
    """One row per item (copies would let the model memorise the answer across folds),
    leaving out conflicting items and unreadable rows."""
    from lokal.audit.labels import likely_label_errors

    frame = a.frame
    if a.modality == "audio":
        a.label_errors = {"checked": 0, "flagged": 0, "rows": [], "note": "not checked for audio"}
        return
    usable = frame[frame["problem"].isna()]
    conflicting = usable.groupby("item")["label"].nunique()
    usable = usable[usable["item"].map(conflicting) == 1].drop_duplicates("item")
    if len(usable) < 10:
        a.label_errors = {"checked": 0, "flagged": 0, "rows": [], "note": "fewer than 10 distinct items"}
        return
    features = _features(a, usable.index.to_numpy())
    found = likely_label_errors(features, usable["label"].tolist(), limit=len(usable))
    members = frame.groupby("item").groups
    for row in found["rows"]:
        rep = usable.index[row.pop("index")]
        row["ids"] = frame.loc[members[frame.at[rep, "item"]], "id"].tolist()
        row["example"] = _example(a, rep)
        a.flagged.extend(members[frame.at[rep, "item"]].tolist())
    found["rows"] = found["rows"][: a.settings.label_error_limit]
    a.label_errors = found


def _features(a: Analysis, rows: np.ndarray):
    if a.modality == "text":
        from lokal.audit.labels import text_features

        return text_features(a.frame.loc[rows, "text"].astype(str).tolist())
    thumbs = np.stack([a.images[r].thumb for r in rows])  # (N, 256)
    return (thumbs - thumbs.mean(0)) / (thumbs.std(0) + 1e-6)


# -- the report ---------------------------------------------------------------------------
def report(a: Analysis) -> dict:
    """audit.json: each section lists row ids; `summary` counts them."""
    frame = a.frame
    sections = {
        "rows": len(frame),
        "modality": a.modality,
        "exact_duplicates": _duplicate_groups(a, "exact"),
        "near_duplicates": _duplicate_groups(a, "item", near_only=True) if a.settings.near else [],
        "leakage": _leakage(a),
        "conflicting_labels": _conflicts(a),
        "class_counts": _class_counts(frame),
        "corrupt_files": _problems(frame),
        "likely_label_errors": a.label_errors,
    }
    if a.modality == "image":
        from lokal.audit.images import size_summary

        sections["images"] = size_summary(a.images)
    if a.modality == "text":
        sections["pii"] = _pii(a)
    sections["summary"] = _summary(sections)
    sections["settings"] = asdict(a.settings)
    return sections


def _example(a: Analysis, row: int) -> str:
    """A short, PII-free reminder of what the group holds: the text or the file path."""
    if a.modality != "text":
        return str(a.frame.at[row, "id"])
    from lokal.audit.pii import redact

    text = " ".join(redact(str(a.frame.at[row, "text"])).split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."


def _groups(frame: pd.DataFrame, column: str) -> list[np.ndarray]:
    """Row positions of each group of 2+ rows sharing `column`, in order of their first row.
    Plain numpy: iterating pandas groups cost 2 s on the 1,291 groups of the shipped corpus."""
    values = frame[column].to_numpy()
    order = np.argsort(values, kind="stable")
    parts = np.split(order, np.flatnonzero(np.diff(values[order])) + 1)
    return sorted((p for p in parts if len(p) > 1), key=lambda p: p[0])


def _column(a: Analysis, name: str) -> np.ndarray:
    return a.frame[name].to_numpy()


def _by(keys: np.ndarray, ids: np.ndarray) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, id_ in zip(keys.tolist(), ids.tolist(), strict=True):
        out.setdefault(str(key), []).append(id_)
    return dict(sorted(out.items()))


def _duplicate_groups(a: Analysis, column: str, near_only: bool = False) -> list[dict]:
    ids, splits, labels, exact = (_column(a, c) for c in ("id", "split", "label", "exact"))
    out = []
    for rows in _groups(a.frame, column):
        distinct = len(set(exact[rows].tolist()))
        if near_only and distinct < 2:
            continue
        entry = {"ids": ids[rows].tolist(), "splits": _counts(splits[rows]), "labels": _counts(labels[rows]),
                 "example": _example(a, rows[0])}
        if near_only:
            score = a.link_scores.get(int(_column(a, column)[rows[0]]))
            key = "similarity" if a.modality == "text" else "hash_distance"
            entry |= {"distinct": distinct, key: None if score is None else round(float(score), 3)}
        elif a.modality != "text":
            entry["byte_identical"] = len(set(_column(a, "sha256")[rows].tolist())) == 1
        out.append(entry)
    return out


def _counts(values) -> dict[str, int]:
    from collections import Counter

    return {str(k): int(v) for k, v in sorted(Counter(list(values)).items())}


def _match(a: Analysis, rows: np.ndarray) -> str:
    return "exact" if len(set(_column(a, "exact")[rows].tolist())) == 1 else "near"


def _leakage(a: Analysis) -> dict:
    """The same item in two splits inflates the test score; so does one patient in two splits."""
    ids, splits = _column(a, "id"), _column(a, "split")
    items = [{"match": _match(a, rows), "ids_by_split": _by(splits[rows], ids[rows]), "example": _example(a, rows[0])}
             for rows in _groups(a.frame, "item") if len(set(splits[rows].tolist())) > 1]
    groups = []
    if "group" in a.frame.columns:
        known = a.frame.dropna(subset=["group"])
        for name, spread in known.groupby(known["group"].astype(str))["split"]:
            if spread.nunique() > 1:
                groups.append({"group": name, "splits": _counts(spread)})
    return {"items": items, "groups": groups}


def _conflicts(a: Analysis) -> list[dict]:
    ids, labels = _column(a, "id"), _column(a, "label")
    return [{"match": _match(a, rows), "ids_by_label": _by(labels[rows], ids[rows]), "example": _example(a, rows[0])}
            for rows in _groups(a.frame, "item") if len(set(labels[rows].tolist())) > 1]


def _class_counts(frame: pd.DataFrame) -> dict:
    counts = {split: _counts(g["label"]) for split, g in frame.groupby("split")}
    overall = _counts(frame["label"])
    ratio = max(overall.values()) / min(overall.values()) if overall else None
    return {"per_split": counts, "all": overall, "imbalance_ratio": None if ratio is None else round(ratio, 2)}


def _problems(frame: pd.DataFrame) -> list[dict]:
    bad = frame[frame["problem"].notna()]
    key = "path" if "path" in frame.columns else "text"
    return [{"id": r["id"], "split": r["split"], "reason": r["problem"]} | ({key: str(r[key])} if key == "path" else {})
            for _, r in bad.iterrows()]


def _pii(a: Analysis) -> dict:
    """Per kind: how many findings, which rows, and masked examples: a report never holds a full NIK."""
    from lokal.audit.pii import KINDS, mask

    found = a.pii if a.pii is not None else pd.DataFrame(columns=["row", "kind", "value"])
    out = {}
    for kind in KINDS:
        hits = found[found["kind"] == kind]
        rows = sorted(set(hits["row"].tolist()))
        out[kind] = {"count": len(hits), "ids": a.frame.loc[rows, "id"].tolist(),
                     "examples": sorted({mask(kind, v) for v in hits["value"]})[:5]}
    return out


def _summary(s: dict) -> dict:
    """One number per finding: what the terminal table shows."""
    pii = s.get("pii", {})
    return {
        "rows": s["rows"],
        "exact_duplicate_groups": len(s["exact_duplicates"]),
        "exact_duplicate_rows": sum(len(g["ids"]) - 1 for g in s["exact_duplicates"]),
        "near_duplicate_groups": len(s["near_duplicates"]),
        "near_duplicate_rows": sum(len(g["ids"]) for g in s["near_duplicates"]),
        "leakage_items": len(s["leakage"]["items"]),
        "leakage_groups": len(s["leakage"]["groups"]),
        "conflicting_label_items": len(s["conflicting_labels"]),
        "corrupt_files": len(s["corrupt_files"]),
        "likely_label_errors": s["likely_label_errors"].get("flagged", 0),
        "classes": len(s["class_counts"]["all"]),
        "imbalance_ratio": s["class_counts"]["imbalance_ratio"],
        **{f"pii_{kind}": v["count"] for kind, v in pii.items()},
    }
