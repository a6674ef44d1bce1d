"""SFT sources of a registry (`conf/sft_data/<name>.yaml`) read as validated conversations, one at a time.

Every source yields ``Conversation`` records: the messages in the HF/OpenAI chat form (``[{role,
content, reasoning_content?}]``), where they were read (file, 1-based line or row) and a stable id.
Three kinds:

* ``messages``: a column holding the chat itself (system first if any, then user/assistant turns
  alternating, ending with an assistant turn; an assistant turn may carry ``reasoning_content``,
  rendered by the chat template as a ``<think>`` block);
* ``instruction``: prompt/response columns (optional system and reasoning columns), one exchange;
* ``pairs``: aligned Hebrew/English texts, one translation chat per configured direction, with
  language-neutral instructions (sentences, paragraphs or documents alike).

Malformed rows are errors naming file, line and field (``DataError``), raised while streaming, before
the row is used: an unknown role, an empty or missing assistant turn, turns that do not alternate, a
non-string text, a missing column. Nothing here holds more than one row (plus one Arrow batch).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.sft.template import ROLES, validate_messages
from hebatron_nemo.utils.hashing import hash64, unit_hash

_BATCH_ROWS = 1024


@dataclass(slots=True)
class Conversation:
    """One chat read from a source: its messages, a stable id, and where it was read."""

    id: str
    messages: list[dict]
    path: str
    line: int


# ------------------------------------------------------------------------------------------ rows


def iter_rows(path: str, fmt: str) -> Iterator[tuple[str, int, dict]]:
    """(file, 1-based line or row, row dict) of every row of a source, in reading order.

    JSONL (plain, .gz, .zst; blank lines skipped but counted), Parquet (row groups streamed in
    batches) and ``datasets.save_to_disk`` folders (``dir::split`` for a DatasetDict). A line that is
    not a JSON object is a DataError naming the file and line."""
    from hebatron_nemo.data import readers

    if fmt == "hf_disk":
        ds, _, directory = readers._load_hf(path)
        row = 0
        for batch in ds.with_format("arrow").iter(batch_size=_BATCH_ROWS):
            for obj in batch.to_pylist():
                row += 1
                yield directory, row, obj
        return
    if fmt not in ("jsonl", "parquet"):
        raise ConfigError(f"SFT source format must be jsonl, parquet or hf_disk, got {fmt!r}")
    for file in readers.resolve_files(path, fmt):
        name = str(file)
        if fmt == "parquet":
            pf = readers._open_parquet(file)
            row = 0
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
                for obj in batch.to_pylist():
                    row += 1
                    yield name, row, obj
            continue
        lineno = 0
        for raw in readers._split_lines(readers._decompressed_chunks(file)):
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw or raw.isspace():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 at byte {exc.start} of the line", path=name, line=lineno) from None
            except ValueError as exc:
                detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise DataError(f"malformed JSON: {detail}", path=name, line=lineno) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=name, line=lineno)
            yield name, lineno, obj


# ------------------------------------------------------------------------------------------ checks


def check_conversation(messages, path: str, line: int, field: str = "messages") -> list[dict]:
    """The messages as plain dicts, or a DataError naming file, line and field.

    Accepted: an optional system message first, then user and assistant turns alternating (user
    first), ending with an assistant turn; every assistant turn has non-empty content; keys are
    ``role``, ``content`` and (assistant only) ``reasoning_content``; texts are strings without chat
    markers. A ``reasoning_content`` of None or "" means no reasoning."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise DataError(f"must be a list of messages, got {type(messages).__name__}", path=path, line=line, field=field)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(f"a message must be an object, got {type(m).__name__}", path=path, line=line,
                            field=f"{field}[{i}]")
        m = {k: v for k, v in m.items() if not (k == "reasoning_content" and v in (None, ""))}
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"unknown role {role!r} (allowed: {', '.join(ROLES)})", path=path, line=line,
                            field=f"{field}[{i}].role")
        out.append(m)
    try:
        validate_messages(out)
    except DataError as e:  # the template's own check (types, keys, markers) with the row's place added
        raise DataError(str(e), path=path, line=line, field=field + (e.field or "messages")[len("messages"):]) from None
    turns = out[1:] if out and out[0]["role"] == "system" else out
    if not turns:
        raise DataError("no user or assistant turn", path=path, line=line, field=field)
    offset = len(out) - len(turns)
    for j, m in enumerate(turns):
        want = "user" if j % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"turns must alternate user/assistant: expected {want!r}, got {m['role']!r}", path=path,
                            line=line, field=f"{field}[{j + offset}].role")
        if want == "assistant" and not m["content"].strip():
            raise DataError("empty assistant turn", path=path, line=line, field=f"{field}[{j + offset}].content")
    if turns[-1]["role"] != "assistant":
        raise DataError("missing assistant turn: the conversation ends with a user turn", path=path, line=line,
                        field=f"{field}[{len(out) - 1}]")
    return out


def _text(obj: dict, key: str, path: str, line: int, optional: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
        raise DataError(f"missing column {key!r} (present: {keys})", path=path, line=line, field=key)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", path=path, line=line, field=key)
    return value


@functools.lru_cache(maxsize=64)
def _file_name(path: str) -> str:
    return Path(path).name  # cached: parsed once per file, not per row (it showed in profiles)


def _row_id(obj: dict, id_field: str | None, path: str, line: int) -> str:
    if id_field is None:
        return f"{_file_name(path)}:{line}"
    value = obj.get(id_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError("missing or empty id", path=path, line=line, field=id_field)
    return str(value)


# ------------------------------------------------------------------------------------------ pairs

# Instructions: (language, template); {src} is the text. Written for this project, language-neutral
# about what the text is (a sentence, a paragraph, a document).
PAIR_INSTRUCTIONS = {
    "he-en": [
        ("he", "נא לתרגם לאנגלית:\n\n{src}"),
        ("he", "מה התרגום לאנגלית של הטקסט הזה?\n\n{src}"),
        ("he", "{src}\n\nאיך אומרים את זה באנגלית?"),
        ("he", "תרגום לאנגלית, בבקשה:\n{src}"),
        ("en", "Translate this Hebrew text into English:\n\n{src}"),
        ("en", "What does the following Hebrew say in English?\n\n{src}"),
        ("en", "{src}\n\nPlease put the Hebrew above into English."),
        ("en", "English translation, please:\n{src}"),
    ],
    "en-he": [
        ("he", "נא לתרגם לעברית:\n\n{src}"),
        ("he", "איך כותבים את זה בעברית?\n\n{src}"),
        ("he", "{src}\n\nמה התרגום של הטקסט הזה לעברית?"),
        ("he", "תרגום לעברית, בבקשה:\n{src}"),
        ("en", "Translate the following text into Hebrew:\n\n{src}"),
        ("en", "How would this read in Hebrew?\n\n{src}"),
        ("en", "{src}\n\nGive me the Hebrew version of the text above."),
        ("en", "Hebrew translation, please:\n{src}"),
    ],
}
PAIR_SYSTEM = {
    "he": ["תפקידך: תרגום נאמן בין עברית לאנגלית. יש להשיב בתרגום בלבד.",
           "התשובות כאן הן תרגומים מדויקים, בלי הסברים נוספים."],
    "en": ["You translate faithfully between Hebrew and English. Reply with the translation only.",
           "You are a careful Hebrew-English translator."],
}
SALT = "hebatron-sft-v2"


def pair_conversations(pid: str, he: str, en: str, directions, system_fraction: float) -> list[tuple[str, list[dict]]]:
    """(id, messages) of the translation chats of one aligned pair, one per direction.

    The instruction (Hebrew or English, several phrasings) and whether a system prompt comes first
    (about `system_fraction` of chats) are fixed by a hash of ``<pair id>|<direction>``; the answer is
    the pair's other side."""
    out = []
    for d in directions:
        cid = f"{pid}|{d}"
        src, tgt = (he, en) if d == "he-en" else (en, he)
        lang, template = PAIR_INSTRUCTIONS[d][hash64(SALT, "instruction", cid) % len(PAIR_INSTRUCTIONS[d])]
        messages = []
        if unit_hash(SALT, "system", cid) < system_fraction:
            options = PAIR_SYSTEM[lang]
            messages.append({"role": "system", "content": options[hash64(SALT, "system-text", cid) % len(options)]})
        messages += [{"role": "user", "content": template.format(src=src)}, {"role": "assistant", "content": tgt}]
        out.append((cid, messages))
    return out


# ------------------------------------------------------------------------------------------ sources


def load_callable(spec: str, key: str) -> Callable:
    """The function named by ``"package.module:function"`` (a ConfigError naming `key` otherwise)."""
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ConfigError(f"{key}: expected 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{key}: cannot load {spec!r}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return fn


def text_normalizer(src, key: str) -> Callable[[str], str]:
    """The source's Hebrew text clean-up: its `transform` (if any), then the Hebrew normalizer with its
    `normalize` settings (if set). Identity when neither is set."""
    from hebatron_nemo.data.normalize import HebrewNormalizer, NormalizeConfig

    steps: list[Callable[[str], str]] = []
    if src.transform:
        steps.append(load_callable(src.transform, f"{key}.transform"))
    if src.normalize is not None:
        try:
            steps.append(HebrewNormalizer(NormalizeConfig(**dict(src.normalize))))
        except (TypeError, ConfigError) as e:
            raise ConfigError(f"{key}.normalize: {e}") from None
    if not steps:
        return lambda t: t

    def run(text: str) -> str:
        for step in steps:
            text = step(text)
        return text
    return run


def _normalize_messages(messages: list[dict], fn: Callable[[str], str]) -> list[dict]:
    out = []
    for m in messages:
        m = dict(m)
        m["content"] = fn(m["content"])
        if m.get("reasoning_content"):
            m["reasoning_content"] = fn(m["reasoning_content"])
        out.append(m)
    return out


def _plain(src):
    """The source's settings as plain Python values: read per row, an OmegaConf node's attribute
    access (validation, interpolation) was half of the preparation's time."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    return SimpleNamespace(**OmegaConf.to_container(src, resolve=True)) if OmegaConf.is_config(src) else src


def iter_conversations(src, path: str, key: str) -> Iterator[Conversation]:
    """The validated, normalized conversations of one registry source (``SFTSourceConfig``)."""
    src = _plain(src)
    norm = text_normalizer(src, key)
    touch_all = src.language == "he"  # an English source keeps its text; a pairs source normalizes its he side
    keep = float(src.keep_fraction)
    for file, line, obj in iter_rows(path, src.format):
        rid = _row_id(obj, src.id_field, file, line)
        if keep < 1.0 and unit_hash(SALT, "keep", rid) >= keep:
            continue  # not sampled: skipped before any other work
        if src.kind == "messages":
            if src.messages_field not in obj:
                keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
                raise DataError(f"missing column {src.messages_field!r} (present: {keys})", path=file, line=line,
                                field=src.messages_field)
            messages = check_conversation(obj[src.messages_field], file, line, src.messages_field)
            if touch_all:
                messages = check_conversation(_normalize_messages(messages, norm), file, line, src.messages_field)
            yield Conversation(rid, messages, file, line)
        elif src.kind == "instruction":
            prompt = _text(obj, src.prompt_field, file, line)
            response = _text(obj, src.response_field, file, line)
            system = _text(obj, src.system_field, file, line, optional=True) if src.system_field else None
            reasoning = _text(obj, src.reasoning_field, file, line, optional=True) if src.reasoning_field else None
            if not prompt.strip():
                raise DataError("empty prompt", path=file, line=line, field=src.prompt_field)
            if not response.strip():
                raise DataError("empty response (the assistant turn)", path=file, line=line, field=src.response_field)
            messages = [{"role": "system", "content": system}] if system else []
            answer = {"role": "assistant", "content": response}
            if reasoning:
                answer["reasoning_content"] = reasoning
            messages += [{"role": "user", "content": prompt}, answer]
            if touch_all:
                messages = _normalize_messages(messages, norm)
            yield Conversation(rid, check_conversation(messages, file, line, src.prompt_field), file, line)
        elif src.kind == "pairs":
            he = norm(_text(obj, src.he_field, file, line)).strip()
            en = _text(obj, src.en_field, file, line).strip()
            if not he:
                raise DataError("empty Hebrew side", path=file, line=line, field=src.he_field)
            if not en:
                raise DataError("empty English side", path=file, line=line, field=src.en_field)
            for cid, messages in pair_conversations(rid, he, en, src.directions, src.system_fraction):
                yield Conversation(cid, check_conversation(messages, file, line, src.he_field), file, line)
        else:
            raise ConfigError(f"{key}.kind must be messages, instruction or pairs, got {src.kind!r}")


def source_path(sft_data, name: str) -> str:
    """The absolute input path of an SFT source (relative paths are under `sft_data.raw_dir`)."""
    raw = str(sft_data.sources[name].path)
    split = ""
    if "::" in raw:
        raw, split = raw.split("::", 1)
        split = "::" + split
    p = Path(os.path.expanduser(raw))
    return str(p if p.is_absolute() else Path(str(sft_data.raw_dir)) / p) + split
