"""Tests of hebatron_nemo.data.readers: every format, resolution order, sharding, bad input."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from hebatron_nemo.data.readers import (
    FORMATS,
    Document,
    count_documents,
    iter_documents,
    resolve_files,
    validate_source,
)
from hebatron_nemo.errors import ConfigError, DataError

SENTENCES = [
    "הגשם ירד כל הלילה על גגות העיר העתיקה.",
    "המורה ביקשה מהתלמידים לכתוב חיבור על הים.",
    "בבוקר שתינו קפה שחור במרפסת מול ההרים.",
    "הספרייה השכונתית נפתחת מחדש אחרי השיפוץ.",
    "הילדה מצאה צדף ורוד ליד שפת המים.",
    "אבא שלי מתקן אופניים ישנים במחסן.",
    "הרכבת לירושלים איחרה בעשרים דקות.",
    "שכנה הביאה לנו עוגת תפוזים חמה.",
]


def write_jsonl(path: pathlib.Path, records, *, compress: str | None = None) -> pathlib.Path:
    """Write records (dicts or raw str lines) as JSON lines, optionally compressed."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_parquet(path: pathlib.Path, columns: dict, **kwargs) -> pathlib.Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def texts(docs) -> list[str]:
    return [d.text for d in docs]


def located(exc: DataError, path, line: int | None = None, field: str | None = None) -> str:
    """Assert the error names path/line/field exactly; return the message after that prefix.

    Checking the remainder, not the whole string, keeps words in tmp_path (which holds the
    test name) from satisfying an assertion about the message.
    """
    prefix = str(path) + (f":{line}" if line is not None else "")
    prefix += (f" [field {field!r}]" if field is not None else "") + ": "
    msg = str(exc)
    assert msg.startswith(prefix), msg
    assert (exc.path, exc.line, exc.field) == (str(path), line, field)
    return msg[len(prefix):]


# --------------------------------------------------------------------------- round trips


def test_jsonl_round_trip_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    f = write_jsonl(tmp_path / "heb.jsonl",
                    [{"text": SENTENCES[0]}, "", {"text": SENTENCES[1], "x": 1}, "   ",
                     {"text": ""}])
    docs = list(iter_documents(f, "jsonl"))
    assert docs == [
        Document(SENTENCES[0], "heb.jsonl:1", 0),
        Document(SENTENCES[1], "heb.jsonl:3", 1),
        Document("", "heb.jsonl:5", 2),  # empty text is yielded; the caller filters
    ]


@pytest.mark.parametrize("compress,name", [("gz", "heb.jsonl.gz"), ("zst", "heb.jsonl.zst"),
                                           ("gz", "heb.json.gz")])
def test_compressed_jsonl_round_trip(tmp_path, compress, name):
    f = write_jsonl(tmp_path / name, [{"text": s} for s in SENTENCES], compress=compress)
    docs = list(iter_documents(str(f), "jsonl"))
    assert texts(docs) == SENTENCES
    assert [d.doc_id for d in docs] == [f"{name}:{i}" for i in range(1, len(SENTENCES) + 1)]
    assert count_documents(f, "jsonl") == len(SENTENCES)


def test_zstd_with_several_frames_reads_every_frame(tmp_path):
    import zstandard

    c = zstandard.ZstdCompressor()
    part1 = "".join(json.dumps({"text": s}) + "\n" for s in SENTENCES[:3]).encode()
    part2 = "".join(json.dumps({"text": s}) + "\n" for s in SENTENCES[3:]).encode()
    f = tmp_path / "frames.jsonl.zst"
    f.write_bytes(c.compress(part1) + c.compress(part2))
    assert texts(iter_documents(f, "jsonl")) == SENTENCES


def test_jsonl_line_longer_than_read_chunk(tmp_path):
    long_text = SENTENCES[0] * 40000  # ~2.8 MB, spans several 1 MiB reads
    f = write_jsonl(tmp_path / "long.jsonl", [{"text": SENTENCES[1]}, {"text": long_text},
                                              {"text": SENTENCES[2]}])
    assert texts(iter_documents(f, "jsonl")) == [SENTENCES[1], long_text, SENTENCES[2]]


def test_jsonl_bom_and_crlf(tmp_path):
    f = tmp_path / "bom.jsonl"
    body = "\r\n".join(json.dumps({"text": s}, ensure_ascii=False) for s in SENTENCES[:2])
    f.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\r\n")
    assert texts(iter_documents(f, "jsonl")) == SENTENCES[:2]


def test_parquet_round_trip_over_several_batches(tmp_path):
    n = 9000  # more than one record batch
    rows = [SENTENCES[i % len(SENTENCES)] + f" {i}" for i in range(n)]
    f = write_parquet(tmp_path / "p" / "heb.parquet", {"text": rows, "n": list(range(n))},
                      row_group_size=2500)
    docs = list(iter_documents(tmp_path / "p", "parquet"))
    assert texts(docs) == rows
    assert [d.ordinal for d in docs] == list(range(n))
    assert docs[0].doc_id == "heb.parquet:1" and docs[-1].doc_id == f"heb.parquet:{n}"
    assert count_documents(f, "parquet") == n


def test_text_dir_round_trip(tmp_path):
    root = tmp_path / "txt"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text(SENTENCES[1], encoding="utf-8")
    (root / "a.txt").write_bytes(b"\xef\xbb\xbf" + SENTENCES[0].encode())
    (root / "sub" / "c.txt").write_text(SENTENCES[2] + "\n" + SENTENCES[3], encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "notes.md").write_text("לא מסמך", encoding="utf-8")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("מוסתר", encoding="utf-8")
    docs = list(iter_documents(root, "text_dir"))
    assert docs == [
        Document(SENTENCES[0], "a.txt", 0),  # BOM removed
        Document(SENTENCES[1], "b.txt", 1),
        Document("", "empty.txt", 2),
        Document(SENTENCES[2] + "\n" + SENTENCES[3], "sub/c.txt", 3),
    ]
    assert count_documents(root, "text_dir") == 4


def test_hf_disk_dataset(tmp_path):
    import datasets

    d = tmp_path / "hf"
    datasets.Dataset.from_dict({"content": SENTENCES, "uid": [f"u{i}" for i in range(8)]}
                               ).save_to_disk(str(d))
    docs = list(iter_documents(d, "hf_disk", text_field="content"))
    assert texts(docs) == SENTENCES
    assert [d_.ordinal for d_ in docs] == list(range(8))
    assert docs[2].doc_id == "hf:3"
    with_ids = list(iter_documents(d, "hf_disk", text_field="content", id_field="uid"))
    assert [x.doc_id for x in with_ids] == [f"u{i}" for i in range(8)]
    assert count_documents(d, "hf_disk", text_field="content") == 8
    assert resolve_files(str(d), "hf_disk") == [d]
    with pytest.raises(DataError) as e:
        list(iter_documents(d, "hf_disk", text_field="body"))
    rest = located(e.value, d, field="body")
    assert rest.startswith("missing column 'body'") and "'content'" in rest
    with pytest.raises(DataError, match="single Dataset"):
        iter_documents(f"{d}::train", "hf_disk", text_field="content")


def test_hf_disk_dataset_dict_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": SENTENCES[:5]}),
        "validation": datasets.Dataset.from_dict({"text": SENTENCES[5:]}),
    })
    d = tmp_path / "dd"
    dd.save_to_disk(str(d))
    assert texts(iter_documents(d, "hf_disk")) == SENTENCES[:5]
    val = list(iter_documents(f"{d}::validation", "hf_disk"))
    assert texts(val) == SENTENCES[5:]
    assert val[0].doc_id == "dd/validation:1"
    assert count_documents(f"{d}::validation", "hf_disk") == 3
    with pytest.raises(DataError) as e:
        iter_documents(f"{d}::test", "hf_disk")
    rest = located(e.value, d)
    assert rest.startswith("no split 'test'") and "'train'" in rest and "'validation'" in rest

    no_train = tmp_path / "nt"
    datasets.DatasetDict({"a": dd["train"], "b": dd["validation"]}).save_to_disk(str(no_train))
    with pytest.raises(DataError) as e:
        iter_documents(no_train, "hf_disk")
    rest = located(e.value, no_train)
    assert rest.startswith("DatasetDict has no 'train' split") and "'a', 'b'" in rest


# --------------------------------------------------------------------------- resolution


def test_directory_resolution_is_recursive_sorted_and_filtered(tmp_path):
    root = tmp_path / "corpus"
    write_jsonl(root / "b.jsonl", [{"text": SENTENCES[0]}])
    write_jsonl(root / "a" / "z.jsonl.zst", [{"text": SENTENCES[1]}], compress="zst")
    write_jsonl(root / "a.jsonl.gz", [{"text": SENTENCES[2]}], compress="gz")
    write_jsonl(root / ".cache" / "c.jsonl", [{"text": "x"}])
    (root / "dataset_info.json").write_text("{}")
    (root / "readme.txt").write_text("x")
    got = [p.relative_to(root).as_posix() for p in resolve_files(root, "jsonl")]
    assert got == ["a.jsonl.gz", "a/z.jsonl.zst", "b.jsonl"]
    docs = list(iter_documents(root, "jsonl"))
    assert texts(docs) == [SENTENCES[2], SENTENCES[1], SENTENCES[0]]
    assert [d.doc_id for d in docs] == ["a.jsonl.gz:1", "a/z.jsonl.zst:1", "b.jsonl:1"]


def test_glob_resolution(tmp_path):
    for name in ["p2.jsonl", "p10.jsonl", "p1.jsonl", "other.jsonl"]:
        write_jsonl(tmp_path / "g" / name, [{"text": name}])
    files = resolve_files(str(tmp_path / "g" / "p*.jsonl"), "jsonl")
    assert [f.name for f in files] == ["p1.jsonl", "p10.jsonl", "p2.jsonl"]
    docs = list(iter_documents(str(tmp_path / "g" / "p*.jsonl"), "jsonl"))
    assert [d.doc_id for d in docs] == ["p1.jsonl:1", "p10.jsonl:1", "p2.jsonl:1"]
    with pytest.raises(DataError, match="matches no files"):
        resolve_files(str(tmp_path / "g" / "q*.jsonl"), "jsonl")


def test_ordinals_run_across_files(tmp_path):
    write_jsonl(tmp_path / "m" / "1.jsonl", [{"text": s} for s in SENTENCES[:3]])
    write_jsonl(tmp_path / "m" / "2.jsonl", ["", {"text": SENTENCES[3]}])
    write_jsonl(tmp_path / "m" / "3.jsonl", [{"text": s} for s in SENTENCES[4:]])
    docs = list(iter_documents(tmp_path / "m", "jsonl"))
    assert texts(docs) == SENTENCES
    assert [d.ordinal for d in docs] == list(range(len(SENTENCES)))
    assert docs[3].doc_id == "2.jsonl:2" and docs[4].doc_id == "3.jsonl:1"


# --------------------------------------------------------------------------- sharding


def _assert_partition(full, shards, n):
    ords = [[d.ordinal for d in s] for s in shards]
    for i, o in enumerate(ords):
        assert all(x % n == i for x in o), f"shard {i} holds foreign ordinals"
    merged = sorted((d for s in shards for d in s), key=lambda d: d.ordinal)
    assert merged == full  # disjoint, complete, and ordinal order is reading order


@pytest.mark.parametrize("n", [2, 3])
def test_jsonl_shards_partition_the_source(tmp_path, n):
    write_jsonl(tmp_path / "s" / "a.jsonl", [{"text": s} for s in SENTENCES[:5]] + [""])
    write_jsonl(tmp_path / "s" / "b.jsonl.gz", ["", *({"text": s} for s in SENTENCES[5:])],
                compress="gz")
    full = list(iter_documents(tmp_path / "s", "jsonl"))
    assert len(full) == len(SENTENCES)
    shards = [list(iter_documents(tmp_path / "s", "jsonl", shard=(i, n))) for i in range(n)]
    _assert_partition(full, shards, n)
    assert [count_documents(tmp_path / "s", "jsonl", shard=(i, n)) for i in range(n)] == \
        [len(s) for s in shards]


@pytest.mark.parametrize("n", [2, 3])
def test_parquet_and_text_dir_shards_partition_the_source(tmp_path, n):
    rows = [f"{SENTENCES[i % 8]} ({i})" for i in range(5000)]
    write_parquet(tmp_path / "pq" / "a.parquet", {"text": rows[:4099]})
    write_parquet(tmp_path / "pq" / "b.parquet", {"text": rows[4099:]})
    full = list(iter_documents(tmp_path / "pq", "parquet"))
    assert texts(full) == rows
    _assert_partition(full, [list(iter_documents(tmp_path / "pq", "parquet", shard=(i, n)))
                             for i in range(n)], n)

    for i, s in enumerate(SENTENCES):
        (tmp_path / "td").mkdir(exist_ok=True)
        (tmp_path / "td" / f"{i}.txt").write_text(s, encoding="utf-8")
    full = list(iter_documents(tmp_path / "td", "text_dir"))
    _assert_partition(full, [list(iter_documents(tmp_path / "td", "text_dir", shard=(i, n)))
                             for i in range(n)], n)


def test_bad_shard_is_rejected(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"text": SENTENCES[0]}])
    for shard in [(2, 2), (-1, 2), (0, 0), (0,), (0.0, 1), (0, 1, 2)]:
        with pytest.raises(ConfigError):
            iter_documents(f, "jsonl", shard=shard)


# --------------------------------------------------------------------------- id_field


def test_id_field_jsonl_and_parquet(tmp_path):
    f = write_jsonl(tmp_path / "ids.jsonl", [{"text": SENTENCES[0], "id": "doc-א"},
                                             {"text": SENTENCES[1], "id": 17}])
    assert [d.doc_id for d in iter_documents(f, "jsonl", id_field="id")] == ["doc-א", "17"]
    bad = write_jsonl(tmp_path / "noid.jsonl", [{"text": SENTENCES[0], "id": "x"},
                                                {"text": SENTENCES[1]}])
    with pytest.raises(DataError) as e:
        list(iter_documents(bad, "jsonl", id_field="id"))
    assert located(e.value, bad, 2, "id") == "missing id field 'id'"

    p = write_parquet(tmp_path / "ids.parquet", {"text": SENTENCES[:3], "key": [5, 6, 7]})
    assert [d.doc_id for d in iter_documents(p, "parquet", id_field="key")] == ["5", "6", "7"]


# --------------------------------------------------------------------------- bad input


def test_invalid_utf8_in_the_middle_of_jsonl(tmp_path):
    f = tmp_path / "bad.jsonl"
    line1 = json.dumps({"text": SENTENCES[0]}, ensure_ascii=False).encode() + b"\n"
    line2 = json.dumps({"text": SENTENCES[1]}, ensure_ascii=False).encode() + b"\n"
    line3 = b'{"text": "\xd7\xa9\xff"}\n'
    f.write_bytes(line1 + line2 + line3 + line1)
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    rest = located(e.value, f, 3)
    expected_offset = len(line1) + len(line2) + line3.index(b"\xff")
    assert rest.startswith("invalid UTF-8: byte 0xff")
    assert rest.endswith(f"(byte offset {expected_offset})")


def test_malformed_json_line(tmp_path):
    f = write_jsonl(tmp_path / "mal.jsonl", [{"text": SENTENCES[0]}, '{"text": "שלום"'])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    assert located(e.value, f, 2).startswith("malformed JSON")


def test_malformed_json_message_reads_cleanly(tmp_path):
    # json's own message for an unterminated string ends in "starting at": the column must not
    # follow it as "starting at at column 9"
    f = write_jsonl(tmp_path / "mal.jsonl", [{"text": SENTENCES[0]}, '{"text": "abc'])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    rest = located(e.value, f, 2)
    assert "at at" not in rest
    assert rest == "malformed JSON: Unterminated string starting at (column 10)"


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDC00", "x\\ud83dy"])
def test_lone_surrogate_escape_is_a_located_error(tmp_path, escape):
    good = json.dumps({"text": SENTENCES[0]})  # ASCII escapes throughout: the scan must not fire
    pair = '{"text": "emoji \\ud83d\\ude00 ok"}'  # a valid pair decodes to one character
    f = write_jsonl(tmp_path / "sur.jsonl", [good, pair, '{"text": "abc ' + escape + ' def"}'])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    rest = located(e.value, f, 3, "text")
    assert rest.startswith("lone UTF-16 surrogate \\u")
    with pytest.raises(DataError):
        validate_source(f, "jsonl")
    assert texts(iter_documents(write_jsonl(tmp_path / "ok.jsonl", [good, pair]), "jsonl"))[1] == "emoji \U0001f600 ok"


def test_lone_surrogate_in_the_id_field(tmp_path):
    f = write_jsonl(tmp_path / "sid.jsonl", ['{"text": "abc", "id": "a\\udfffb"}'])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl", id_field="id"))
    assert located(e.value, f, 1, "id").startswith("lone UTF-16 surrogate")


def test_nul_character_is_rejected_in_every_format(tmp_path):
    f = write_jsonl(tmp_path / "nul.jsonl", [{"text": SENTENCES[0]}, '{"text": "ab\\u0000cd"}'])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    assert located(e.value, f, 2, "text").startswith("NUL character (U+0000) at character 3")
    pq_file = write_parquet(tmp_path / "nul.parquet", {"text": [SENTENCES[0], "x\x00"]})
    with pytest.raises(DataError) as e:
        list(iter_documents(pq_file, "parquet"))
    assert located(e.value, pq_file, 2, "text").startswith("NUL character")
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("line one\nline\x00 two\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        list(iter_documents(d, "text_dir"))
    assert located(e.value, d / "a.txt", 2).startswith("NUL character")


def test_line_that_is_not_an_object(tmp_path):
    f = write_jsonl(tmp_path / "arr.jsonl", [{"text": SENTENCES[0]}, '["שלום"]'])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    assert located(e.value, f, 2) == "expected a JSON object, got array"


def test_missing_text_field(tmp_path):
    f = write_jsonl(tmp_path / "miss.jsonl", [{"text": SENTENCES[0]}, {"body": SENTENCES[1]}])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    rest = located(e.value, f, 2, "text")
    assert rest == "missing text field 'text' (fields present: 'body')"


@pytest.mark.parametrize("value,kind", [(42, "number"), (None, "null"), (["א"], "array")])
def test_text_that_is_not_a_string(tmp_path, value, kind):
    f = write_jsonl(tmp_path / "typ.jsonl", [{"content": "א"}, {"content": value}])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl", text_field="content"))
    assert located(e.value, f, 2, "content") == f"text must be a string, got {kind}"


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_jsonl_file(tmp_path, content):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(content)
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    assert located(e.value, f).startswith("empty file")
    with pytest.raises(DataError, match="empty file"):
        count_documents(f, "jsonl")


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere" / "data.jsonl"
    for fmt in FORMATS:
        with pytest.raises(DataError) as e:
            iter_documents(missing, fmt)  # raised at call, before any iteration
        assert located(e.value, missing) == "path does not exist"


def test_directory_without_matching_files(tmp_path):
    (tmp_path / "only.txt").write_text("א")
    with pytest.raises(DataError) as e:
        resolve_files(tmp_path, "parquet")
    assert located(e.value, tmp_path).startswith("directory holds no parquet files "
                                                 "(looked for *.parquet")


@pytest.mark.parametrize("compress", ["gz", "zst"])
@pytest.mark.parametrize("keep", ["half", "all_but_3_bytes"])
def test_truncated_compressed_file(tmp_path, compress, keep):
    # Enough varied text for several compressed blocks, so a cut file still decodes a
    # prefix of whole lines and only an end-of-stream check can notice the loss.
    records = [{"text": f"{SENTENCES[i % 8]} {i * 7919 % 100003}"} for i in range(6000)]
    full = write_jsonl(tmp_path / "full", records, compress=compress).read_bytes()
    f = tmp_path / f"cut.jsonl.{compress}"
    f.write_bytes(full[: len(full) // 2] if keep == "half" else full[:-3])
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "jsonl"))
    assert located(e.value, f).startswith(f"{'gzip' if compress == 'gz' else 'zstd'} "
                                         f"stream is truncated or corrupt")
    with pytest.raises(DataError) as e:
        count_documents(f, "jsonl")
    assert "stream is truncated" in located(e.value, f)


def test_parquet_missing_column(tmp_path):
    f = write_parquet(tmp_path / "cols.parquet", {"body": SENTENCES, "lang": ["he"] * 8})
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "parquet"))
    assert located(e.value, f, field="text") == "missing column 'text'; columns: 'body', 'lang'"
    with pytest.raises(DataError, match="missing column"):
        count_documents(f, "parquet")


def test_parquet_null_and_non_string_text(tmp_path):
    f = write_parquet(tmp_path / "nulls.parquet", {"text": [SENTENCES[0], SENTENCES[1], None]})
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "parquet"))
    assert located(e.value, f, 3, "text") == "text is null"
    g = write_parquet(tmp_path / "ints.parquet", {"text": [1, 2, 3]})
    with pytest.raises(DataError) as e:
        list(iter_documents(g, "parquet"))
    assert located(e.value, g, field="text").startswith("column has type int64")


def test_not_a_parquet_file(tmp_path):
    f = tmp_path / "fake.parquet"
    f.write_text("זה לא פרקט")
    with pytest.raises(DataError) as e:
        list(iter_documents(f, "parquet"))
    assert located(e.value, f).startswith("not a readable parquet file")


def test_text_dir_invalid_utf8(tmp_path):
    (tmp_path / "ok.txt").write_text(SENTENCES[0], encoding="utf-8")
    head = (SENTENCES[1] + "\n").encode()
    (tmp_path / "zz.txt").write_bytes(head + b"abc\xc3(")
    with pytest.raises(DataError) as e:
        list(iter_documents(tmp_path, "text_dir"))
    rest = located(e.value, tmp_path / "zz.txt", 2)
    assert rest.startswith("invalid UTF-8: byte 0xc3")
    assert rest.endswith(f"(byte offset {len(head) + 3})")


def test_unknown_format(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"text": SENTENCES[0]}])
    for call in (lambda: iter_documents(f, "csv"), lambda: resolve_files(f, "csv"),
                 lambda: count_documents(f, "csv")):
        with pytest.raises(DataError) as e:
            call()
        assert str(e.value) == ("unknown format 'csv'; expected one of "
                                "jsonl, parquet, text_dir, hf_disk")


# --------------------------------------------------------------------------- validate_source


def test_validate_source_reads_everything_or_max_lines(tmp_path):
    f = write_jsonl(tmp_path / "v.jsonl",
                    [{"text": s} for s in SENTENCES[:4]] + ['{"text": 5}'])
    assert validate_source(f, "jsonl", "text", max_lines=4) == 4
    assert validate_source(f, "jsonl", "text", max_lines=2) == 2
    with pytest.raises(DataError) as e:
        validate_source(f, "jsonl", "text")
    assert located(e.value, f, 5, "text") == "text must be a string, got number"
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": s} for s in SENTENCES])
    assert validate_source(good, "jsonl", "text") == len(SENTENCES)
    with pytest.raises(ConfigError):
        validate_source(good, "jsonl", "text", max_lines=0)
