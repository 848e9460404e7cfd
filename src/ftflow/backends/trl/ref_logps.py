"""DPO reference log-probs, computed once per reference model, data and settings.

DPO compares the policy with a frozen reference — the parent SFT model — on every pair.
With ``precompute_ref_log_probs`` (a method key, on by default) TRL computes the reference's
log-prob of every chosen and rejected answer once, before training, and the policy then
trains with no reference model in memory. ftflow keeps those values in a content-addressed
cache, ``resources/cache/ref_logps/{key}/`` (``ref_logps.parquet`` in the dataset's record
order, ``meta.json``), so that a retry, a resumed job or another DPO run of the same
reference (another beta, loss or learning rate) reads them instead of computing them again.

The key hashes what changes the values: the reference's weight files and ``config.json``,
the tokenised data's cache key (raw data, tokenizer, max length, sample), the model's dtype
and attention implementation, TRL's truncation (max length, mode) and ``ld_alpha``, mixed
precision, and the torch / transformers / TRL versions. Not in the key, because they change
rounding only: how the values were batched (batch size, processes, ZeRO-3 or not, device);
``meta.json`` records them. Nor beta or the loss type: they act on the values, not in them
(``sigmoid_norm`` divides the log-ratios by their lengths inside the loss).

Hashing the weights reads every byte once; the digest is remembered by the file's path,
size, inode and mtime under ``.digests/``, so a later start of a big model does not read
them again.

Several processes: rank 0 takes a lock per key (``fcntl.flock``; two jobs never compute one
key at once; a job that waits says so), decides hit or miss and tells every rank. On a hit
every rank reads the entry; on a miss every rank takes part in the computation (each
computes its share of the batches, gathered to all: :func:`compute`) and rank 0 writes the
entry to a temporary folder renamed into place, so a killed job leaves none half-written.

What the cache cannot spare: under FSDP, TRL loads the reference model at start even when
the values are cached (the policy is not sharded before training) and frees it before the
first step; and whenever precomputation is on, TRL hashes the policy's state dict once at
start (``hash_module``, for a ``datasets`` cache of its own that ftflow does not use).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftflow import files, paths

CACHE_VERSION = 1  # bump when the entry layout or what is computed changes
COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
DATA_FILE = "ref_logps.parquet"
META_FILE = "meta.json"


def _say(message: str) -> None:
    print(f"[ftflow] reference log-probs: {message}", flush=True)


def _root() -> Path:
    return Path(paths.REF_LOGPS_ENTRY).parent


# --------------------------------------------------------------------------------- key


def _digest(path: Path) -> str:
    """sha256 of ``path``, remembered by its path, size, inode and mtime."""
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_ino}|{stat.st_mtime_ns}"
    memo = _root() / ".digests" / hashlib.sha256(identity.encode()).hexdigest()[:32]
    if memo.is_file():
        return memo.read_text().strip()
    digest = files.sha256_file(path)
    files.write_text(memo, digest + "\n")
    return digest


def _is_weights(name: str) -> bool:
    """A weight file or shard index of a Hugging Face model folder (not the Trainer's
    ``training_args.bin``, which says how the model was trained, not what it computes)."""
    return name.endswith((".safetensors", ".index.json")) or (
        name.startswith("pytorch_model") and name.endswith(".bin")
    )


def weights_fingerprint(model_dir: Path) -> dict[str, str]:
    """sha256 of the model's ``config.json`` and every weight file, by name."""
    model_dir = Path(model_dir)
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and _is_weights(p.name))
    if not names:
        raise FileNotFoundError(f"{model_dir}: no weight files (*.safetensors, pytorch_model*.bin)")
    return {name: _digest(model_dir / name) for name in ["config.json", *names]}


def settings(args, model: Mapping[str, Any]) -> dict[str, Any]:
    """What besides weights and tokens changes the values: from the DPOConfig ``args``
    and the rendered model settings."""
    import torch
    import transformers
    import trl

    return {
        "dtype": model["dtype"],
        "attn_implementation": model["attn_implementation"],
        "max_length": args.max_length,
        "truncation_mode": args.truncation_mode,
        "ld_alpha": args.ld_alpha,
        "bf16": bool(args.bf16),
        "fp16": bool(args.fp16),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
    }


def cache_key(reference: Path, data_key: str, values: Mapping[str, Any]) -> tuple[str, dict]:
    """The entry's key and what it hashes."""
    inputs = {
        "cache_version": CACHE_VERSION,
        "reference": weights_fingerprint(reference),
        "data": data_key,
        "settings": dict(values),
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], inputs


# ------------------------------------------------------------------------------- entry


def locked(key: str):
    """Hold the key's lock (a file beside its entry); say so when another job has it."""
    return files.exclusive(_root() / f".{key}.lock", f"waiting: another job is computing {key}")


def exists(key: str) -> bool:
    return (paths.ref_logps_entry(key) / META_FILE).is_file()


def read(key: str):
    """The entry's values as a ``datasets.Dataset`` of :data:`COLUMNS`, in record order."""
    import datasets
    import pyarrow.parquet as pq

    return datasets.Dataset(pq.read_table(paths.ref_logps_entry(key) / DATA_FILE))


def write(key: str, table, meta: Mapping[str, Any]) -> Path:
    """Write an entry atomically (a temporary sibling renamed into place)."""
    import pyarrow.parquet as pq

    entry = paths.ref_logps_entry(key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
    try:
        pq.write_table(table, tmp / DATA_FILE)
        files.write_json(tmp / META_FILE, dict(meta))
        tmp.chmod(0o755)  # mkdtemp's 0700 would keep the entry from other users of resources/
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


# ------------------------------------------------------------------------- the trainer


def compute(trainer, dataset, batch_size: int):
    """The reference log-probs of every record of ``dataset``: ``(chosen, rejected)``.

    TRL 1.16's own precomputation (``DPOTrainer._precompute_ref_logps``): its collator, its
    reference forward (``compute_ref_log_probs``: the reference model, else the policy
    before its first step, under DeepSpeed in an inference engine), each rank computing its
    share of the batches, gathered to every rank in record order. What it leaves out is
    TRL's detour through a ``datasets`` cache file: for an in-memory dataset rank 0 writes
    that file into a temporary folder of its own, where the other ranks cannot open it.
    """
    import torch
    from torch.utils.data import DataLoader
    from trl.models import prepare_deepspeed

    accelerator, args = trainer.accelerator, trainer.args
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=trainer.data_collator,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
        shuffle=False,
    )
    if trainer.ref_model is None and trainer.is_deepspeed_enabled:
        if trainer._precompute_engine is None:  # TRL reuses it for later passes
            trainer._precompute_engine = prepare_deepspeed(trainer.model, accelerator)
        model = trainer._precompute_engine
    else:
        model = trainer.ref_model or trainer.model
    chosen, rejected = [], []
    for batch in accelerator.prepare(loader):
        pair = accelerator.gather_for_metrics(trainer.compute_ref_log_probs(model, batch))
        chosen.append(pair[0].float().cpu())
        rejected.append(pair[1].float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def precomputed(
    trainer,
    dataset,
    batch_size: int,
    reference: Path,
    data_key: str,
    model: Mapping[str, Any],
):
    """``dataset`` with the reference log-prob columns: from the cache, else computed
    (:func:`compute`, collective over the ranks) and then cached.

    Called on every rank, from the DPOTrainer's ``_precompute_ref_logps``.
    """
    import datasets
    import pyarrow as pa
    from accelerate.utils import broadcast_object_list

    accelerator = trainer.accelerator
    main = accelerator.is_main_process
    with contextlib.ExitStack() as stack:
        decided: list[Any] = [None]
        if main:
            key, inputs = cache_key(reference, data_key, settings(trainer.args, model))
            stack.enter_context(locked(key))  # held through the computation
            decided = [(key, inputs, exists(key))]
        broadcast_object_list(decided, from_process=0)
        key, inputs, hit = decided[0]
        if hit:
            values = read(key)
            if len(values) != len(dataset):
                raise RuntimeError(
                    f"{paths.ref_logps_entry(key)}: holds {len(values)} records, the "
                    f"tokenised data {data_key} has {len(dataset)}; delete the entry"
                )
            if main:
                _say(f"cache hit {key} ({len(values)} records)")
        else:
            start = time.perf_counter()
            chosen, rejected = compute(trainer, dataset, batch_size)
            seconds = time.perf_counter() - start
            table = pa.table({COLUMNS[0]: chosen.numpy(), COLUMNS[1]: rejected.numpy()})
            values = datasets.Dataset(table)
            if main:
                meta = {
                    "key": key,
                    "inputs": inputs,
                    "n_records": len(values),
                    "computed": {
                        "reference": str(reference),
                        "processes": accelerator.num_processes,
                        "batch_size": batch_size,
                        "distributed": accelerator.distributed_type.value,
                        "device": str(accelerator.device),
                        "seconds": round(seconds, 3),
                    },
                }
                write(key, table, meta)
                _say(f"computed and cached {key} ({len(values)} records, {seconds:.1f} s)")
        accelerator.wait_for_everyone()  # rank 0 has written the entry (and let go of the lock)
    return datasets.concatenate_datasets([dataset, values], axis=1)
