"""The bare baseline of bench_train.py: the same SFT with TRL and nothing else.

Same model directory, same tokenised rows (the parquet file of ftflow's cache entry),
same optimiser settings, batch sizes, checkpoint cadence and number of steps as the run
it is compared with; none of ftflow's machinery (run.yaml, resume scan, metrics file,
checkpoint markers, NaN guard, atomic export).
"""

import argparse
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

parser = argparse.ArgumentParser()
parser.add_argument("--model", type=Path, required=True)
parser.add_argument("--data", type=Path, required=True, help="a parquet file of tokenised rows")
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--scheduler", required=True)
parser.add_argument("--batch", type=int, required=True, help="per device")
parser.add_argument("--accum", type=int, required=True)
parser.add_argument("--epochs", type=float, required=True)
parser.add_argument("--save-steps", type=int, required=True)
parser.add_argument("--save-total-limit", type=int, required=True)
parser.add_argument("--logging-steps", type=int, required=True)
parser.add_argument("--max-length", type=int, required=True)
parser.add_argument("--seed", type=int, required=True)
args = parser.parse_args()

set_seed(args.seed)
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
train_dataset = datasets.Dataset(pq.read_table(args.data))
config = SFTConfig(
    output_dir=str(args.out / "checkpoints"),
    seed=args.seed,
    data_seed=args.seed,
    per_device_train_batch_size=args.batch,
    gradient_accumulation_steps=args.accum,
    learning_rate=args.lr,
    lr_scheduler_type=args.scheduler,
    num_train_epochs=args.epochs,
    logging_steps=args.logging_steps,
    save_strategy="steps",
    save_steps=args.save_steps,
    save_total_limit=args.save_total_limit,
    bf16=False,
    use_cpu=not torch.cuda.is_available(),
    report_to="none",
    dataloader_num_workers=0,
    max_length=args.max_length,
    disable_tqdm=True,
    dataset_num_proc=None,
)
trainer = SFTTrainer(
    model=model, args=config, train_dataset=train_dataset, processing_class=tokenizer
)
trainer.train()
trainer.save_model(str(args.out / "final"))
tokenizer.save_pretrained(args.out / "final")
(args.out / "state.json").write_text(json.dumps({"global_step": trainer.state.global_step}))
