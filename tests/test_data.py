from __future__ import annotations

from pathlib import Path

import pytest

from edgeprompt.core.data import Example, dedupe, load_file, load_tweets, split
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.tasks import TaskSpec


def test_csv_and_jsonl_load_with_chosen_columns(tiny_csv, tiny_jsonl):
    a = load_file(tiny_csv, seed=1)
    assert a.spec.labels == ["negative", "positive"]
    assert len(a.train) + len(a.dev) + len(a.test) == 120
    b = load_file(tiny_jsonl, text_column="sentence", label_column="sentiment", dev=5, test=5)
    assert (len(b.dev), len(b.test), len(b.train)) == (5, 5, 50)


def test_split_is_seeded_and_disjoint(tiny_csv):
    a, b, c = load_file(tiny_csv, seed=3), load_file(tiny_csv, seed=3), load_file(tiny_csv, seed=4)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    texts = [set(ex.text for ex in s) for s in (a.train, a.dev, a.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_duplicates_removed_before_splitting_and_conflicts_dropped():
    rows = [Example("Hello  World", "a"), Example("hello world", "a"), Example("x", "a"), Example("X", "b"), Example("y", "b")]
    out = dedupe(rows)
    assert [e.text for e in out] == ["Hello  World", "y"]
    tr, dv, te = split(out * 1, seed=0, dev=0, test=1)
    assert len(tr) == 1 and len(te) == 1


def test_missing_column_is_named(tiny_csv):
    with pytest.raises(EdgePromptError, match=r"no column 'sentence'.*columns are \['text', 'label'\]"):
        load_file(tiny_csv, text_column="sentence")


def test_missing_field_in_jsonl_is_named_with_its_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(EdgePromptError, match=r"line 2 has no 'label'"):
        load_file(p)


def test_unknown_label_names_the_row(tiny_csv):
    spec = TaskSpec(template="{text}\nLabel:", labels=["positive", "neutral"])
    with pytest.raises(EdgePromptError, match=r"row \d+ .* label 'negative', which is not one of \['positive', 'neutral'\]"):
        load_file(tiny_csv, spec=spec)


def test_empty_data_refused(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("text,label\n")
    with pytest.raises(EdgePromptError, match="no data rows"):
        load_file(p)


def test_pickle_data_refused(tmp_path):
    p = tmp_path / "d.pkl"
    p.write_bytes(b"\x80\x04N.")
    with pytest.raises(EdgePromptError, match="refuses pickles"):
        load_file(p)


def test_tweets_split_fixed_and_disjoint():
    a, b = load_tweets(), load_tweets()
    assert a.sha256("train") == b.sha256("train") and a.sha256("test") == b.sha256("test")
    assert (len(a.dev), len(a.test)) == (300, 1000)
    norm = lambda s: {" ".join(e.text.casefold().split()) for e in s}  # noqa: E731
    tr, dv, te = norm(a.train), norm(a.dev), norm(a.test)
    assert not (tr & te or tr & dv or dv & te)
    assert {e.label for e in a.test} == {"negative", "neutral", "positive"}


def test_template_encoding_moves_the_space_into_the_text(tiny_lm):
    spec = TaskSpec(template="Text: {text}\nLabel:", labels=["negative", "positive"])
    ids = spec.encode_input(tiny_lm.encode, "good day")
    assert ids == tiny_lm.encode("Text:") + tiny_lm.encode(" good day") + tiny_lm.encode("\nLabel:")
    assert tiny_lm.tokenizer.bos_token_id not in ids  # never a BOS


def test_spec_checks_itself():
    with pytest.raises(EdgePromptError, match="exactly once"):
        TaskSpec(template="no placeholder", labels=["a", "b"])
    with pytest.raises(EdgePromptError, match="share a verbalizer"):
        TaskSpec(labels=["a", "b"], verbalizers={"a": " x", "b": " x"})
    with pytest.raises(EdgePromptError, match="at least two labels"):
        TaskSpec(labels=["a"])
    with pytest.raises(EdgePromptError, match=r"unknown labels \['postive'\]"):
        TaskSpec(labels=["negative", "positive"], verbalizers={"postive": " good"})
    with pytest.raises(EdgePromptError, match="give a count"):
        split([Example("a", "x")] * 3, seed=0, dev=-2, test=1)


def test_hostile_data_files_get_a_typed_error_naming_the_row(tmp_path):
    """Each of these ended in a traceback or trained on garbage before (issue 10)."""
    from edgeprompt.core.data import MAX_LABELS, load_file, read_rows
    from edgeprompt.core.errors import DataError

    def write(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    cases = {
        "number.jsonl": (b'{"text": "ok", "label": "a"}\n42\n', "line 2 is a JSON int"),
        "list.jsonl": (b'["text", "label"]\n', "line 1 is a JSON list"),
        "string.jsonl": (b'"just a string"\n', "line 1 is a JSON str"),
        "null.jsonl": (b'{"text": null, "label": "a"}\n', "'text' is null"),
        "nested.jsonl": (b'{"text": {"a": 1}, "label": "a"}\n', "not a text"),
    }
    for name, (data, msg) in cases.items():
        with pytest.raises(DataError, match=msg):
            read_rows(write(name, data), "text", "label")
    # a byte that is not UTF-8 reads as U+FFFD in JSONL as in CSV (the built-in tweets have some), no traceback
    for name, data in (("latin1.jsonl", b'{"text": "caf\xe9", "label": "a"}\n'), ("latin1.csv", b"text,label\ncaf\xe9,a\n")):
        assert read_rows(write(name, data), "text", "label")[0].text == "caf\ufffd"
    # a BOM (Excel) is not part of the first column's name; a field over the csv module's 131,072 default is read
    long = "word " * 40_000
    rows = read_rows(write("bom.csv", b"\xef\xbb\xbftext,label\n" + f'"{long}",a\n'.encode()), "text", "label")
    assert rows[0].label == "a" and len(rows[0].text) > 131_072
    # labels are numbers in JSONL: read as their text
    assert read_rows(write("stars.jsonl", b'{"text": "fine", "label": 4}\n'), "text", "label")[0].label == "4"
    # one wrong --label-column (an id) makes thousands of labels: refused before any allocation
    ids = "".join(f"text {i},{i}\n" for i in range(MAX_LABELS + 5))
    with pytest.raises(DataError, match="Is --label-column right"):
        load_file(write("ids.csv", ("text,label\n" + ids).encode()))
    for bad in (float("nan"), float("inf"), -1, 1.5):
        with pytest.raises(DataError, match="--dev"):
            load_file(write("ok.csv", b"text,label\n" + b"".join(f"t{i},{'ab'[i % 2]}\n".encode() for i in range(20))), dev=bad)
