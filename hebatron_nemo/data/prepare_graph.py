"""The prepare stage graph on datatrove: raw corpora -> Megatron datasets, in tasks that scale out.

Five stages, each a datatrove executor over the same numbering of tasks (a task is one shard of one
source: task `s * T + j` reads the documents of source `s` whose ordinal is `j mod T`, with the
registry's tokenized sources in order and `T = prepare.tasks`):

1. **clean** (S x T tasks): read (the project's readers: bad input fails with file:line:field) ->
   normalize -> filter -> decontaminate -> drop exact duplicates seen earlier in the task -> draw the
   hold-out split -> difficulty signals; writes the kept documents (`clean/<task>.parquet`) and their
   MinHash signatures (datatrove's `MinhashDedupSignature`, one file per bucket and task).
2. **buckets** (num_buckets x tasks_per_bucket tasks): datatrove's `MinhashDedupBuckets`: the
   duplicate pairs of one bucket by a streaming merge of the sorted signature files.
3. **cluster** (1 task): datatrove's `MinhashDedupCluster`: pairs -> clusters -> one removal list per
   task. It holds the duplicate pairs' documents only, not the corpus.
4. **tokenize** (S x T tasks): the task's clean documents -> datatrove's `MinhashDedupFilter` -> the
   project's exact tokenizer (`tokenize_stage.TokenizeToIndexed`) -> `<split>/<task>.bin/.idx` and a
   table of the documents and their signals.
5. **merge** (S tasks): per source, the tasks' files concatenated with megatron-core's
   `IndexedDatasetBuilder.add_index`, the signal tables, `hashes.npy`, and `manifest.json` last.

Every stage's tasks are tracked by datatrove (`<work>/logs/<stage>/completions/`): a rerun, or a
resubmission on Slurm, runs only the tasks that did not finish. The work folder is named by a
fingerprint of every input (files, settings, tokenizer), so changed inputs never reuse stale work.
Locally (`LocalPipelineExecutor`) `workers` tasks run at once; with `cluster=<profile>` each stage is a
Slurm job array (`SlurmPipelineExecutor`), each after the previous one (afterok).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hebatron_nemo.data.prepare import SPLITS
from hebatron_nemo.errors import ConfigError

STAGES = ("clean", "buckets", "cluster", "tokenize", "merge")


@dataclass(frozen=True)
class TaskLayout:
    """Which task reads what: `sources` in registry order, `tasks` shards each."""

    sources: tuple[str, ...]
    tasks: int

    @property
    def world_size(self) -> int:
        return len(self.sources) * self.tasks

    def of(self, rank: int) -> tuple[str, int]:
        """The (source, shard) of a task."""
        s, j = divmod(rank, self.tasks)
        return self.sources[s], j

    def ranks(self, source: str) -> range:
        s = self.sources.index(source)
        return range(s * self.tasks, (s + 1) * self.tasks)


def _signed(h: int) -> int:
    """A uint64 hash as int64 (parquet integers are signed)."""
    return h - (1 << 64) if h >= 1 << 63 else h


# ---------------------------------------------------------------------------------------------
# Pipeline steps (datatrove PipelineSteps, pickled to the tasks)

def make_steps():
    """The project's datatrove steps (defined on first use, so importing this module is cheap)."""
    global ReadSource, CleanDocuments, ReadClean, CountedMinhashFilter, DocumentTable, WhitespaceWords
    global BoundedMinhashSignature
    if "ReadSource" in globals():
        return
    import numpy as np
    from datatrove.data import Document
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.dedup.minhash import MinhashDedupFilter, MinhashDedupSignature
    from datatrove.utils.word_tokenizers import WordTokenizer

    class _WhitespaceWords(WordTokenizer):
        """Words for MinHash shingles: whitespace-separated (after datatrove's simplify_text), for any
        language (datatrove's defaults load spaCy per language, which this project does not install)."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return text.splitlines()

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            import re

            return [m.span() for m in re.finditer(r"\S+", text)]

    class _ReadSource(PipelineStep):
        """Task `rank`'s documents: its source's documents whose ordinal is `shard mod tasks`."""

        name = "read source"
        type = "📖 - READER"

        def __init__(self, layout: TaskLayout, rules: dict):
            super().__init__()
            self.layout, self.rules = layout, rules

        def run(self, data, rank: int = 0, world_size: int = 1):
            from hebatron_nemo.data.readers import iter_documents

            name, shard = self.layout.of(rank)
            r = self.rules[name]
            for doc in iter_documents(r.path, r.format, r.text_field, r.id_field, shard=(shard, self.layout.tasks)):
                self.stat_update("documents")
                yield Document(text=doc.text, id=doc.doc_id, metadata={"ordinal": doc.ordinal, "source": name})

    class _CleanDocuments(PipelineStep):
        """Normalize, filter, decontaminate, drop exact duplicates within the task, draw the split and
        compute the signals; the drop reasons go to `<report_dir>/<rank>.json` (FilterReport)."""

        name = "clean"
        type = "🔻 - FILTER"

        def __init__(self, rules: dict, decontaminator, exact_dedup: bool, report_dir: str, signals: dict,
                     batch_docs: int = 256):
            super().__init__()
            self.rules, self.decontaminator, self.exact_dedup = rules, decontaminator, exact_dedup
            self.report_dir, self.signals, self.batch_docs = report_dir, signals, batch_docs

        def run(self, data, rank: int = 0, world_size: int = 1):
            from hebatron_nemo.data.filters import FilterReport, text_hash
            from hebatron_nemo.data.normalize import count_words
            from hebatron_nemo.data.prepare import holdout_split
            from hebatron_nemo.data.signals import ReferencePerplexity, compression_ratio

            report = FilterReport()
            seen: set[int] = set()
            ppl = None
            if self.signals.get("reference_model"):
                s = self.signals
                ppl = ReferencePerplexity(s["reference_model"], s["reference_max_tokens"], s["reference_batch_size"])
            decon = self.decontaminator
            batch: list = []

            def flush():
                perplexities = ppl([d.text for d in batch]) if ppl else [float("nan")] * len(batch)
                for d, p in zip(batch, perplexities):
                    d.metadata["perplexity"] = float(p)
                    yield d
                batch.clear()

            for doc in data:
                r = self.rules[doc.metadata["source"]]
                raw_chars = len(doc.text)
                text = r.normalizer(doc.text)
                report.seen_docs += 1
                report.seen_chars += raw_chars
                reason = r.doc_filter.reason(text)
                if reason is None and decon is not None and decon.is_contaminated(text):
                    reason = "decontaminated"
                h = text_hash(text) if reason is None else 0
                if reason is None and self.exact_dedup:
                    if h in seen:
                        reason = "exact_dup_in_source"
                    seen.add(h)
                if reason is not None:
                    report.remove(reason, len(text))
                    self.stat_update(reason)
                    continue
                n_words = count_words(text)
                doc.text = text
                doc.metadata.update(hash=_signed(h), split=holdout_split(doc.id, r.holdout), n_chars=len(text),
                                    n_words=n_words, compression_ratio=compression_ratio(text))
                self.stat_update("kept")
                batch.append(doc)
                if len(batch) >= self.batch_docs:
                    yield from flush()
            if batch:
                yield from flush()
            from hebatron_nemo.utils.io import write_json_atomic

            write_json_atomic(Path(self.report_dir) / f"{rank:05d}.json", report.to_dict())

    class _ReadClean(PipelineStep):
        """Task `rank`'s clean documents (`<folder>/<rank>.parquet`), in the order the clean stage wrote
        them (the MinHash removal lists count documents in that order). A task whose documents were all
        dropped wrote no file: it reads nothing."""

        name = "read clean"
        type = "📖 - READER"

        def __init__(self, folder: str, batch_rows: int = 2048):
            super().__init__()
            self.folder, self.batch_rows = folder, batch_rows

        def run(self, data, rank: int = 0, world_size: int = 1):
            import pyarrow.parquet as pq

            path = Path(self.folder) / f"{rank:05d}.parquet"
            if not path.exists():
                return
            for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_rows):
                cols = batch.to_pydict()
                meta_cols = [c for c in cols if c not in ("text", "id")]
                for i, (text, doc_id) in enumerate(zip(cols["text"], cols["id"])):
                    yield Document(text=text, id=doc_id, metadata={c: cols[c][i] for c in meta_cols})

    class _CountedMinhashFilter(MinhashDedupFilter):
        """datatrove's `MinhashDedupFilter`, counting what it drops into `<report_dir>/<rank>.json`."""

        def __init__(self, input_folder: str, report_dir: str):
            super().__init__(input_folder)
            self.report_dir = report_dir

        def run(self, data, rank: int = 0, world_size: int = 1):
            from hebatron_nemo.utils.io import write_json_atomic

            tally = {"in_docs": 0, "in_chars": 0, "out_docs": 0, "out_chars": 0}

            def counted(docs):
                for d in docs:
                    tally["in_docs"] += 1
                    tally["in_chars"] += len(d.text)
                    yield d

            for doc in super().run(counted(data), rank, world_size):
                tally["out_docs"] += 1
                tally["out_chars"] += len(doc.text)
                yield doc
            write_json_atomic(Path(self.report_dir) / f"{rank:05d}.json",
                              {"docs": tally["in_docs"] - tally["out_docs"],
                               "chars": tally["in_chars"] - tally["out_chars"]})

    class _DocumentTable(PipelineStep):
        """The per-document table of each split (`<folder>/<split>/<rank>.docs.parquet`), in the order
        of the task's `.bin`: ordinal, id, hash and the signals (the merge stage concatenates them)."""

        name = "document table"
        type = "💽 - WRITER"

        def __init__(self, folder: str):
            super().__init__()
            self.folder = folder

        def run(self, data, rank: int = 0, world_size: int = 1):
            from hebatron_nemo.data.prepare import DOC_COLUMNS, _write_table

            rows = {s: {c: [] for c in DOC_COLUMNS} for s in SPLITS}
            for doc in data:
                m = doc.metadata
                r = rows[m["split"]]
                n_tokens = int(m["n_tokens"])
                r["ordinal"].append(m["ordinal"])
                r["doc_id"].append(doc.id)
                r["hash"].append(m["hash"] % (1 << 64))
                r["n_chars"].append(m["n_chars"])
                r["n_words"].append(m["n_words"])
                r["n_tokens"].append(n_tokens)
                r["compression_ratio"].append(m["compression_ratio"])
                r["tokens_per_word"].append(n_tokens / max(1, m["n_words"]))
                r["perplexity"].append(m["perplexity"])
                yield doc
            for s in SPLITS:
                out = Path(self.folder) / s
                out.mkdir(parents=True, exist_ok=True)
                _write_table(out / f"{rank:05d}.docs.parquet", rows[s])

    class _BoundedMinhashSignature(MinhashDedupSignature):
        """datatrove's `MinhashDedupSignature` with the signature taken over blocks of shingles: the same
        minimum, but memory bounded by the block (datatrove's one-shot version materializes shingles x
        hashes x 8 bytes: 0.7 GB for a million-word document)."""

        block = 4096

        def get_signature(self, shingles):
            a, b = self.parameters
            prime = np.uint64((1 << 61) - 1)
            mins = None
            for i in range(0, len(shingles), self.block):
                phv = (shingles[i:i + self.block] * a + b) % prime
                if self.config.hash_config.precision == 32:
                    phv = np.bitwise_and(phv, self.config.hash_config.max)
                m = np.min(phv, axis=0)
                mins = m if mins is None else np.minimum(mins, m)
            return [x.tolist() for x in np.split(mins.astype(self.config.hash_config.np_dtype), self.config.num_buckets)]

    globals().update(ReadSource=_ReadSource, BoundedMinhashSignature=_BoundedMinhashSignature, CleanDocuments=_CleanDocuments, ReadClean=_ReadClean,
                     CountedMinhashFilter=_CountedMinhashFilter, DocumentTable=_DocumentTable,
                     WhitespaceWords=_WhitespaceWords)


# ---------------------------------------------------------------------------------------------
# The graph


@dataclass
class Graph:
    """The stage graph of one prepare run: its work folder, task layout and pipelines."""

    work: Path
    layout: TaskLayout
    pipelines: dict  # stage -> (list of steps, tasks)
    merge: Callable  # (source) -> manifest


def clean_schema():
    """The clean stage's parquet schema (explicit: a task's first document must not decide the types)."""
    import pyarrow as pa

    return pa.schema([("text", pa.string()), ("id", pa.string()), ("ordinal", pa.int64()), ("source", pa.string()),
                      ("hash", pa.int64()), ("split", pa.string()), ("n_chars", pa.int64()), ("n_words", pa.int64()),
                      ("compression_ratio", pa.float64()), ("perplexity", pa.float64())])


def _flat_adapter(self, doc) -> dict:
    """A Document as one flat row of `clean_schema()`."""
    return {"text": doc.text, "id": doc.id, **doc.metadata}


def build_graph(work: Path, layout: TaskLayout, rules: dict, decontaminator, exact_dedup: bool, near_dedup,
                signals: dict, tokenizer_args: dict, batch_docs: int, merge: Callable) -> Graph:
    """The five stages' pipelines (steps and task counts) for `layout`, writing under `work`."""
    make_steps()
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    from hebatron_nemo.data.tokenize_stage import TokenizeToIndexed

    w = lambda *p: str(work.joinpath(*p))  # noqa: E731
    mh = None
    # sha1 shingle hashes: datatrove's default, xxhash, passes str where xxhash 4 wants bytes
    if near_dedup.enabled:
        mh = MinhashConfig(n_grams=int(near_dedup.n_grams), num_buckets=int(near_dedup.num_buckets),
                           hashes_per_bucket=int(near_dedup.hashes_per_bucket), seed=int(near_dedup.seed),
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    clean = [ReadSource(layout, rules),
             CleanDocuments(rules, decontaminator, exact_dedup, w("reports", "clean"), signals),
             ParquetWriter(w("clean"), output_filename="${rank}.parquet", adapter=_flat_adapter, schema=clean_schema(),
                           max_file_size=-1, use_content_defined_chunking=False, write_page_index=False)]
    if mh:
        clean.append(BoundedMinhashSignature(w("minhash", "signatures"), config=mh, language=WhitespaceWords("xx")))
    tokenize = [ReadClean(w("clean"))]
    if mh:
        tokenize.append(CountedMinhashFilter(w("minhash", "remove"), w("reports", "near_dup")))
    tokenize += [TokenizeToIndexed(output_folder=w("tokens"), batch_docs=batch_docs, **tokenizer_args),
                 DocumentTable(w("tokens"))]
    pipelines = {"clean": (clean, layout.world_size), "tokenize": (tokenize, layout.world_size)}
    if mh:
        per = int(near_dedup.tasks_per_bucket)
        pipelines["buckets"] = ([MinhashDedupBuckets(w("minhash", "signatures"), w("minhash", "buckets"), config=mh)],
                                mh.num_buckets * per)
        pipelines["cluster"] = ([MinhashDedupCluster(w("minhash", "buckets"), w("minhash", "remove"), config=mh)], 1)

    def merge_step(data, rank: int = 0, world_size: int = 1):
        merge(layout.sources[rank])
        return iter(())

    pipelines["merge"] = ([merge_step], len(layout.sources))
    return Graph(work=work, layout=layout, pipelines={s: pipelines[s] for s in STAGES if s in pipelines}, merge=merge)


def stages_until(graph: Graph, stop_after: str | None) -> list[str]:
    """The graph's stages, up to and including `stop_after` (all of them when None)."""
    names = list(graph.pipelines)
    if stop_after is None:
        return names
    if stop_after not in names:
        raise ConfigError(f"stop_after={stop_after!r}: the graph's stages are {names}")
    return names[: names.index(stop_after) + 1]


def run_local(graph: Graph, workers: int, log: Callable = print, stop_after: str | None = None) -> None:
    """Every stage on this machine, `workers` tasks at once; finished tasks are skipped. Each task's log
    is in `<work>/logs/<stage>/logs/task_<rank>.log`; the console gets one line per stage (and the
    tasks' warnings)."""
    from datatrove.executor import LocalPipelineExecutor

    # imported (and its start-up warnings silenced) once here, not in every forked task
    import megatron.core.datasets.indexed_dataset  # noqa: F401

    stages = stages_until(graph, stop_after)
    invalidate_downstream(graph)
    with _task_logs_to_files():
        for stage in stages:
            steps, tasks = graph.pipelines[stage]
            ex = LocalPipelineExecutor(steps, tasks=tasks, workers=max(1, min(int(workers), tasks)),
                                       logging_dir=str(graph.work / "logs" / stage), skip_completed=True,
                                       start_method="fork")
            todo = len(ex.get_incomplete_ranks(range(tasks)))
            t0 = time.time()
            if todo == 0:
                log(f"  {stage:<9} {tasks:>4} task(s): done already")
                continue
            _run_tasks(ex, steps, ex.get_incomplete_ranks(range(tasks)), ex.workers)
            log(f"  {stage:<9} {tasks:>4} task(s): {todo} ran in {time.time() - t0:.1f}s")


def _run_tasks(ex, steps: list, ranks: list[int], workers: int) -> None:
    """The tasks of a stage. With one worker, in this process, one after another, through datatrove's
    per-task runner (`_run_for_rank`: its log, stats and completion mark): what
    `LocalPipelineExecutor.run` does for one worker, minus its multiprocess Manager, whose server process
    would outlive a killed prepare holding the terminal's pipes. Between tasks the freed heap goes back
    to the system, so a stage's peak is its largest task, not the sum of what its tasks left behind.
    With more, datatrove's executor (a process pool)."""
    if workers > 1:
        ex.run()
        return
    from copy import deepcopy

    for rank in ranks:
        ex.pipeline = deepcopy(steps)
        ex._run_for_rank(rank)
        ex.pipeline = None  # the task's steps, freed by reference counting (a gc.collect() costs ~0.3 s here)
        _trim_heap()


def _trim_heap() -> None:
    """glibc's malloc_trim: return freed heap pages to the system (no-op elsewhere)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


def _completions(graph: Graph, stage: str) -> Path:
    return graph.work / "logs" / stage / "completions"


def invalidate_downstream(graph: Graph) -> str | None:
    """Forgets the finished tasks of every stage after the first one with unfinished tasks (their inputs
    are about to change: one clean task changes every removal list, one tokenize task its source's
    merge). Returns that first stage (None: everything is finished)."""
    first = None
    for stage, (_, tasks) in graph.pipelines.items():
        if first is not None:
            shutil.rmtree(_completions(graph, stage), ignore_errors=True)
            continue
        done = _completions(graph, stage)
        if not all((done / f"{r:05d}").exists() for r in range(tasks)):
            first = stage
    return first


@contextlib.contextmanager
def _task_logs_to_files():
    """datatrove sends each task's INFO log to stderr as well as to its log file: keep the file, and only
    warnings on the console (a stage of 1,000 tasks would otherwise print pages per task)."""
    import sys

    import datatrove.executor.base as base
    from loguru import logger

    add, close = base.add_task_logger, base.close_task_logger

    def console_warnings_only():
        logger.remove()
        # a task without near duplicates has no removal list: datatrove warns, but that is the normal case
        logger.add(sys.stderr, level="WARNING", format="datatrove {level}: {message}",
                   filter=lambda r: not r["message"].startswith("No .remove file"))

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = add(logging_dir, rank, local_rank, node_rank)
        console_warnings_only()
        logger.add(logfile, level="DEBUG")
        return logfile

    def close_task_logger(logfile):
        close(logfile)
        console_warnings_only()

    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    logger.disable("datatrove.utils.logging")  # its "launching"/pipeline banners, logged before we get the file
    console_warnings_only()
    try:
        yield
    finally:
        base.add_task_logger, base.close_task_logger = add, close
        logger.enable("datatrove.utils.logging")


def submit_slurm(graph: Graph, cluster, workers: int, python_env: str | None, log: Callable = print,
                 mem_per_cpu_gb: int = 2, stop_after: str | None = None) -> list[dict]:
    """Every stage as a Slurm job array (datatrove's SlurmPipelineExecutor), each after the previous one;
    stages whose tasks are all complete are not submitted. Returns one record per stage."""
    import subprocess

    from datatrove.executor.slurm import SlurmPipelineExecutor

    env_lines = [f"export {k}={json.dumps(str(v))}" for k, v in dict(cluster.env or {}).items()]
    env_lines += list(cluster.setup or [])
    if python_env:
        env_lines.insert(0, f"source {python_env}/bin/activate")
    env_lines.append(f"export PYTHONPATH={json.dumps(os.environ.get('PYTHONPATH', ''))}")
    repo_dir = str(cluster.repo_dir) if cluster.repo_dir else str(Path(__file__).resolve().parents[2])
    env_lines.append(f"cd {json.dumps(repo_dir)}")
    sbatch = {"kill-on-invalid-dep": "yes"}
    if cluster.account:
        sbatch["account"] = cluster.account
    srun_args = {}
    c = cluster.container
    if c is not None and c.get("image"):
        srun_args = {"container-image": c.image, "container-workdir": c.workdir or repo_dir}
        if c.get("mounts"):
            srun_args["container-mounts"] = ",".join(c.mounts)
    partition = str(cluster.partition) if cluster.partition else _default_partition()
    previous = None
    records = []
    invalidate_downstream(graph)
    for stage in stages_until(graph, stop_after):
        steps, tasks = graph.pipelines[stage]
        ex = SlurmPipelineExecutor(
            steps, tasks=tasks, time=str(cluster.time), partition=partition,
            cpus_per_task=1, mem_per_cpu_gb=int(mem_per_cpu_gb), workers=int(workers),
            job_name=f"heb-prepare-{stage}", qos=str(cluster.qos or ""), env_command="\n".join(env_lines),
            sbatch_args=sbatch, depends=previous, logging_dir=str(graph.work / "logs" / stage),
            slurm_logs_folder=str(graph.work / "logs" / stage / "slurm"), skip_completed=True,
            requeue_signals=None, mail_type="NONE", srun_args=srun_args or None)
        todo = len(ex.get_incomplete_ranks(range(tasks)))
        try:
            ex.launch_job()  # datatrove skips it (job_id -1) when every task is complete
        except subprocess.CalledProcessError as e:
            raise ConfigError(f"sbatch refused the {stage} stage's job array (its message is above; the script is "
                              f"{graph.work / 'logs' / stage / 'launch_script.slurm'}): exit code {e.returncode}") from None
        records.append({"stage": stage, "tasks": tasks, "to_run": todo,
                        "job_id": None if ex.job_id in (None, -1) else str(ex.job_id)})
        log(f"  {stage:<9} {tasks:>4} task(s): " + (f"{todo} submitted as job {ex.job_id}" if todo else "done already"))
        previous = ex
    return records


def _default_partition() -> str:
    """The cluster's default partition (`sinfo` marks it with `*`): datatrove always writes --partition."""
    import subprocess

    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    default = [p[:-1] for p in out if p.endswith("*")]
    if not default:
        raise ConfigError("the cluster has no default partition: set cluster.partition")
    return default[0]


def read_json_reports(folder: Path, ranks) -> list[dict]:
    out = []
    for r in ranks:
        p = folder / f"{r:05d}.json"
        if not p.exists():
            raise ConfigError(f"{p} is missing: the stage that writes it did not finish (rerun prepare)")
        out.append(json.loads(p.read_text()))
    return out


__all__ = ["STAGES", "TaskLayout", "Graph", "build_graph", "run_local", "submit_slurm",
           "read_json_reports", "clean_schema", "make_steps"]
