"""The audit as people read it: a terminal table, audit.md and a self-contained audit.html.

Both documents come from one list of tables, so they never disagree. They list at most
ROWS entries per section; audit.json always has every one.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from lokal.markup import md_cell, page_head

ROWS = 50
IDS = 6  # ids shown per cell; the rest are counted


@dataclass
class Table:
    title: str
    note: str
    columns: list[str]
    rows: list[list[str]]
    total: int  # entries in audit.json (rows may show fewer)


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:IDS])
    return shown + (f" (+{len(ids) - IDS} more)" if len(ids) > IDS else "")


def _kv(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def summary_rows(audit: dict) -> list[tuple[str, str]]:
    """(finding, count) lines: the terminal table and the top of each document."""
    s = audit["summary"]
    rows = [
        ("rows", f"{s['rows']:,}"),
        ("exact duplicates", f"{s['exact_duplicate_groups']:,} groups, {s['exact_duplicate_rows']:,} extra copies"),
        ("near duplicates", f"{s['near_duplicate_groups']:,} groups ({s['near_duplicate_rows']:,} rows)"),
        ("leakage across splits", f"{s['leakage_items']:,} items, {s['leakage_groups']:,} groups"),
        ("conflicting labels", f"{s['conflicting_label_items']:,} items"),
        ("corrupt or unreadable", f"{s['corrupt_files']:,}"),
        ("likely label errors", f"{s['likely_label_errors']:,}"),
        ("classes / imbalance (max/min)", f"{s['classes']} / {s['imbalance_ratio']}"),
    ]
    rows += [(f"personal data: {k[4:]}", f"{v:,}") for k, v in s.items() if k.startswith("pii_")]
    return rows


def print_table(audit: dict, out: Path | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    table = RichTable(title=escape(f"lokal audit: {audit.get('source', '')}"), show_header=True, header_style="bold")
    table.add_column("finding")
    table.add_column("count", justify="right")
    for finding, count in summary_rows(audit):
        table.add_row(finding, count)
    Console().print(table)
    for note in audit.get("notes", []):
        print(f"note: {note}")
    if out is not None:
        print(f"report: {out / 'audit.html'} (also audit.md, audit.json)")


def tables(audit: dict) -> list[Table]:
    """Every section as a table of strings."""
    out = [_class_table(audit["class_counts"])]
    exact = audit["exact_duplicates"]
    out.append(Table("Exact duplicates", "the same item more than once (text: equal after case/space folding; "
                     "images: equal pixels; audio: equal bytes)", ["copies", "splits", "labels", "example", "ids"],
                     [[str(len(g["ids"])), _kv(g["splits"]), _kv(g["labels"]), g["example"], _ids(g["ids"])]
                      for g in exact[:ROWS]], len(exact)))
    near = audit["near_duplicates"]
    score = "similarity" if audit["modality"] == "text" else "hash_distance"
    out.append(Table("Near duplicates", _near_note(audit), [score, "rows", "distinct", "labels", "example", "ids"],
                     [[str(g[score]), str(len(g["ids"])), str(g["distinct"]), _kv(g["labels"]), g["example"],
                       _ids(g["ids"])] for g in near[:ROWS]], len(near)))
    out += _leak_tables(audit["leakage"])
    conflicts = audit["conflicting_labels"]
    out.append(Table("Conflicting labels", "the same (or nearly the same) item under different labels",
                     ["match", "ids by label", "example"],
                     [[c["match"], "; ".join(f"{k}: {_ids(v)}" for k, v in c["ids_by_label"].items()), c["example"]]
                      for c in conflicts[:ROWS]], len(conflicts)))
    bad = audit["corrupt_files"]
    out.append(Table("Corrupt or unreadable", "files that would stop training (or empty texts)",
                     ["id", "split", "reason"], [[b["id"], b["split"], b["reason"]] for b in bad[:ROWS]], len(bad)))
    out.append(_label_error_table(audit["likely_label_errors"]))
    if "pii" in audit:
        out.append(_pii_table(audit["pii"]))
    if "images" in audit:
        out.append(_image_table(audit["images"]))
    return out


def _near_note(audit: dict) -> str:
    settings = audit["settings"]
    if not settings["near"]:
        return "not searched (near disabled)"
    if audit["modality"] == "text":
        return (f"texts whose character 4-gram Jaccard similarity is >= {settings['text_threshold']} after "
                "removing case, punctuation, emoji, URLs, @mentions and a leading RT, with slang spelled in full "
                "and inner vowels dropped (similarity: the weakest link in the group)")
    if audit["modality"] == "image":
        return (f"images whose pHash + dHash differ in <= {settings['image_threshold']} of 128 bits and whose mean "
                "colour agrees: resized, re-encoded or lightly edited copies (hash_distance: the largest link in "
                "the group)")
    return "not searched for audio"


def _class_table(counts: dict) -> Table:
    splits = sorted(counts["per_split"])
    rows = [[label] + [str(counts["per_split"][s].get(label, 0)) for s in splits] + [str(n)]
            for label, n in counts["all"].items()]
    return Table("Class counts", f"imbalance ratio (largest / smallest class): {counts['imbalance_ratio']}",
                 ["label", *splits, "all"], rows, len(rows))


def _leak_tables(leakage: dict) -> list[Table]:
    items, groups = leakage["items"], leakage["groups"]
    return [
        Table("Leakage across splits", "items in more than one of train/val/test: the test score counts them twice",
              ["match", "ids by split", "example"],
              [[i["match"], "; ".join(f"{k}: {_ids(v)}" for k, v in i["ids_by_split"].items()), i["example"]]
               for i in items[:ROWS]], len(items)),
        Table("Groups in more than one split", "one patient/user (data.group_column) in two splits leaks",
              ["group", "rows per split"], [[g["group"], _kv(g["splits"])] for g in groups[:ROWS]], len(groups)),
    ]


def _label_error_table(found: dict) -> Table:
    note = found.get("note") or (
        f"{found['flagged']} of {found['checked']} distinct items: a 5-fold model that never saw the row "
        f"confidently predicts another class (out-of-fold accuracy {found.get('oof_accuracy')}); look at them, "
        "they are candidates, not verdicts")
    rows = [[r["label"], r["predicted"], str(r["p_label"]), str(r["p_predicted"]), r["example"], _ids(r["ids"])]
            for r in found["rows"][:ROWS]]
    return Table("Likely label errors", note, ["label", "predicted", "p(label)", "p(predicted)", "example", "ids"],
                 rows, found.get("flagged", 0))


def _pii_table(pii: dict) -> Table:
    rows = [[kind, str(v["count"]), ", ".join(v["examples"]), _ids(v["ids"])] for kind, v in pii.items()]
    return Table("Personal data", "Indonesian NIK (plausible province and birth date), phone numbers "
                 "(+62 / 62 / 08...), emails; values masked", ["kind", "found", "masked examples", "ids"], rows,
                 len(rows))


def _image_table(images: dict) -> Table:
    sizes = images.get("sizes") or {}
    rows = [["modes", _kv(images.get("modes", {}))]]
    if sizes:
        rows += [["distinct sizes", str(sizes["distinct"])],
                 ["width min / median / max", "{min} / {median} / {max}".format(**sizes["width"])],
                 ["height min / median / max", "{min} / {median} / {max}".format(**sizes["height"])]]
    return Table("Image modes and sizes", "mixed modes are converted to RGB for training", ["what", "value"],
                 rows, len(rows))


# -- documents -------------------------------------------------------------------------
def to_markdown(audit: dict) -> str:
    lines = [f"# lokal audit: {audit.get('source', '')}", ""]
    lines += [f"> note: {note}\n" for note in audit.get("notes", [])]
    lines += ["| finding | count |", "|---|---|"]
    lines += [f"| {f} | {c} |" for f, c in summary_rows(audit)]
    for t in tables(audit):
        lines += ["", f"## {t.title} ({t.total})", "", t.note, ""]
        if t.rows:
            lines += ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
            lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in t.rows]
            if t.total > len(t.rows):
                lines += ["", f"... and {t.total - len(t.rows)} more in audit.json"]
        else:
            lines.append("none found")
    lines += ["", "settings: " + ", ".join(f"{k}={v}" for k, v in audit["settings"].items()), ""]
    return "\n".join(lines)


CSS = """.zero{color:#2a7a2a}
.found{color:#b03a2e;font-weight:600}"""


def to_html(audit: dict) -> str:
    """One file, inline CSS, no scripts or external assets: it opens anywhere, offline."""
    esc = html.escape
    parts = [page_head(f"lokal audit: {audit.get('source', '')}", CSS) + "<table>"
             "<tr><th>finding</th><th>count</th></tr>"]
    parts[0] = parts[0].replace("<table>", "".join(f"<p class='note'>note: {esc(n)}</p>"
                                                   for n in audit.get("notes", [])) + "<table>", 1)
    for finding, count in summary_rows(audit):
        cls = "" if finding.startswith(("rows", "classes")) else "zero" if count.split()[0] == "0" else "found"
        parts.append(f"<tr><td>{esc(finding)}</td><td class='{cls}'>{esc(count)}</td></tr>")
    parts.append("</table>")
    for t in tables(audit):
        parts.append(f"<h2>{esc(t.title)} ({t.total})</h2><p class='note'>{esc(t.note)}</p>")
        if not t.rows:
            parts.append("<p>none found</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in t.columns) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in t.rows]
        parts.append("</table>")
        if t.total > len(t.rows):
            parts.append(f"<p class='note'>... and {t.total - len(t.rows)} more in audit.json</p>")
    settings = ", ".join(f"{k}={v}" for k, v in audit["settings"].items())
    parts.append(f"<p class='note'>settings: {esc(settings)}</p></body></html>")
    return "\n".join(parts)


def write_reports(audit: dict, out: Path) -> Path:
    """audit.json, audit.md and audit.html in `out`, each written atomically."""
    from lokal.io import write_json, write_text

    out = Path(out)
    write_json(out / "audit.json", audit)
    write_text(out / "audit.md", to_markdown(audit))
    write_text(out / "audit.html", to_html(audit))
    return out
