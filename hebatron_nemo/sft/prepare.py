"""One prepared SFT dataset from an SFT registry: streamed, checked, deduplicated, decontaminated,
length-filtered with the real chat template, mixed to a configured total, written once.

    sources (messages | instruction | pairs) -> validate (file:line errors) -> normalize
        -> exact dedup (normalized conversation) -> decontaminate (eval files) -> tokenize with the
        chat template, drop conversations over max_length -> hold out validation (by id hash)
        -> per-source spool file -> per-source targets (weights x total, or sample counts)
        -> seeded selection and interleaving -> training.jsonl, validation.jsonl, manifest.json

The prepared folder (``sft_data.output_dir``) is what both backends read: the local backend trains on
``training.jsonl``; Megatron-Bridge's ``GPTSFTDatasetConfig`` reads the same files (``{"messages":
[...]}`` lines; the other keys, ``id``/``source``/``role``, become MB's per-sample metadata). It is
written aside (``<output_dir>.tmp-<pid>``) and renamed into place by one process (the prepare_sft
stage or job), never by training ranks.

Memory is bounded apart from a few numpy bytes per conversation; no Python object is kept per
conversation. The texts stream through in batches of ``BATCH`` and live on disk (per-source spool
files, then the output). What stays O(N):

* exact dedup: 8 bytes per distinct conversation (``KeySet``: 64-bit keys in a sorted uint64 array; 16
  during a merge), plus a fixed buffer of the newest 65,536 keys (~6 MB);
* each kept conversation: its spool offset and two token counts (``RECORD_BYTES`` = 16);
* each chosen conversation: its selection index and interleaving slot (``ORDER_BYTES`` = 10), plus one
  pass's int64 permutation (8 per kept conversation) while it is drawn.

Not all at once: the dedup keys are freed before the mixture is drawn, so the peak is about 32 bytes
per conversation over the fixed part (reading: 16 + 16 during a merge; mixing: 16 + 10, or 16 + 4 + 8
while a permutation is drawn): ~64 MB at 2,000,000 conversations.
The tokenizer's chunk memo (LocalTokenizer) is capped at ``MEMO_CHUNKS`` entries (~200 bytes each,
~13 MB) while preparing: a cache, cleared when full, not a record per conversation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from hebatron_nemo.config import SFT_FORMATS, SFT_KINDS, SFT_ROLES
from hebatron_nemo.utils.hashing import stable_hash
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.sft.sources import Conversation, iter_conversations, load_callable, source_path

BATCH = 256
CHUNK = 1 << 16  # lines interleaved per numpy lookup
DEDUP_BUFFER = 1 << 16  # newest dedup keys held in a Python set before they are merged into the sorted array
MEMO_CHUNKS = 1 << 16  # the tokenizer chunk memo's cap while preparing: ~200 bytes an entry, ~13 MB
RECORD_BYTES = 16  # per kept conversation: spool offset (8) and two token counts (4 + 4)
ORDER_BYTES = 10  # per chosen conversation: selection index (4), interleaving source id and cursor (2 + 4)
MANIFEST = "manifest.json"
TRAIN_FILE, VALID_FILE = "training.jsonl", "validation.jsonl"  # the names GPTSFTDatasetConfig reads
DROP_REASONS = ("duplicate", "contaminated", "too_long")
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ registry


def validate_sft_registry(sd, check_paths: bool = True) -> None:
    """Raises ConfigError naming ``sft_data.sources.<name>.<field>`` for the first invalid entry."""
    if not sd.sources:
        raise ConfigError(f"sft_data.sources is empty in SFT registry {sd.name!r}")
    weighted = []
    for name, src in sd.sources.items():
        key = f"sft_data.sources.{name}"
        if src.kind not in SFT_KINDS:
            raise ConfigError(f"{key}.kind must be one of {SFT_KINDS}, got {src.kind!r}")
        if src.role not in SFT_ROLES:
            raise ConfigError(f"{key}.role must be one of {SFT_ROLES}, got {src.role!r}")
        if src.format not in SFT_FORMATS:
            raise ConfigError(f"{key}.format must be one of {SFT_FORMATS}, got {src.format!r}")
        if (src.weight is None) == (src.samples is None):
            raise ConfigError(f"{key}: set exactly one of weight and samples")
        if src.weight is not None:
            if not src.weight > 0:
                raise ConfigError(f"{key}.weight must be > 0, got {src.weight}")
            weighted.append(name)
        elif src.samples < 0:
            raise ConfigError(f"{key}.samples must be >= 0, got {src.samples}")
        if src.kind == "pairs":
            bad = [d for d in src.directions if d not in ("he-en", "en-he")]
            if bad or not src.directions:
                raise ConfigError(f"{key}.directions must be a non-empty list of he-en/en-he, got {list(src.directions)}")
        if not 0.0 < src.keep_fraction <= 1.0:
            raise ConfigError(f"{key}.keep_fraction must be in (0, 1], got {src.keep_fraction}")
        if not 0.0 <= src.system_fraction <= 1.0:
            raise ConfigError(f"{key}.system_fraction must be in [0, 1], got {src.system_fraction}")
        if check_paths:
            path = source_path(sd, name).split("::")[0]
            import glob

            if not (glob.glob(path) if any(c in path for c in "*?[") else Path(path).exists()):
                raise ConfigError(f"{key}.path: {path!r} does not exist")
    if check_paths:
        from hebatron_nemo.data.decontam import check_inputs

        check_inputs(sd.decontamination, str(sd.raw_dir), where="sft_data.decontamination")
    fixed = sum(int(s.samples) for s in sd.sources.values() if s.samples is not None)
    if weighted and sd.total is None:
        raise ConfigError(f"sft_data.total must be set when sources have weights ({', '.join(weighted)})")
    if sd.total is not None:
        if sd.total < 1:
            raise ConfigError(f"sft_data.total must be >= 1, got {sd.total}")
        if fixed > sd.total or (not weighted and fixed != sd.total):
            raise ConfigError(f"sft_data.total={sd.total} but the sources' sample counts sum to {fixed}"
                              + ("" if weighted else " and no source has a weight"))
    if not 0.0 <= sd.valid_fraction < 0.5:
        raise ConfigError(f"sft_data.valid_fraction must be in [0, 0.5), got {sd.valid_fraction}")
    if sd.max_length < 2:
        raise ConfigError(f"sft_data.max_length must be >= 2, got {sd.max_length}")


def nominal_targets(sd) -> dict[str, int]:
    """Conversations asked of each source: `samples` as given, weights split the rest of `total`
    (largest remainder, so the targets sum to `total` exactly)."""
    from hebatron_nemo.curriculum.apportion import largest_remainder

    fixed = {n: int(s.samples) for n, s in sd.sources.items() if s.samples is not None}
    weights = {n: float(s.weight) for n, s in sd.sources.items() if s.weight is not None}
    out = dict(fixed)
    if weights:
        rest = int(sd.total) - sum(fixed.values())
        w = sum(weights.values())
        out.update(largest_remainder({n: v / w for n, v in weights.items()}, rest))
    return {n: out[n] for n in sd.sources}


def plan_lines(sd) -> list[str]:
    """The per-source plan (a dry run prints it): kind, role, format, path, weight/samples, target."""
    targets = nominal_targets(sd)
    lines = [f"SFT registry {sd.name!r}: {len(sd.sources)} sources -> {sum(targets.values()):,} training "
             f"conversations (seed {sd.seed}, max_length {sd.max_length}, dedup {'on' if sd.dedup else 'off'}, "
             f"decontamination {'on' if _decon_enabled(sd) else 'off'}) -> {sd.output_dir}"]
    for name, src in sd.sources.items():
        ask = f"weight {src.weight}" if src.weight is not None else f"samples {src.samples}"
        norm = "normalize" if src.normalize is not None else "raw"
        extra = f", transform {src.transform}" if src.transform else ""
        lines.append(f"  {name:<22} {src.kind:<11} {src.role:<6} {src.format:<7} {ask:<14} -> {targets[name]:>10,}  "
                     f"[{norm}{extra}] {source_path(sd, name)}")
    return lines


# ------------------------------------------------------------------------------------------ fingerprint


def _decon_enabled(sd) -> bool:
    dc = sd.decontamination
    return bool(dc.enabled and (dc.eval_files or dc.eval_tasks))


def _files_of(path: str, fmt: str) -> list[Path]:
    from hebatron_nemo.data.readers import resolve_files

    if fmt == "hf_disk":
        root = Path(path.split("::")[0])
        return sorted(f for f in root.rglob("*") if f.is_file())
    return resolve_files(path, fmt)


def _stat_rows(files) -> list:
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def tokenizer_identity(tokenizer) -> dict:
    """What a prepared dataset's token counts depend on: the tokenizer file and the chat template."""
    from hebatron_nemo.sft.template import CHAT_TEMPLATE

    return {"tokenizer_json_sha256": tokenizer.identity()["tokenizer_json_sha256"],
            "chat_template_sha256": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()}


def inputs_fingerprint(cfg, tokenizer) -> str:
    """A hash of everything the prepared dataset depends on: the registry's settings (not its output
    folder), the tokenizer and template, and the size/mtime of every input file, eval file and eval task file."""
    from hebatron_nemo.data.decontam import task_files

    sd = cfg.sft_data
    conf = OmegaConf.to_container(sd, resolve=True)
    conf.pop("output_dir", None)
    files = {n: _stat_rows(_files_of(source_path(sd, n), s.format)) for n, s in sd.sources.items()}
    evals = [_stat_rows([Path(_resolve(f["path"], sd))]) for f in conf["decontamination"]["eval_files"]]
    evals.append(_stat_rows([tf.path for tf in task_files(sd.decontamination, "sft_data.decontamination")]))
    return stable_hash({"version": FORMAT_VERSION, "config": conf, "tokenizer": tokenizer_identity(tokenizer),
                        "files": files, "eval_files": evals})


def _resolve(path: str, sd) -> str:
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else Path(str(sd.raw_dir)) / p)


def build_decontaminator(sd):
    """The pretraining decontaminator (word n-grams of the eval task files and eval files) with this
    registry's settings (hebatron_nemo.data.decontam)."""
    from hebatron_nemo.data import decontam

    return decontam.build_decontaminator(sd.decontamination, str(sd.raw_dir), where="sft_data.decontamination")


def conversation_text(messages: list[dict]) -> str:
    """All text of a conversation (contents and reasoning), what decontamination compares."""
    parts = []
    for m in messages:
        parts.append(m["content"])
        if m.get("reasoning_content"):
            parts.append(m["reasoning_content"])
    return "\n".join(parts)


def conversation_key(messages: list[dict]) -> int:
    """64-bit key of exact dedup: a hash of the normalized conversation (roles, texts, reasoning) as
    canonical JSON. Two different conversations share a key with probability 2^-64: among n distinct
    ones, some pair does with probability about n^2 / 2^65 (1e-7 at 2M, 1e-5 at 20M)."""
    canon = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(canon.encode("utf-8"), digest_size=8).digest(), "little")


class KeySet:
    """The dedup keys seen so far, 8 bytes each: a sorted numpy uint64 array, plus the newest (at most
    `buffer`) in a Python set that is merged into the array when it fills.

    Memory: 8 bytes per distinct key, 16 during a merge (the old array and the new one), plus the
    set's fixed cap (~6 MB at the default 65,536: ~90 bytes per entry in CPython). A merge costs one
    copy of the array: 2M keys at the default buffer are 31 merges, each copying at most 16 MB."""

    def __init__(self, buffer: int = 1 << 16):
        self.keys = np.zeros(0, np.uint64)
        self.recent: set[int] = set()
        self.buffer = buffer

    def __len__(self) -> int:
        return len(self.keys) + len(self.recent)

    def add(self, key: int) -> bool:
        """Adds `key`; False when it was already there (a duplicate)."""
        if key in self.recent:
            return False
        keys = self.keys
        if len(keys):
            k = np.uint64(key)
            i = int(keys.searchsorted(k))
            if i < len(keys) and keys[i] == k:
                return False
        self.recent.add(key)
        if len(self.recent) >= self.buffer:
            self._merge()
        return True

    def _merge(self) -> None:
        new = np.fromiter(self.recent, np.uint64, count=len(self.recent))
        new.sort()
        self.keys = np.insert(self.keys, self.keys.searchsorted(new), new)
        self.recent.clear()

    def nbytes(self) -> int:
        """Bytes held in numpy (the set's entries are not counted)."""
        return int(self.keys.nbytes)


def _unit(*parts) -> float:
    key = "\x1f".join(map(str, parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2.0**64


# ------------------------------------------------------------------------------------------ preparation


class _Spool:
    """One source's kept conversations on disk (JSON lines), with their byte offsets and token counts:
    16 bytes per conversation (`array`, no Python object each)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = open(path, "wb")
        self.offsets = array("q")  # start of each line; close() appends the end of the last
        self.tokens = array("I")
        self.loss = array("I")
        self._end = 0

    def add(self, line: bytes, tokens: int, loss: int) -> None:
        self.offsets.append(self._end)
        self.fh.write(line)
        self._end += len(line)
        self.tokens.append(tokens)
        self.loss.append(loss)

    def close(self) -> None:
        self.fh.close()
        self.offsets.append(self._end)

    def bounds(self) -> np.ndarray:
        """Byte offsets of the lines and the file's end (len + 1 values; after close)."""
        return np.frombuffer(self.offsets, np.int64)

    def __len__(self) -> int:
        return len(self.tokens)


def _record(conv: Conversation, name: str, role: str) -> bytes:
    return (json.dumps({"messages": conv.messages, "id": conv.id, "source": name, "role": role},
                       ensure_ascii=False) + "\n").encode("utf-8")


def _selection(n: int, target: int, seed: int, name: str, allow_repeat: bool) -> tuple[np.ndarray, int]:
    """(spool indices in training order, passes): whole seeded permutations of the source for each full
    pass, then the first `target mod n` of one more; so every conversation is used once before any twice.

    The indices are uint32 (4 bytes per chosen conversation); one pass's int64 permutation (8 bytes per
    kept conversation) exists at a time."""
    if target > n and not allow_repeat:
        raise ConfigError(f"sft_data.sources.{name}: asked for {target:,} conversations but {n:,} are left after "
                          "validation, dedup, decontamination and the length filter. Fix: lower its weight/samples "
                          "or sft_data.total, add data, or set sft_data.allow_repeat=true")
    if target and not n:
        raise ConfigError(f"sft_data.sources.{name}: asked for {target:,} conversations but none are left")
    seed_key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
    rng = np.random.default_rng([seed, seed_key])
    full, rest = divmod(target, n) if n else (0, 0)
    if n >= 2**32:
        raise ConfigError(f"sft_data.sources.{name}: {n:,} conversations exceed the uint32 index space")
    order = np.empty(target, np.uint32)
    for p in range(full):
        order[p * n:(p + 1) * n] = rng.permutation(n)
    if rest:
        order[full * n:] = rng.permutation(n)[:rest]
    return order, full + (1 if rest else 0)


def prepare_sft(cfg, tokenizer=None, log=print, overwrite: bool = False) -> dict:
    """Writes the prepared SFT dataset of ``cfg.sft_data`` (see the module docstring); returns its manifest.

    A folder whose manifest matches the inputs' fingerprint is kept as it is (unless `overwrite`)."""
    from hebatron_nemo.data.tokenizer import LocalTokenizer
    from hebatron_nemo.sft.template import encode_conversations

    sd = cfg.sft_data
    if sd.derive:
        load_callable(sd.derive, "sft_data.derive")(cfg, log)
    validate_sft_registry(sd)
    tok = tokenizer or LocalTokenizer(str(cfg.tokenizer.path))
    fingerprint = inputs_fingerprint(cfg, tok)
    out = Path(str(sd.output_dir))
    existing = read_json(out / MANIFEST)
    if existing and existing.get("fingerprint") == fingerprint and not overwrite:
        log(f"prepared SFT data {out} matches its inputs ({fingerprint}); kept")
        return existing
    targets = nominal_targets(sd)
    t0 = time.time()
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "spool").mkdir(parents=True)
    # settings read once: an OmegaConf attribute read per conversation costs more than its tokenization
    seed, max_length, dedup = int(sd.seed), int(sd.max_length), bool(sd.dedup)
    valid_fraction, max_valid = float(sd.valid_fraction), int(sd.max_valid)
    memo = getattr(tok, "_memo", None)
    memo_cap = memo.max_chunks if memo is not None else None
    try:
        if memo is not None:
            memo.max_chunks = min(memo_cap, MEMO_CHUNKS)
        decon = build_decontaminator(sd)
        seen = KeySet(DEDUP_BUFFER)
        spools: dict[str, _Spool] = {}
        sources: dict[str, dict] = {}
        valid_spools: dict[str, _Spool] = {}
        for name, src in sd.sources.items():
            role = str(src.role)
            stats = {"kind": src.kind, "role": role, "read": 0, "dropped": dict.fromkeys(DROP_REASONS, 0),
                     "validation": 0, "path": source_path(sd, name)}
            dropped = stats["dropped"]
            spool = spools[name] = _Spool(tmp / "spool" / f"{len(spools):04d}.jsonl")
            vspool = valid_spools[name] = _Spool(tmp / "spool" / f"valid-{len(valid_spools):04d}.jsonl")
            batch: list[Conversation] = []

            def flush(batch=batch, name=name, role=role, stats=stats, spool=spool, vspool=vspool):
                encoded = encode_conversations([c.messages for c in batch], tok)
                for conv, (ids, mask) in zip(batch, encoded):
                    if len(ids) > max_length:
                        stats["dropped"]["too_long"] += 1
                        continue
                    line = _record(conv, name, role)
                    held = _unit(seed, "valid", name, conv.id) < valid_fraction and len(vspool) < max_valid
                    if held:
                        vspool.add(line, len(ids), sum(mask))
                        stats["validation"] += 1
                    else:
                        spool.add(line, len(ids), sum(mask))
                batch.clear()

            for conv in iter_conversations(src, stats["path"], f"sft_data.sources.{name}"):
                stats["read"] += 1
                if dedup and not seen.add(conversation_key(conv.messages)):
                    dropped["duplicate"] += 1
                    continue
                if decon is not None and decon.is_contaminated(conversation_text(conv.messages)):
                    dropped["contaminated"] += 1
                    continue
                batch.append(conv)
                if len(batch) >= BATCH:
                    flush()
            if batch:
                flush()
            spool.close()
            vspool.close()
            stats["available"] = len(spool)
            sources[name] = stats
            log(f"  {name}: read {stats['read']:,}, kept {len(spool):,} (+{stats['validation']:,} validation), "
                f"dropped {stats['dropped']}")
        dedup_keys, dedup_bytes = len(seen), seen.nbytes()
        del seen

        names = list(sd.sources)
        orders = {}
        for name in names:
            orders[name], sources[name]["passes"] = _selection(len(spools[name]), targets[name], sd.seed, name,
                                                               bool(sd.allow_repeat))
        counts = np.array([len(orders[n]) for n in names], np.int64)
        _interleave(tmp / TRAIN_FILE, [spools[n] for n in names], [orders[n] for n in names])
        # validation: every held-out conversation once, sources interleaved (an eval of its first rows
        # sees every source)
        _interleave(tmp / VALID_FILE, [valid_spools[n] for n in names],
                    [np.arange(len(valid_spools[n])) for n in names])

        roles: dict[str, dict] = {}
        for name in names:
            order, spool, st = orders[name], spools[name], sources[name]
            st.update({"target": targets[name], "samples": int(len(order)),
                       "tokens": _chosen_sum(spool.tokens, order), "loss_tokens": _chosen_sum(spool.loss, order)})
            r = roles.setdefault(st["role"], {"samples": 0, "tokens": 0, "loss_tokens": 0})
            for k in ("samples", "tokens", "loss_tokens"):
                r[k] += st[k]
        shutil.rmtree(tmp / "spool")
        total_loss = sum(r["loss_tokens"] for r in roles.values())
        manifest = {
            "format_version": FORMAT_VERSION, "registry": sd.name, "fingerprint": fingerprint,
            "tokenizer": tokenizer_identity(tok), "max_length": int(sd.max_length), "seed": int(sd.seed),
            "files": {"train": TRAIN_FILE, "validation": VALID_FILE},
            "samples": int(counts.sum()), "validation_samples": int(sum(len(v) for v in valid_spools.values())),
            "tokens": sum(r["tokens"] for r in roles.values()), "loss_tokens": total_loss,
            "roles": roles,
            "anchor_share_of_loss_tokens": roles.get("anchor", {}).get("loss_tokens", 0) / total_loss if total_loss else 0.0,
            "sources": sources,
            "dropped": {r: sum(s["dropped"][r] for s in sources.values()) for r in DROP_REASONS},
            "decontamination": decon.identity() if decon is not None else None,
            "seconds": round(time.time() - t0, 2),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if memo is not None:
            memo.max_chunks = memo_cap
    log(f"  memory records: dedup {dedup_keys:,} keys in {dedup_bytes / 2**20:.1f} MiB (8 bytes each); "
        f"{RECORD_BYTES} bytes per kept and {ORDER_BYTES} per chosen conversation; tokenizer memo capped at "
        f"{MEMO_CHUNKS:,} entries")
    log(f"prepared SFT data: {manifest['samples']:,} training + {manifest['validation_samples']:,} validation "
        f"conversations, {manifest['tokens']:,} tokens ({manifest['loss_tokens']:,} loss) in {manifest['seconds']} s "
        f"-> {out}")
    return manifest


def _chosen_sum(values: array, order: np.ndarray, chunk: int = CHUNK) -> int:
    """sum(values[order]) without an 8-byte temporary per chosen conversation."""
    v = np.frombuffer(values, np.uint32) if len(values) else np.zeros(0, np.uint32)
    return int(sum(int(v[order[a:a + chunk]].sum(dtype=np.int64)) for a in range(0, len(order), chunk)))


def _interleave(path: Path, spools: list[_Spool], orders: list[np.ndarray], chunk: int = CHUNK) -> None:
    """Writes the spools' lines at `orders` (spool indices), the sources interleaved by chairman_order
    on their counts (every prefix holds each source's share within one conversation).

    The interleaving is two numpy arrays (6 bytes per line); lines are looked up `chunk` at a time and
    read with one pread each (no Python object per line beyond the chunk)."""
    from hebatron_nemo.curriculum.apportion import chairman_order

    ids, cursor = chairman_order(np.array([len(o) for o in orders], np.int64))
    bounds = [sp.bounds() for sp in spools]
    fds = []
    try:
        for sp in spools:
            fds.append(os.open(sp.path, os.O_RDONLY))
        with open(path, "wb") as f:
            for a in range(0, len(ids), chunk):
                src, cur = ids[a:a + chunk], cursor[a:a + chunk]
                start = np.empty(len(src), np.int64)
                size = np.empty(len(src), np.int64)
                for s in np.unique(src).tolist():
                    at = src == s
                    row = orders[s][cur[at]].astype(np.int64)
                    start[at] = bounds[s][row]
                    size[at] = bounds[s][row + 1] - start[at]
                pread, write = os.pread, f.write
                for s, n, at in zip(src.tolist(), size.tolist(), start.tolist()):
                    write(pread(fds[s], n, at))
    finally:
        for fd in fds:
            os.close(fd)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Puts the finished folder in place: the old one (if any) is renamed away first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(out.name + f".old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading


def open_prepared(cfg, tokenizer=None) -> tuple[Path, dict]:
    """(folder, manifest) of the prepared SFT dataset of ``cfg.sft_data``; refuses clearly when it is
    missing, incomplete, or was prepared with another tokenizer/template or max_length."""
    sd = cfg.sft_data
    out = Path(str(sd.output_dir))
    manifest = read_json(out / MANIFEST)
    fix = f"Fix: run `python recipes/prepare_sft.py sft_data={sd.name}` with the same tokenizer and overrides first"
    if manifest is None:
        raise ConfigError(f"no prepared SFT dataset at {out} (no {MANIFEST}). {fix} (one job; training ranks only read it)")
    for f in (TRAIN_FILE, VALID_FILE):
        if not (out / f).is_file():
            raise ConfigError(f"prepared SFT dataset {out} has no {f}. {fix}")
    if tokenizer is not None and manifest.get("tokenizer") != tokenizer_identity(tokenizer):
        raise ConfigError(f"prepared SFT dataset {out} was tokenized with another tokenizer or chat template "
                          f"({manifest.get('tokenizer')}). {fix}")
    if int(manifest.get("max_length", -1)) != int(sd.max_length):
        raise ConfigError(f"prepared SFT dataset {out} was filtered at max_length={manifest.get('max_length')}, "
                          f"the run asks {sd.max_length}. {fix}")
    return out, manifest


def iter_prepared(path: str | Path) -> Iterator[dict]:
    """The records of a prepared JSONL file (``messages``, ``id``, ``source``, ``role``), in order."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except ValueError as e:
                raise DataError(f"malformed JSON: {e}", path=str(path), line=i) from None


def dry_run(cfg, log: Callable = print) -> list[str]:
    """Validates the registry and prints the per-source plan; then refuses (naming them) if input paths
    are missing. A registry with a `derive` hook is checked after the hook would run, so its derived
    paths are not required here."""
    sd = cfg.sft_data
    validate_sft_registry(sd, check_paths=False)
    lines = plan_lines(sd)
    for line in lines:
        log(line)
    if not sd.derive:
        validate_sft_registry(sd, check_paths=True)
    return lines
