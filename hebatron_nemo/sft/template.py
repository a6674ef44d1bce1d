"""The Nemotron-3 family's ChatML-style chat template, and conversations tokenized for assistant-only loss.

A conversation is a list of messages ``{"role": ..., "content": ...}``; roles are ``system`` (first
message only), ``user`` and ``assistant``. An assistant message may also carry ``reasoning_content``
(the key transformers' chat templates and OpenAI-style servers use for a reasoning trace).

Rendering, message by message::

    <|im_start|>{role}\\n{body}<|im_end|>\\n

where ``body`` is the content for system and user turns, and for assistant turns

* with reasoning (``reasoning_content`` a non-empty string):
  ``<think>\\n{reasoning}\\n</think>\\n{content}``
* without (key absent, ``None`` or ``""``): ``<think></think>{content}``, the empty block glued to the
  answer with no newline between or after the markers.

So **every assistant turn opens with a think block**, as in the Nemotron-3 family: the model always
emits ``<think>`` first and decides between reasoning (``\\n``) and none (``</think>`` at once). Each
turn keeps its own reasoning: there is no history truncation (the family's inference template drops
the reasoning of turns before the last user message; SFT data here is single-turn, and callers who
want that behaviour remove ``reasoning_content`` from earlier turns themselves).

``add_generation_prompt`` appends ``<|im_start|>assistant\\n``; with ``enable_thinking=True`` also
``<think>\\n`` (reasoning forced on), with ``enable_thinking=False`` also ``<think></think>`` (off), and
with ``None`` (default) nothing more: the model picks, as it was trained to.

``CHAT_TEMPLATE`` is the same rule in Jinja for ``tokenizer.chat_template`` (transformers'
``apply_chat_template`` passes ``enable_thinking`` through as a template variable); it renders
byte-identically to ``render`` for every non-empty conversation ``render`` accepts (``render`` is
stricter: it also rejects unknown message keys and chat markers inside text). Assistant bodies and
their ``<|im_end|>`` sit in ``{% generation %}`` blocks, so transformers'
``return_assistant_tokens_mask=True`` (and TRL's ``assistant_only_loss``) yields the same mask as
``tokenize_conversation``.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence

from hebatron_nemo.errors import ConfigError, DataError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ROLES = ("system", "user", "assistant")
CHAT_MARKERS = (IM_START, IM_END, THINK_OPEN, THINK_CLOSE)
_KEYS = frozenset({"role", "content", "reasoning_content"})

# Whitespace-control note: transformers renders chat templates with trim_blocks and lstrip_blocks, and
# every tag here strips around itself ("{%-"/"-%}"), so only the quoted strings reach the output.
CHAT_TEMPLATE = r"""{%- for message in messages -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}
{{- raise_exception('message ' ~ loop.index0 ~ ': role must be system, user or assistant') -}}
{%- endif -%}
{%- if message['role'] == 'system' and not loop.first -%}
{{- raise_exception('message ' ~ loop.index0 ~ ': a system message may only come first') -}}
{%- endif -%}
{%- if message['content'] is not string -%}
{{- raise_exception('message ' ~ loop.index0 ~ ': content must be a string') -}}
{%- endif -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}
{%- if message['reasoning_content'] is defined and message['reasoning_content'] -%}
{{- '<think>\n' + message['reasoning_content'] + '\n</think>\n' -}}
{%- else -%}
{{- '<think></think>' -}}
{%- endif -%}
{{- message['content'] + '<|im_end|>' -}}
{%- endgeneration -%}
{{- '\n' -}}
{%- else -%}
{{- message['content'] + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and enable_thinking is not none -%}
{{- '<think>\n' if enable_thinking else '<think></think>' -}}
{%- endif -%}
{%- endif -%}"""


class ConversationTooLong(DataError):
    """A conversation does not fit ``max_length`` (untruncated), or keeps no loss token once truncated."""


def validate_messages(messages: Sequence[Mapping]) -> None:
    """Raises DataError (field ``messages[i].<key>``) unless `messages` is a conversation `render` accepts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise DataError(f"messages must be a list of dicts, got {type(messages).__name__}", field="messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise DataError(f"a message must be a dict, got {type(m).__name__}", field=where)
        extra = set(m) - _KEYS
        if extra:
            raise DataError(f"unknown keys {sorted(extra)} (allowed: {sorted(_KEYS)})", field=where)
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"role must be one of {ROLES}, got {role!r}", field=f"{where}.role")
        if role == "system" and i != 0:
            raise DataError("a system message may only come first", field=f"{where}.role")
        texts = [("content", m.get("content"))]
        reasoning = m.get("reasoning_content")
        if reasoning is not None:
            if role != "assistant":
                raise DataError("only assistant messages carry reasoning", field=f"{where}.reasoning_content")
            texts.append(("reasoning_content", reasoning))
        for key, text in texts:
            if not isinstance(text, str):
                raise DataError(f"must be a string, got {type(text).__name__}", field=f"{where}.{key}")
            for marker in CHAT_MARKERS:
                # A marker inside text would tokenize to the marker's id and forge turn structure.
                if marker in text:
                    raise DataError(f"contains the chat marker {marker!r}", field=f"{where}.{key}")


def _assistant_body(m: Mapping) -> list[tuple[str, bool]]:
    """The assistant body as (piece, is_marker) pairs, think block first."""
    reasoning = m.get("reasoning_content")
    if reasoning:
        return [(THINK_OPEN, True), ("\n" + reasoning + "\n", False), (THINK_CLOSE, True), ("\n" + m["content"], False)]
    return [(THINK_OPEN, True), (THINK_CLOSE, True), (m["content"], False)]


def _pieces(messages: Sequence[Mapping]) -> list[tuple[str, bool, int]]:
    """The rendered conversation as (piece, is_marker, loss) triples, in order.

    Texts are maximal runs between markers: every place where the loss mask changes sits next to a
    marker (``<|im_start|>assistant\\n`` is always followed by ``<think>``; the loss ends with
    ``<|im_end|>``), and tokenizers split added tokens out before pre-tokenizing, so encoding these
    texts one by one gives exactly the ids of the whole rendered string."""
    out: list[tuple[str, bool, int]] = []
    for m in messages:
        loss = int(m["role"] == "assistant")
        out += [(IM_START, True, 0), (m["role"] + "\n", False, 0)]
        if loss:
            out += [(p, marker, 1) for p, marker in _assistant_body(m)]
        else:
            out.append((m["content"], False, 0))
        out += [(IM_END, True, loss), ("\n", False, 0)]
    # Adjacent texts with the same loss are joined ("user\n" + content): encoded apart, a content that
    # starts with whitespace could split into other pre-tokens than in the whole rendered string.
    merged: list[tuple[str, bool, int]] = []
    for piece in out:
        if merged and not piece[1] and not merged[-1][1] and merged[-1][2] == piece[2]:
            merged[-1] = (merged[-1][0] + piece[0], False, piece[2])
        else:
            merged.append(piece)
    return merged


def _generation_prompt(enable_thinking: bool | None) -> str:
    tail = "" if enable_thinking is None else (THINK_OPEN + "\n" if enable_thinking else THINK_OPEN + THINK_CLOSE)
    return IM_START + "assistant\n" + tail


def render(messages: Sequence[Mapping], add_generation_prompt: bool = False,
           enable_thinking: bool | None = None) -> str:
    """The conversation as the model reads it (see the module docstring for the rule)."""
    validate_messages(messages)
    text = "".join(p for p, _, _ in _pieces(messages))
    return text + _generation_prompt(enable_thinking) if add_generation_prompt else text


class _ChatIds:
    """Marker ids of a tokenizer and the contents of all its added tokens, resolved once per tokenizer."""

    def __init__(self, tokenizer):
        tok = tokenizer.tok
        self.ids = {}
        for marker in CHAT_MARKERS:
            i = tok.token_to_id(marker)
            if i is None:
                raise ConfigError(f"tokenizer at {tokenizer.path!r} has no {marker!r} token "
                                  "(the chat template needs it)")
            self.ids[marker] = i
        added = sorted({t.content for t in tok.get_added_tokens_decoder().values()}, key=len, reverse=True)
        # one regex, not a loop: real tokenizers reserve hundreds of added tokens
        self.added = re.compile("|".join(map(re.escape, added))) if added else None


_CHAT_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _chat_ids(tokenizer) -> _ChatIds:
    cached = _CHAT_IDS.get(tokenizer)
    if cached is None:
        cached = _CHAT_IDS[tokenizer] = _ChatIds(tokenizer)
    return cached


def _encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of texts free of added tokens, as ``tokenizer.tok.encode(text, add_special_tokens=False)``.

    Uses the LocalTokenizer's exact memoized encoder where it has one (several times faster on
    byte-level BPEs; chat data repeats headers and phrasings), else HF's batch encoder."""
    from hebatron_nemo.data.tokenizer import _encode_batch

    memo = getattr(tokenizer, "_memo", None)
    if memo is not None:
        return memo.encode(texts)
    return [e.ids for e in _encode_batch(tokenizer.tok, texts)]


def encode_conversations(conversations: Sequence[Sequence[Mapping]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, loss_mask) of each whole conversation, untruncated; texts encoded in one batch.

    Markers become their single ids; the text between them is encoded without special tokens. Raises
    DataError when a text contains the content of any added token of the tokenizer (it would
    otherwise become that token's id)."""
    ids = _chat_ids(tokenizer)
    all_pieces = []
    for messages in conversations:
        validate_messages(messages)
        pieces = _pieces(messages)
        for i, m in enumerate(messages):
            for key in ("content", "reasoning_content"):
                text = m.get(key)
                hit = ids.added.search(text) if text and ids.added is not None else None
                if hit:
                    raise DataError(f"contains {hit.group()!r}, an added token of the tokenizer",
                                    field=f"messages[{i}].{key}")
        all_pieces.append(pieces)
    texts = list(dict.fromkeys(p for pieces in all_pieces for p, marker, _ in pieces if not marker and p))
    encoded = dict(zip(texts, _encode_texts(tokenizer, texts))) if texts else {}
    out = []
    for pieces in all_pieces:
        input_ids: list[int] = []
        mask: list[int] = []
        for p, marker, loss in pieces:
            piece_ids = [ids.ids[p]] if marker else encoded.get(p, [])
            input_ids += piece_ids
            mask += [loss] * len(piece_ids)
        out.append((input_ids, mask))
    return out


def fit_length(input_ids: list[int], loss_mask: list[int], max_length: int, truncate: bool,
               what: str = "conversation") -> tuple[list[int], list[int], bool]:
    """(input_ids, loss_mask, truncated) cut to `max_length` tokens when `truncate`, else unchanged.

    Raises ConversationTooLong when the conversation is longer and `truncate` is off, or when what is
    left holds no loss token (a row that trains nothing is never produced)."""
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    truncated = len(input_ids) > max_length
    if truncated:
        if not truncate:
            raise ConversationTooLong(f"{what} has {len(input_ids)} tokens, over max_length={max_length}")
        input_ids, loss_mask = input_ids[:max_length], loss_mask[:max_length]
    if not any(loss_mask):
        reason = f"no assistant token in its first {max_length} tokens" if truncated else "no assistant turn"
        raise ConversationTooLong(f"{what} would train on nothing: {reason}")
    return input_ids, loss_mask, truncated


def tokenize_conversation(messages: Sequence[Mapping], tokenizer, max_length: int,
                          truncate: bool = False) -> dict:
    """Token ids of a rendered conversation and its assistant-only loss mask.

    Returns ``{"input_ids": list[int], "loss_mask": list[int], "truncated": bool}``; ``input_ids``
    equals the tokenizer's encoding of ``render(messages)`` (no BOS, no EOD: the turn's ``<|im_end|>``
    is the end). ``loss_mask[t]`` is 1 exactly on the tokens of assistant bodies (think block, answer)
    and their closing ``<|im_end|>``; 0 on system and user turns, on ``<|im_start|>assistant\\n`` and on
    the newline after each ``<|im_end|>``. ``tokenizer`` is a ``LocalTokenizer``.

    Over `max_length`: with ``truncate`` the tail is cut (a cut assistant turn loses its
    ``<|im_end|>``), else ConversationTooLong; a result with no loss token is always
    ConversationTooLong (callers that skip such rows count them, see ``sft.data.tokenize_conversations``).
    """
    (input_ids, mask), = encode_conversations([messages], tokenizer)
    input_ids, mask, truncated = fit_length(input_ids, mask, max_length, truncate)
    return {"input_ids": input_ids, "loss_mask": mask, "truncated": truncated}
