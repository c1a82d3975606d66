"""``lmforge eval --protocol harness`` next to lm-eval-harness's own ``wikitext`` numbers.

    python benchmarks/lm_eval_parity.py             # trains a tiny GPT-2-vocabulary model first
    python benchmarks/lm_eval_parity.py --steps 0   # an untrained model (faster, less telling)

What it does, all offline:

1. prepares ``wikitext-2`` with the GPT-2 tokenizer from ``--source`` (default
   ``../shared/data/wikitext-smoke``, whose test split is 31 real WikiText test
   articles) into a temporary workspace;
2. trains a tiny model on its train split for ``--steps`` steps (a plain AdamW loop:
   this measures evaluation, not the trainer) and saves it as an lmforge checkpoint;
3. ``lmforge eval CKPT --protocol harness --split test --json``;
4. ``lmforge ckpt export CKPT --format hf --out DIR`` and lm-eval's ``HFLM`` on that
   directory (``max_length`` = the model's context, fp32, CPU, its tokenizer files)
   with a local copy of lm-eval's ``wikitext`` task: the same detokenizer and
   ``process_results`` (read from the installed lm_eval), ``dataset_path: json``
   over a jsonl of the same documents in its ``page`` field;
5. prints word perplexity, byte perplexity and bits per byte side by side; exits 1
   when any differs by more than ``--tolerance`` (default 0.1%).

Needs ``pip install "lmforge[eval]"`` (lm_eval, accelerate, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_SOURCE = SHARED / "data" / "wikitext-smoke"
DEFAULT_TOKENIZER = SHARED / "tokenizers" / "gpt2.tiktoken"

TASK_YAML = """task: wikitext_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {pages}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: !function preprocess_wikitext.wikitext_detokenizer
process_results: !function preprocess_wikitext.process_results
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def lmforge(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"lmforge {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def train_tiny(ws_root: Path, steps: int, block: int, seed: int) -> Path:
    """A tiny GPT on the prepared train split, saved as ``runs/parity/checkpoints/best``."""
    import numpy as np
    import torch

    from lmforge.checkpoint.store import save_checkpoint
    from lmforge.config import ModelConfig, TrainingConfig
    from lmforge.data.store import open_dataset
    from lmforge.model.gpt import GPT
    from lmforge.workspace import Workspace

    ws = Workspace.resolve(ws_root)
    ds = open_dataset(ws, "wikitext-2")
    model_config = ModelConfig(
        vocab_size=ds.vocab_size, block_size=block, n_layer=2, n_head=2, n_embd=64, dropout=0.0
    )
    config = TrainingConfig(preset="tiny", run="parity", tokenizer="gpt2", model=model_config)
    config.data.name = "wikitext-2"
    torch.manual_seed(seed)
    model = GPT(model_config)
    tokens = ds.tokens("train")
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        starts = rng.integers(0, len(tokens) - block - 1, 8)
        chunk = torch.from_numpy(np.stack([tokens[s : s + block + 1] for s in starts]).astype(np.int64))
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            print(f"train step {step:4d}  loss {loss.item():.3f}", file=sys.stderr)
    model.eval()
    run_dir = ws.run_dir("parity")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"name": "parity", "started_at": "2025-01-01T00:00:00Z"}))
    meta = {"kind": "best", "run": "parity", "step": steps, "tokens": steps * 8 * block, "val_loss": None}
    meta |= {"config": config.to_dict(), "tokenizer": ds.tokenizer_identity, "dataset": "wikitext-2"}
    path = run_dir / "checkpoints" / "best"
    save_checkpoint(path, model, meta)
    return path


def lm_eval_numbers(hf_dir: Path, task_dir: Path, context: int, batch_size: int) -> dict[str, float]:
    import lm_eval
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval's own detokenizer and process_results, beside the local task YAML that names them
    reference = Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "preprocess_wikitext.py"
    shutil.copy(reference, task_dir / "preprocess_wikitext.py")
    lm = HFLM(
        pretrained=str(hf_dir), max_length=context, dtype="float32", device="cpu", batch_size=batch_size
    )
    manager = TaskManager(include_defaults=False, include_path=str(task_dir))
    out = evaluator.simple_evaluate(
        model=lm, tasks=["wikitext_local"], task_manager=manager, log_samples=False
    )
    res = out["results"]["wikitext_local"]
    return {m: res[f"{m},none"] for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--tokenizer-file", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="relative (0.001 = 0.1%%)")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="lmforge-parity-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LMFORGE_HOME": str(root / "ws"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")})
    try:
        lmforge(
            "data", "prepare", "wikitext-2", "--source", str(args.source), "--splits", "train,test",
            "--tokenizer", "gpt2", "--tokenizer-file", str(args.tokenizer_file), env=env,
        )  # fmt: skip
        ckpt = train_tiny(root / "ws", args.steps, args.block_size, args.seed)

        started = time.perf_counter()
        (row,) = json.loads(
            lmforge("eval", str(ckpt), "--protocol", "harness", "--split", "test", "--json",
                    "--device", "cpu", "--dtype", "fp32", "--batch-size", str(args.batch_size), env=env)
        )  # fmt: skip
        ours_s = time.perf_counter() - started
        ours = {
            "word_perplexity": row["word_ppl"],
            "byte_perplexity": row["byte_ppl"],
            "bits_per_byte": row["bpb"],
        }

        hf_dir = root / "hf"
        shutil.rmtree(hf_dir, ignore_errors=True)
        lmforge("ckpt", "export", str(ckpt), "--format", "hf", "--out", str(hf_dir), env=env)
        task_dir = root / "tasks"
        task_dir.mkdir(exist_ok=True)
        from lmforge.data.store import open_dataset
        from lmforge.workspace import Workspace

        pages = open_dataset(Workspace.resolve(root / "ws"), "wikitext-2").documents("test")
        with open(task_dir / "pages.jsonl", "w", encoding="utf-8") as f:
            for page in pages:
                f.write(json.dumps({"page": page}) + "\n")
        (task_dir / "wikitext_local.yaml").write_text(TASK_YAML.format(pages=task_dir / "pages.jsonl"))
        started = time.perf_counter()
        ref = lm_eval_numbers(hf_dir, task_dir, args.block_size, args.batch_size)
        ref_s = time.perf_counter() - started
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{len(pages)} WikiText test documents, {row['tokens']:,} GPT-2 tokens, context {args.block_size}, "
        f"{args.steps} training steps; lmforge {ours_s:.1f} s, lm-eval HFLM {ref_s:.1f} s\n"
    )
    print("| metric | lmforge --protocol harness | lm-eval HFLM | relative difference |")
    print("| --- | ---: | ---: | ---: |")
    worst = 0.0
    for metric, value in ref.items():
        diff = abs(ours[metric] - value) / abs(value)
        worst = max(worst, diff)
        print(f"| {metric} | {ours[metric]:.6f} | {value:.6f} | {diff:.2e} |")
    print(f"\nworst relative difference {worst:.2e} (tolerance {args.tolerance:.0e})")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
