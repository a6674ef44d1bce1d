"""Tokenizers from a local folder (HF `tokenizers`), their identity, and the demo's byte-level BPE."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from hebatron_nemo.errors import ConfigError

# Nemotron's special-token layout (pad 0, bos 1, eos 2), then the chat markers its template uses.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


class LocalTokenizer:
    """A `tokenizers.Tokenizer` loaded from `<path>/tokenizer.json`, with the EOD id resolved."""

    def __init__(self, path: str, eod_token: str = "</s>", add_bos: bool = False, append_eod: bool = True,
                 bos_token: str = "<s>"):
        from tokenizers import Tokenizer

        file = Path(path) / "tokenizer.json"
        if not file.exists():
            raise ConfigError(f"tokenizer.path: no tokenizer.json in {path!r} (a local folder; hub ids are not used)")
        self.path = str(path)
        self.tok = Tokenizer.from_file(str(file))
        self.eod = self.tok.token_to_id(eod_token)
        if self.eod is None:
            raise ConfigError(f"tokenizer.eod_token {eod_token!r} is not in the vocabulary of {file}")
        self.bos = self.tok.token_to_id(bos_token) if add_bos else None
        if add_bos and self.bos is None:
            raise ConfigError(f"tokenizer.add_bos is set but {bos_token!r} is not in the vocabulary of {file}")
        self.append_eod = append_eod
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self._sha = hashlib.sha256(file.read_bytes()).hexdigest()

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each document as Megatron's preprocessing writes them (optional BOS, EOD)."""
        encodings = self.tok.encode_batch(texts, add_special_tokens=False)
        out = []
        for enc in encodings:
            ids = enc.ids
            if self.bos is not None:
                ids = [self.bos] + ids
            if self.append_eod:
                ids = ids + [self.eod]
            out.append(ids)
        return out

    def identity(self) -> dict:
        return {"path": self.path, "tokenizer_json_sha256": self._sha, "vocab_size": self.vocab_size,
                "eod": self.eod, "bos": self.bos, "append_eod": self.append_eod}


def set_tokenizer_threads(workers: int) -> None:
    """HF tokenizers runs encode_batch on a Rayon pool sized at first use: set it before that."""
    os.environ["RAYON_NUM_THREADS"] = str(max(1, workers))
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"


def train_byte_level_bpe(texts: Iterable[str], out_dir: str, vocab_size: int, min_frequency: int,
                         fingerprint: dict) -> None:
    """Trains a byte-level BPE on `texts` and saves it (tokenizer.json + transformers files) atomically.

    `fingerprint` is stored as `train_fingerprint.json` so a changed corpus or setting retrains."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS[4:])
    fast.save_pretrained(str(tmp))
    (tmp / "train_fingerprint.json").write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)


def read_train_fingerprint(out_dir: str) -> dict | None:
    f = Path(out_dir) / "train_fingerprint.json"
    return json.loads(f.read_text()) if f.exists() else None


class MegatronTokenizerView:
    """What megatron-core's datasets read from a tokenizer (`GPTDatasetConfig.tokenizer`): the vocabulary
    size (token dtype), EOD (document boundaries), pad and eos, and an identity for cache names.

    A duck type rather than a `MegatronTokenizerBase` subclass: that class moved between megatron-core
    0.16 and 0.19, and the datasets only read these attributes."""

    def __init__(self, tokenizer: LocalTokenizer, pad_token: str = "<pad>"):
        self.vocab_size = tokenizer.vocab_size
        self.eod = tokenizer.eod
        self.eos = tokenizer.eod
        pad = tokenizer.tok.token_to_id(pad_token)
        if pad is None or pad == self.eod:
            raise ConfigError(f"tokenizer at {tokenizer.path!r} needs a pad token {pad_token!r} distinct from EOD")
        self.pad = pad
        self.unique_identifiers = {"class": "hebatron_nemo.LocalTokenizer",
                                   "tokenizer_json_sha256": tokenizer.identity()["tokenizer_json_sha256"]}
