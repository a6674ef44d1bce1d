"""Stream documents out of a user's corpus, failing with a located DataError on bad input.

Four source formats are understood (see FORMATS):

* ``jsonl``    one JSON object per line; plain, gzip or zstandard compressed.
* ``parquet``  one document per row, read record batch by record batch.
* ``text_dir`` one document per ``.txt`` file.
* ``hf_disk``  a directory written by ``datasets``' ``save_to_disk``; ``dir::split``
               selects a split of a DatasetDict.

Line and row numbers are 1-based everywhere, in ``doc_id`` values and in error messages.

Text rules (every format): a document's text must be valid Unicode text, so two things that a
JSON ``\\u`` escape can smuggle past UTF-8 decoding are errors naming the file, line and field:
a lone UTF-16 surrogate (``"\\ud800"`` without its pair; it cannot be encoded, hashed or
tokenized) and a NUL character (U+0000, in any format; it marks binary or truncated input, never
text). Neither is stripped silently: a corpus with them is damaged and should be fixed at its
source.

Every document has an ``ordinal``: its 0-based position in the whole source, counted over
the files in the order ``resolve_files`` returns them. Sharding keeps the documents whose
ordinal is congruent to the shard index, so shards partition a source and their union,
sorted by ordinal, is the source in reading order. Each shard checks only the documents it
yields, so a malformed line is reported by the shard that owns it; ``validate_source``
checks every document.
"""

from __future__ import annotations

import glob
import gzip
import json
import operator
import os
import pathlib
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from hebatron_nemo.errors import ConfigError, DataError

__all__ = [
    "FORMATS",
    "Document",
    "count_documents",
    "iter_documents",
    "resolve_files",
    "validate_source",
]

FORMATS = ("jsonl", "parquet", "text_dir", "hf_disk")

# Names a directory scan picks up. Plain ".json" is left out on purpose: in corpus
# directories it is usually metadata (dataset_info.json, config.json), not JSON lines.
# A ".json" file named explicitly, or matched by a glob, is still read as JSON lines.
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".json.gz",
                   ".jsonl.zst", ".ndjson.zst", ".json.zst", ".jsonl.zstd", ".json.zstd")
_DIR_SUFFIXES = {"jsonl": _JSONL_SUFFIXES, "parquet": (".parquet",), "text_dir": (".txt",)}

_CHUNK = 1 << 20          # bytes read from disk at a time
_ZSTD_CHUNK = 1 << 17     # smaller: one zstd input chunk can expand a hundredfold
_BATCH_ROWS = 4096        # rows per Arrow record batch
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UTF8_BOM = b"\xef\xbb\xbf"
_GLOB_CHARS = frozenset("*?[")
_SPLIT_SEP = "::"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a source.

    ``doc_id`` is stable across runs: the ``id_field`` value when one is configured, else
    ``"<relative file name>:<line or row number>"`` (jsonl, parquet), the relative path
    (text_dir) or ``"<dataset dir>[/<split>]:<row number>"`` (hf_disk). ``ordinal`` is the
    0-based position of the document in the whole source, across files, in reading order.
    """

    text: str
    doc_id: str
    ordinal: int


# --------------------------------------------------------------------------- resolution


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}",
                        path=None)


def _split_hf_path(path: str) -> tuple[str, str | None]:
    # rpartition: a directory name may itself contain "::" only before the last one.
    if _SPLIT_SEP in path:
        directory, _, split = path.rpartition(_SPLIT_SEP)
        if not split:
            raise DataError("empty split name after '::'", path=path)
        return directory, split
    return path, None


def _glob_root(pattern: str) -> pathlib.Path:
    """The deepest directory of a glob pattern that holds no wildcard."""
    parts = pathlib.Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS.intersection(part):
            break
        fixed.append(part)
    return pathlib.Path(*fixed) if fixed else pathlib.Path(".")


def _resolve(path: str | os.PathLike, fmt: str) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """The root that relative names are taken from, and the files of the source in order."""
    _check_format(fmt)
    path = os.fspath(path)
    if not path:
        raise DataError("empty source path")
    if fmt == "hf_disk":
        directory, _ = _split_hf_path(path)
        p = pathlib.Path(directory)
        if not p.exists():
            raise DataError("path does not exist", path=directory)
        if not p.is_dir():
            raise DataError("hf_disk expects the directory written by save_to_disk, "
                            "got a file", path=directory)
        return p, [p]

    p = pathlib.Path(path)
    if p.is_file():
        return p.parent, [p]
    if p.is_dir():
        suffixes = _DIR_SUFFIXES[fmt]
        found = []
        for f in p.rglob("*"):
            rel = f.relative_to(p)
            # Hidden entries are caches and editor droppings (.cache/huggingface, .~lock).
            if any(part.startswith(".") for part in rel.parts):
                continue
            if f.name.endswith(suffixes) and f.is_file():
                found.append((rel.as_posix(), f))
        if not found:
            raise DataError(f"directory holds no {fmt} files (looked for "
                            f"{', '.join('*' + s for s in suffixes)}, recursively)", path=path)
        found.sort(key=lambda item: item[0])
        return p, [f for _, f in found]
    if _GLOB_CHARS.intersection(path):
        root = _glob_root(path)
        matches = [pathlib.Path(m) for m in glob.glob(path, recursive=True)]
        files = sorted((m for m in matches if m.is_file()),
                       key=lambda m: _relative_name(m, root))
        if not files:
            raise DataError("glob pattern matches no files", path=path)
        return root, files
    if p.exists():
        raise DataError("path is neither a regular file nor a directory", path=path)
    raise DataError("path does not exist", path=path)


def _relative_name(file: pathlib.Path, root: pathlib.Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.as_posix()


def resolve_files(path: str | os.PathLike, fmt: str) -> list[pathlib.Path]:
    """The files that make up the source at ``path``, in reading order.

    ``path`` is a file, a directory (every file of the format below it, recursively,
    sorted by relative path; hidden entries skipped), or a glob pattern (every regular
    file it matches, sorted by path, whatever its suffix). For ``hf_disk`` it is the
    directory written by ``save_to_disk``, optionally followed by ``::split``, and the
    result is that directory alone.
    """
    return _resolve(path, fmt)[1]


# --------------------------------------------------------------------------- byte streams


def _plain_chunks(fh) -> Iterator[bytes]:
    while chunk := fh.read(_CHUNK):
        yield chunk


def _gzip_chunks(fh) -> Iterator[bytes]:
    # GzipFile handles multi-member files and raises EOFError on truncation.
    with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
        while chunk := gz.read(_CHUNK):
            yield chunk


def _zstd_chunks(fh) -> Iterator[bytes]:
    # zstandard's stream_reader ends quietly on a truncated frame, so frames are decoded
    # one decompressobj at a time and a frame still open at end of input is an error.
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj, in_frame = dctx.decompressobj(), False
    while data := fh.read(_ZSTD_CHUNK):
        while data:
            out = dobj.decompress(data)
            in_frame = True
            if out:
                yield out
            if dobj.eof:
                data = dobj.unused_data
                dobj, in_frame = dctx.decompressobj(), False
            else:
                data = b""
    if in_frame:
        raise EOFError("zstd stream ended inside a frame")


def _decompressed_chunks(file: pathlib.Path) -> Iterator[bytes]:
    """The file's bytes, decompressed according to its magic number; damage is a DataError."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
    with open(file, "rb", buffering=0) as fh:
        magic = fh.read(4)
        fh.seek(0)
        # The magic number, not the suffix, decides: both magics are invalid as the first
        # bytes of UTF-8 JSON, so a plain file is never mistaken for a compressed one.
        if magic.startswith(_GZIP_MAGIC):
            what, chunks = "gzip stream is truncated or corrupt", _gzip_chunks(fh)
        elif magic == _ZSTD_MAGIC:
            import zstandard

            errors += (zstandard.ZstdError,)
            what, chunks = "zstd stream is truncated or corrupt", _zstd_chunks(fh)
        else:
            what, chunks = "read failed", _plain_chunks(fh)
        try:
            yield from chunks
        except errors as exc:
            raise DataError(f"{what}: {exc}", path=str(file)) from exc


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a chunked byte stream, without their b"\\n"."""
    pieces: list[bytes] = []
    for chunk in chunks:
        if b"\n" not in chunk:
            # Collected in a list so a line spanning many chunks is joined once, not
            # re-copied per chunk.
            pieces.append(chunk)
            continue
        if pieces:
            pieces.append(chunk)
            chunk = b"".join(pieces)
        lines = chunk.split(b"\n")
        tail = lines.pop()
        pieces = [tail] if tail else []
        yield from lines
    if pieces:
        yield b"".join(pieces)


def _utf8_error(exc: UnicodeDecodeError, base_offset: int) -> str:
    bad = exc.object[exc.start:exc.start + 1]
    return (f"invalid UTF-8: byte 0x{bad.hex()} at position {exc.start} of the line, "
            f"{exc.reason} (byte offset {base_offset + exc.start})")


# --------------------------------------------------------------------------- jsonl


def _describe(value) -> str:
    return "null" if value is None else type(value).__name__


def _doc_id_value(obj: dict, id_field: str, path: str, line: int) -> str:
    try:
        value = obj[id_field]
    except KeyError:
        raise DataError(f"missing id field {id_field!r}", path=path, line=line,
                        field=id_field) from None
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise DataError(f"id must be a string or an integer, got {_describe(value)}",
                    path=path, line=line, field=id_field)


def _jsonl_file(file: pathlib.Path, rel: str, text_field: str, id_field: str | None,
                ordinal: int, shard_i: int, shard_n: int):
    """Documents of one JSON-lines file; returns the ordinal after its last document."""
    path = str(file)
    if file.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", path=path)
    first_ordinal = ordinal
    offset = 0
    lineno = 0
    loads = json.loads
    for raw in _split_lines(_decompressed_chunks(file)):
        lineno += 1
        start = offset
        offset += len(raw) + 1
        if lineno == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[3:]
            start += 3
        if not raw or raw.isspace():
            continue
        # Only the owning shard decodes a line; the others only need to count it, and
        # blank-line detection above is byte-level so every shard counts alike.
        if ordinal % shard_n != shard_i:
            ordinal += 1
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(_utf8_error(exc, start), path=path, line=lineno) from None
        try:
            obj = loads(line)
        except ValueError as exc:
            # JSONDecodeError's msg may itself end in "starting at": the column goes in brackets
            detail = (f"{exc.msg} (column {exc.colno})"
                      if isinstance(exc, json.JSONDecodeError) else str(exc))
            raise DataError(f"malformed JSON: {detail}", path=path, line=lineno) from None
        except RecursionError:
            raise DataError("malformed JSON: nested too deeply", path=path,
                            line=lineno) from None
        if type(obj) is not dict:
            raise DataError(f"expected a JSON object, got {_json_type(obj)}",
                            path=path, line=lineno)
        try:
            text = obj[text_field]
        except KeyError:
            keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
            raise DataError(f"missing text field {text_field!r} (fields present: {keys})",
                            path=path, line=lineno, field=text_field) from None
        if type(text) is not str:
            raise DataError(f"text must be a string, got {_json_type(text)}",
                            path=path, line=lineno, field=text_field)
        doc_id = (f"{rel}:{lineno}" if id_field is None
                  else _doc_id_value(obj, id_field, path, lineno))
        # Only a \\u escape can put a surrogate into decoded JSON (UTF-8 decoding refuses them),
        # so lines without one skip the scan.
        if b"\\ud" in raw or b"\\uD" in raw:
            _check_surrogates(text, path, lineno, text_field)
            if id_field is not None:
                _check_surrogates(doc_id, path, lineno, id_field)
        _check_nul(text, path, lineno, text_field)
        yield Document(text, doc_id, ordinal)
        ordinal += 1
    if ordinal == first_ordinal:
        raise DataError("empty file (no non-blank lines)", path=path)
    return ordinal


def _check_surrogates(value: str, path: str, line: int, field: str) -> None:
    m = _SURROGATE.search(value)
    if m:
        raise DataError(f"lone UTF-16 surrogate \\u{ord(m.group()):04x} at character {m.start() + 1} "
                        "(a JSON \\u escape without its pair): not encodable text; fix the escape "
                        "in the source", path=path, line=line, field=field)


def _check_nul(text: str, path: str, line: int | None, field: str | None) -> None:
    at = text.find("\x00")
    if at >= 0:
        raise DataError(f"NUL character (U+0000) at character {at + 1}: binary or damaged "
                        "input, not text; remove it from the source", path=path, line=line,
                        field=field)


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _count_jsonl_file(file: pathlib.Path) -> int:
    path = str(file)
    if file.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", path=path)
    count = 0
    first = True
    for raw in _split_lines(_decompressed_chunks(file)):
        if first:
            first = False
            if raw.startswith(_UTF8_BOM):
                raw = raw[3:]
        if raw and not raw.isspace():
            count += 1
    if count == 0:
        raise DataError("empty file (no non-blank lines)", path=path)
    return count


# --------------------------------------------------------------------------- Arrow (parquet, hf_disk)


def _is_string_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_id_type(t) -> bool:
    import pyarrow as pa

    return _is_string_type(t) or pa.types.is_integer(t)


def _check_columns(schema, text_field: str, id_field: str | None, path: str) -> list[str]:
    """The columns to read, after checking they exist and hold strings (ids: or integers)."""
    names = schema.names
    wanted = [text_field] if id_field is None else [text_field, id_field]
    for field, ok, expected in ((text_field, _is_string_type, "string"),
                                (id_field, _is_id_type, "string or integer")):
        if field is None:
            continue
        if field not in names:
            cols = ", ".join(repr(n) for n in names) or "none"
            raise DataError(f"missing column {field!r}; columns: {cols}", path=path,
                            field=field)
        t = schema.field(field).type
        if not ok(t):
            raise DataError(f"column has type {t}, expected {expected} (every row)",
                            path=path, field=field)
    return wanted


def _arrow_documents(batches: Iterator, path: str, id_prefix: str, text_field: str,
                     id_field: str | None, ordinal: int, shard_i: int, shard_n: int):
    """Documents of a stream of Arrow tables/batches whose columns are [text, (id)]."""
    row0 = 0  # rows before the current batch
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (OSError, ValueError) as exc:  # pyarrow's ArrowException subclasses these
            raise DataError(f"unreadable data after row {row0}: {exc}", path=path) from exc
        n = batch.num_rows
        if n == 0:
            continue
        # First index in this batch whose global ordinal belongs to the shard.
        k0 = (shard_i - ordinal) % shard_n
        texts = batch.column(0).to_pylist()[k0::shard_n]
        ids = batch.column(1).to_pylist()[k0::shard_n] if id_field is not None else None
        for j, text in enumerate(texts):
            k = k0 + j * shard_n
            row = row0 + k + 1
            if text is None:
                raise DataError("text is null", path=path, line=row, field=text_field)
            _check_nul(text, path, row, text_field)
            if ids is None:
                doc_id = f"{id_prefix}:{row}"
            else:
                doc_id = ids[j]
                if doc_id is None:
                    raise DataError("id is null", path=path, line=row, field=id_field)
                doc_id = str(doc_id)
            yield Document(text, doc_id, ordinal + k)
        ordinal += n
        row0 += n
    return ordinal


def _open_parquet(file: pathlib.Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"not a readable parquet file: {exc}", path=str(file)) from exc


def _parquet_file(file: pathlib.Path, rel: str, text_field: str, id_field: str | None,
                  ordinal: int, shard_i: int, shard_n: int):
    path = str(file)
    pf = _open_parquet(file)
    columns = _check_columns(pf.schema_arrow, text_field, id_field, path)
    if pf.metadata.num_rows == 0:
        raise DataError("empty file (0 rows)", path=path)
    batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
    return (yield from _arrow_documents(batches, path, rel, text_field, id_field,
                                        ordinal, shard_i, shard_n))


def _load_hf(path: str):
    """The selected Dataset of an hf_disk source, and the name used in its doc_ids."""
    import datasets

    directory, split = _split_hf_path(path)
    try:
        loaded = datasets.load_from_disk(directory)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"not a dataset saved with save_to_disk: {exc}",
                        path=directory) from exc
    name = pathlib.Path(directory).resolve().name
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(repr(s) for s in loaded) or "none"
        if split is None:
            if "train" not in loaded:
                raise DataError(f"DatasetDict has no 'train' split; pick one with "
                                f"'{directory}::<split>' from: {splits}", path=directory)
            split = "train"
        elif split not in loaded:
            raise DataError(f"no split {split!r}; splits: {splits}", path=directory)
        return loaded[split], f"{name}/{split}", directory
    if split is not None:
        raise DataError(f"split {split!r} requested but the directory holds a single "
                        f"Dataset, not a DatasetDict", path=directory)
    return loaded, name, directory


# --------------------------------------------------------------------------- text_dir


def _read_text_file(file: pathlib.Path) -> str:
    raw = file.read_bytes()
    start = 3 if raw.startswith(_UTF8_BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        bad = raw[offset:offset + 1].hex()
        raise DataError(f"invalid UTF-8: byte 0x{bad}, {exc.reason} (byte offset {offset})",
                        path=str(file), line=line) from None
    at = text.find("\x00")
    if at >= 0:
        _check_nul(text, str(file), text.count("\n", 0, at) + 1, None)
    return text


# --------------------------------------------------------------------------- public API


def _check_shard(shard) -> tuple[int, int]:
    try:
        i, n = (operator.index(x) for x in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard must be a pair of integers (index, count), "
                          f"got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    return i, n


def _check_fields(fmt: str, text_field: str, id_field: str | None) -> None:
    if fmt != "text_dir" and (not isinstance(text_field, str) or not text_field):
        raise ConfigError(f"text_field must be a non-empty string, got {text_field!r}")
    if id_field is not None:
        if fmt == "text_dir":
            raise ConfigError("id_field is not supported for text_dir: the id of a "
                              "document is its relative path")
        if not isinstance(id_field, str) or not id_field:
            raise ConfigError(f"id_field must be a non-empty string, got {id_field!r}")


def iter_documents(path: str | os.PathLike, fmt: str, text_field: str = "text",
                   id_field: str | None = None,
                   shard: tuple[int, int] = (0, 1)) -> Iterator[Document]:
    """The documents of a source, in reading order, restricted to one shard.

    ``shard=(i, N)`` keeps the documents whose global ``ordinal % N == i``. Arguments and
    file resolution are checked when this is called; file contents as they are read.
    Documents with empty text are yielded; a null or non-string text is a DataError.
    """
    _check_format(fmt)
    shard_i, shard_n = _check_shard(shard)
    _check_fields(fmt, text_field, id_field)
    root, files = _resolve(path, fmt)

    if fmt == "hf_disk":
        # Loaded here, not in the generator, so a missing split or column fails at call.
        ds, id_prefix, directory = _load_hf(os.fspath(path))
        columns = _check_columns(ds.features.arrow_schema, text_field, id_field, directory)
        if len(ds) == 0:
            raise DataError("dataset has 0 rows", path=directory)
        tables = iter(ds.select_columns(columns).with_format("arrow")
                      .iter(batch_size=_BATCH_ROWS))
        return _arrow_documents(tables, directory, id_prefix, text_field, id_field, 0,
                                shard_i, shard_n)
    if fmt == "text_dir":
        return _text_dir_documents(root, files, shard_i, shard_n)
    reader: Callable = _jsonl_file if fmt == "jsonl" else _parquet_file
    return _file_documents(reader, root, files, text_field, id_field, shard_i, shard_n)


def _file_documents(reader: Callable, root: pathlib.Path, files: list[pathlib.Path],
                    text_field: str, id_field: str | None, shard_i: int,
                    shard_n: int) -> Iterator[Document]:
    ordinal = 0
    for file in files:
        ordinal = yield from reader(file, _relative_name(file, root), text_field, id_field,
                                    ordinal, shard_i, shard_n)


def _text_dir_documents(root: pathlib.Path, files: list[pathlib.Path], shard_i: int,
                        shard_n: int) -> Iterator[Document]:
    for ordinal in range(shard_i, len(files), shard_n):
        file = files[ordinal]
        yield Document(_read_text_file(file), _relative_name(file, root), ordinal)


def count_documents(path: str | os.PathLike, fmt: str, text_field: str = "text",
                    id_field: str | None = None, shard: tuple[int, int] = (0, 1)) -> int:
    """How many documents ``iter_documents`` would yield with the same arguments.

    Cheap: jsonl counts non-blank lines without parsing them, parquet sums row counts from
    the footers, text_dir counts files, hf_disk takes the dataset's length. Columns are
    checked to exist (parquet, hf_disk) and empty files are rejected as in iteration, but
    contents are not validated; use ``validate_source`` for that.
    """
    _check_format(fmt)
    shard_i, shard_n = _check_shard(shard)
    _check_fields(fmt, text_field, id_field)
    root, files = _resolve(path, fmt)
    if fmt == "jsonl":
        total = sum(_count_jsonl_file(f) for f in files)
    elif fmt == "parquet":
        total = 0
        for f in files:
            pf = _open_parquet(f)
            _check_columns(pf.schema_arrow, text_field, id_field, str(f))
            if pf.metadata.num_rows == 0:
                raise DataError("empty file (0 rows)", path=str(f))
            total += pf.metadata.num_rows
    elif fmt == "text_dir":
        total = len(files)
    else:
        ds, _, directory = _load_hf(os.fspath(path))
        _check_columns(ds.features.arrow_schema, text_field, id_field, directory)
        if len(ds) == 0:
            raise DataError("dataset has 0 rows", path=directory)
        total = len(ds)
    return len(range(shard_i, total, shard_n))


def validate_source(path: str | os.PathLike, fmt: str, text_field: str = "text",
                    id_field: str | None = None, max_lines: int | None = None) -> int:
    """Read the source (or its first ``max_lines`` documents) to surface input errors early.

    Returns the number of documents seen. Raises DataError at the first bad input.
    """
    if max_lines is not None and (type(max_lines) is not int or max_lines < 1):
        raise ConfigError(f"max_lines must be a positive integer or None, got {max_lines!r}")
    seen = 0
    for _ in iter_documents(path, fmt, text_field, id_field):
        seen += 1
        if seen == max_lines:
            break
    return seen
