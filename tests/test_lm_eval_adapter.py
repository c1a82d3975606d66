"""The lm-eval adapter against lm-eval's own ``HFLM`` on the Hugging Face export of the same
checkpoint: a multiple-choice task and a rolling-loglikelihood task from task YAMLs written
here over generated local jsonl files, and greedy generation. Skipped without lm_eval."""

import json
import random

import pytest
import torch

pytest.importorskip("lm_eval")

from lmforge.config import ModelConfig, TrainingConfig  # noqa: E402
from lmforge.data.tokenizer import bytes_tokenizer  # noqa: E402
from lmforge.model.gpt import GPT  # noqa: E402

WORDS = "the cat dog sat on a mat and ran far away from home".split()


def write_tasks(folder):
    """Two task YAMLs over local jsonl files, as a user would write them offline."""
    rng = random.Random(0)
    folder.mkdir()
    with open(folder / "mc.jsonl", "w") as f:
        for _ in range(12):
            choices = [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(3)]
            q = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
            f.write(json.dumps({"question": q, "choices": choices, "answer": rng.randrange(3)}) + "\n")
    with open(folder / "pages.jsonl", "w") as f:
        for i in range(5):
            page = " ".join(rng.choices(WORDS, k=rng.randint(3, 40 + 20 * i))) + " .\n"
            f.write(json.dumps({"page": page}) + "\n")
    (folder / "toy_mc.yaml").write_text(
        f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
    )
    (folder / "toy_pages.yaml").write_text(
        f"""task: toy_pages
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "pages.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
    )
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lmforge.checkpoint.store import save_checkpoint
    from lmforge.interop.hf_export import export_checkpoint

    root = tmp_path_factory.mktemp("lm-eval")
    mc = ModelConfig(vocab_size=257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    config = TrainingConfig(preset="tiny", run="r", tokenizer="bytes", model=mc)
    torch.manual_seed(0)
    model = GPT(mc)
    meta = {"kind": "light", "run": "r", "step": 1, "tokens": 1, "val_loss": 1.0, "config": config.to_dict()}
    meta |= {"tokenizer": bytes_tokenizer().identity, "dataset": "x"}
    save_checkpoint(root / "ckpt", model, meta)
    export_checkpoint(root / "ckpt", root / "hf", "hf")
    model.eval()
    return model, root / "hf", write_tasks(root / "tasks")


def _results(lm, tasks_dir, tasks):
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=str(tasks_dir))
    out = evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=False)
    return out["results"]


@pytest.fixture(scope="module")
def hflm(setup):
    """lm-eval's own Hugging Face model on the export: max_length = the context, fp32, CPU."""
    pytest.importorskip("accelerate")  # lm-eval's HFLM needs it (lm_eval[hf]); the adapter does not
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(setup[1]), max_length=32, dtype="float32", device="cpu", batch_size=4)


def test_tasks_equal_hflm_on_the_export(setup, hflm):
    from lmforge.eval.tasks import run_tasks, task_rows

    model, _, tasks_dir = setup
    rows, saved = run_tasks(model, bytes_tokenizer(), ["toy_mc", "toy_pages"], tasks_dir=str(tasks_dir))
    ref_rows = task_rows("model", {"results": _results(hflm, tasks_dir, ["toy_mc", "toy_pages"])})
    ours = {(r.task, r.metric): r for r in rows}
    ref = {(r.task, r.metric): r for r in ref_rows}
    assert (
        set(ours) == set(ref) >= {("toy_mc", "acc"), ("toy_mc", "acc_norm"), ("toy_pages", "word_perplexity")}
    )
    for key, r in ref.items():
        assert ours[key].value == pytest.approx(r.value, rel=1e-4, abs=1e-6), key
    assert ours["toy_pages", "bits_per_byte"].value > 0 and saved["lm_eval_version"]


def test_loglikelihoods_equal_hflm_per_request(setup, hflm):
    from lm_eval.api.instance import Instance

    from lmforge.eval.lm_eval_adapter import LmforgeLM

    model = setup[0]
    ours, ref = LmforgeLM(model, bytes_tokenizer(), batch_size=3), hflm
    pairs = [("", "hello there"), ("The cat", " sat"), ("a" * 50, " very long context"), ("x ", "y")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    for (a, ga), (b, gb) in zip(ours.loglikelihood(reqs), ref.loglikelihood(reqs), strict=True):
        assert a == pytest.approx(b, rel=1e-4) and ga == gb
    # not a periodic text: HFLM's logits cache would hand two equal windows the same logits
    # even where they score different lengths (its logits_cache=False agrees with us there too)
    long = " ".join(random.Random(1).choices(WORDS, k=30))
    docs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(["short", long, "z" * 33])]
    for a, b in zip(ours.loglikelihood_rolling(docs), ref.loglikelihood_rolling(docs), strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_generate_until_equals_hflm_greedy(setup, hflm):
    from lm_eval.api.instance import Instance

    from lmforge.eval.lm_eval_adapter import LmforgeLM

    model = setup[0]
    ours, ref = LmforgeLM(model, bytes_tokenizer(), batch_size=4), hflm
    gen = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}
    prompts = ["The cat", "The dog", "a", "on the mat and"]
    reqs = [Instance("generate_until", {}, (p, dict(gen)), i) for i, p in enumerate(prompts)]
    assert ours.generate_until(reqs) == ref.generate_until(reqs)
