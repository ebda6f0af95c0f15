"""What idguardian-evaluate reads besides the photos: pairing, identity labels, protect's records.

- Pairing: a clean photo `sub/a.jpg` pairs with the protected photo `sub/a.<any image extension>`
  (idguardian-protect writes `a.jpg` as `a.png`).
- Identity labels: a JSON object {"sub/a.jpg": "person", ...} or a CSV with a header and columns
  `file,person`. Keys are clean paths relative to the clean folder, with or without the extension.
  A label names the photo's subject: it applies to the photo's largest face. A list or an empty
  value leaves the photo unlabelled.
- Protect's records (PROTECTED/idguardian_summary.jsonl), only when asked
  (reuse_protect_records): the clean faces' boxes that idguardian-protect found, reused only when
  the record's input_sha256 matches the clean file and its output_sha256 the protected file.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os

from idguardian_jax.checkpoints.cache import file_sha256
from idguardian_jax.cli import common
from idguardian_jax.writer import SUMMARY_NAME


class InputError(ValueError):
    """A bad argument file (exit status 2); str(e) is one line naming the file."""


@dataclasses.dataclass
class Pair:
    """One clean photo and its protected copy.

    key: the clean path relative to the clean folder (as reported everywhere).
    protected: the protected file, or None; error: why the pair cannot be evaluated, or None.
    """

    key: str
    clean: str
    protected: str | None
    error: str | None = None


def _stem(rel: str) -> str:
    return os.path.splitext(os.path.normpath(rel))[0]


def pair_folders(clean_dir: str, protected_dir: str) -> tuple[list[Pair], list[str]]:
    """Pairs for every image under clean_dir, and the protected files that pair with none."""
    clean = common.list_inputs([clean_dir])
    protected = common.list_inputs([protected_dir])
    by_stem: dict[str, list[str]] = {}
    for path, rel in protected:
        by_stem.setdefault(_stem(rel), []).append(path)
    clean_stems: dict[str, list[str]] = {}
    for _, rel in clean:
        clean_stems.setdefault(_stem(rel), []).append(rel)
    pairs = []
    for path, rel in clean:
        stem = _stem(rel)
        cands = by_stem.get(stem, [])
        err = None
        if len(clean_stems[stem]) > 1:
            err = (f"{path}: ambiguous: clean photos {', '.join(clean_stems[stem])} share the name "
                   f"{stem}.* (a protected copy cannot be told apart)")
        elif len(cands) > 1:
            err = f"{path}: ambiguous: several protected copies {', '.join(cands)}"
        pairs.append(Pair(rel, path, cands[0] if len(cands) == 1 else None, err))
    unpaired = [p for s, ps in by_stem.items() if s not in clean_stems for p in ps]
    return pairs, unpaired


def read_identities(path: str) -> dict[str, str]:
    """{clean path or its stem -> person} from a JSON object or a file,person CSV."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read the identities file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: the identities file is not UTF-8 text (byte {e.start})") from None
    if path.lower().endswith(".csv"):
        rows = list(csv.reader(text.splitlines()))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["file", "person"]:
            raise InputError(f"{path}: a CSV of identities needs the header 'file,person'")
        raw = {}
        for n, row in enumerate(rows[1:], start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 2:
                raise InputError(f"{path}: line {n}: expected 'file,person'")
            raw[row[0].strip()] = row[1].strip()
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path}: expected a JSON object {{file: person}}")
    out = {}
    for k, v in raw.items():
        if isinstance(v, str) and v.strip():
            out[os.path.normpath(str(k))] = v.strip()
    return out


def person_of(key: str, labels: dict[str, str]) -> str | None:
    """The label of a clean photo (by its relative path, or the path without extension)."""
    key = os.path.normpath(key)
    if key in labels:
        return labels[key]
    stem = _stem(key)
    for k, v in labels.items():
        if _stem(k) == stem:
            return v
    return None


def protect_records(protected_dir: str) -> dict[str, dict]:
    """input_sha256 -> the last record with it in PROTECTED/idguardian_summary.jsonl."""
    path = os.path.join(protected_dir, SUMMARY_NAME)
    out: dict[str, dict] = {}
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(rec, dict) and isinstance(rec.get("input_sha256"), str):
                out[rec["input_sha256"]] = rec
    return out


def reusable_boxes(records: dict[str, dict], clean_path: str,
                   protected_path: str | None = None
                   ) -> list[tuple[tuple[int, ...], float | None]] | None:
    """The clean faces (box, score) idguardian-protect found on this very file, or None when no
    record can be trusted. Nothing in the protected folder is taken on its word: a record counts
    only when its input_sha256 is the clean file's and, for a protected or copied photo, its
    output_sha256 is the protected file's (a record of no face needs no protected file)."""
    if not records:
        return None
    rec = records.get(file_sha256(clean_path))
    if not rec or rec.get("status") not in ("protected", "no_face", "copied"):
        return None
    if rec["status"] == "no_face":
        if protected_path is not None:
            return None
    else:
        try:
            if protected_path is None or rec.get("output_sha256") != file_sha256(protected_path):
                return None
        except OSError:
            return None
    try:
        return [(tuple(int(v) for v in f["box"]), f.get("score")) for f in rec.get("faces") or []]
    except (KeyError, TypeError, ValueError):
        return None
