#!/usr/bin/env bash
# The device check: everything lmforge's CUDA path must show, in one call of at most ~8 minutes on
# one GPU, with a log and one JSON of figures under $OUT (a temporary folder when OUT is unset).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --dry-run   # the same steps on the CPU, tiny sizes
#   bash benchmarks/gpu_check.sh --prepare SOURCE     # on the CPU, before: the corpus to carry
#
# Steps (each timed and recorded, a failure recorded and the next step run):
#   1. pytest -m gpu (tests/test_gpu.py)
#   2. benchmarks/train_throughput.py --preset gpt2 --device cuda --dtype bf16 --compile on at a
#      batch that fills an H100, under TORCH_LOGS=recompiles,graph_breaks: tok/s, MFU, peak GiB;
#      benchmarks/plain_loop.py (an independent nanoGPT-style loop) on the same shapes; the same
#      lmforge run with --recipe modern
#   3. lmforge train --preset gpt2 on the carried corpus (wikitext-smoke), SIGTERM in the middle
#      (exit 143 expected), --resume to the end, then eval and generate of the result
#
# The GPU image lacks some of lmforge's dependencies and lmforge itself: Python 3.12 wheels in
# .whl/ are installed with pip --no-index --no-deps --target (PYTHONPATH), and lmforge runs from
# this checkout (PYTHONPATH). The corpus: `--prepare SOURCE` (a folder with wiki.*.raw, e.g.
# wikitext-smoke; GPT-2's ranks from $LMFORGE_TOKENIZER_FILE) writes .gpu_check/ws, to be carried.
# Settings by environment: GPU_CHECK_BATCH (32), GPU_CHECK_STEPS (throughput steps, 20),
# GPU_CHECK_TRAIN_STEPS (1000), GPU_CHECK_TERM_AFTER (seconds before the SIGTERM, 70),
# GPU_CHECK_BUDGET (seconds for all steps, 450: a step is cut to what is left, and skipped when
# under 15 s are left, so the JSON is written inside the call), GPU_CHECK_WS (the prepared
# workspace, .gpu_check/ws), PYTHON (python3).
set -u -o pipefail

DEVICE=cuda
DRY=0
PREPARE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --device=*) DEVICE="${1#*=}"; shift ;;
        --dry-run) DRY=1; shift ;;
        --prepare) PREPARE="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
# wheels carried for the device image (datasets, platformdirs, ...), then lmforge from this checkout
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    SITE="${GPU_CHECK_SITE:-/tmp/lmforge-gpu-check-site}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$REPO"/.whl/*.whl || { echo "gpu_check.sh: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
LMFORGE=("$PY" -P -m lmforge)

if [ -n "$PREPARE" ]; then  # on the CPU, before the device call
    WS="${GPU_CHECK_WS:-$REPO/.gpu_check/ws}"
    exec "${LMFORGE[@]}" --workspace "$WS" data prepare wikitext-2 --source "$PREPARE" --as wikitext-smoke
fi

OUT="${OUT:-$(mktemp -d -t lmforge-gpu-check.XXXXXX)}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
WORK="$(mktemp -d -t lmforge-gpu-check-work.XXXXXX)"  # checkpoints: not under $OUT (it comes back)
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
: >"$LOG"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

if [ "$DRY" = 1 ]; then
    # the tiny size: seconds per step on a CPU, a small vocabulary
    BATCH=2; BLOCK=64; STEPS=2; WARMUP=1; DTYPE=fp32; COMPILE=off; CONFIG=micro; VOCAB=512
    PLAIN_SHAPE=(--n-layer 2 --n-head 2 --n-embd 64 --vocab 512 --real-vocab 512)
    # 200 steps (seconds): the SIGTERM comes once the first step is logged, never after the last
    TRAIN_STEPS=200; TERM_AT_STEP=1; TERM_AFTER=60
    TRAIN_MODEL=(--preset tiny --block-size 32 --n-layer 2 --n-head 2 --n-embd 32 --batch-size 4
                 --grad-accum 1 --eval-interval 100 --eval-tokens 256 --threads 1 --sample-tokens 4)
    EVAL_MAX=(--max-tokens 512 --batch-size 4)
else
    BATCH="${GPU_CHECK_BATCH:-32}"; BLOCK=1024; STEPS="${GPU_CHECK_STEPS:-20}"; WARMUP=5
    DTYPE=bf16; COMPILE=on; CONFIG=gpt2; VOCAB=50257
    PLAIN_SHAPE=(--n-layer 12 --n-head 12 --n-embd 768)
    TRAIN_STEPS="${GPU_CHECK_TRAIN_STEPS:-1000}"; TERM_AT_STEP=$((TRAIN_STEPS / 3))
    TERM_AFTER="${GPU_CHECK_TERM_AFTER:-70}"
    TRAIN_MODEL=(--preset gpt2 --batch-size 16 --grad-accum 1 --eval-interval 500 --eval-tokens 65536)
    EVAL_MAX=(--max-tokens 262144)
fi

# a prepared corpus: the carried one, or (dry run, nothing carried) a generated one in bytes
WS="$WORK/ws"
CARRIED="${GPU_CHECK_WS:-$REPO/.gpu_check/ws}"
if [ -d "$CARRIED/datasets/wikitext-smoke" ]; then
    mkdir -p "$WS" && cp -r "$CARRIED/datasets" "$WS/"
    if [ -d "$CARRIED/tokenizers" ]; then cp -r "$CARRIED/tokenizers" "$WS/"; fi
elif [ "$DRY" = 1 ]; then
    "$PY" - "$WORK/corpus" <<'EOF'
import random, sys
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True)
rng = random.Random(0)
words = "the of and in to a was is for on as with by at from his an that it were are".split()
for split, n in (("train", 400), ("valid", 40), ("test", 20)):
    docs = [f" = Title {i} = \n\n" + " ".join(rng.choice(words) for _ in range(60)) + " .\n\n" for i in range(n)]
    (out / f"wiki.{split}.raw").write_text("".join(docs))
EOF
    "${LMFORGE[@]}" --workspace "$WS" -q data prepare wikitext-2 --source "$WORK/corpus" --as wikitext-smoke \
        --tokenizer bytes --num-proc 1 >>"$LOG" 2>&1 || log "preparing the generated corpus failed"
else
    log "no prepared corpus at $CARRIED: run 'bash benchmarks/gpu_check.sh --prepare SOURCE' on the CPU and carry .gpu_check"
fi

DEADLINE=$(($(date +%s) + ${GPU_CHECK_BUDGET:-450}))

# step NAME TIMEOUT CMD...: run, log, record {rc, seconds} in $RESULTS/NAME.step.json; the
# timeout is cut to the time left of the budget, and a step with under 15 s left is skipped
step() {
    local name="$1" limit="$2"; shift 2
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 15 ]; then
        log "-- $name: skipped (the budget is spent)"
        printf '{"rc": null, "seconds": 0, "skipped": true}\n' >"$RESULTS/$name.step.json"
        return 0
    fi
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    log "== $name: $*"
    local t0 rc
    t0=$(date +%s.%N)
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.err"
    rc=$?
    cat "$RESULTS/$name.out" "$RESULTS/$name.err" >>"$LOG"
    printf '{"rc": %d, "seconds": %s}\n' "$rc" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')" \
        >"$RESULTS/$name.step.json"
    log "-- $name: exit $rc"
    return $rc
}

# 1. the GPU-marked tests (all skipped on a CPU)
step pytest 150 "$PY" -P -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_gpu.py"

# 2. throughput: lmforge, the independent plain loop on the same shapes, lmforge's modern recipe
THROUGHPUT=("$PY" -P "$REPO/benchmarks/train_throughput.py" --preset "$CONFIG" --device "$DEVICE"
            --dtype "$DTYPE" --compile "$COMPILE" --batch-size "$BATCH" --block-size "$BLOCK"
            --grad-accum 1 --steps "$STEPS" --warmup "$WARMUP" --repeats 1 --impls lmforge
            --vocab "$VOCAB" --json --worker-log)
TORCH_LOGS=recompiles,graph_breaks step throughput_gpt2 150 "${THROUGHPUT[@]}" --recipe gpt2
step plain_loop 120 "$PY" -P "$REPO/benchmarks/plain_loop.py" --device "$DEVICE" --dtype "$DTYPE" \
    --compile "$COMPILE" --batch-size "$BATCH" --block-size "$BLOCK" --steps "$STEPS" --warmup "$WARMUP" \
    "${PLAIN_SHAPE[@]}"
TORCH_LOGS=recompiles,graph_breaks step throughput_modern 150 "${THROUGHPUT[@]}" --recipe modern

# 3. train, SIGTERM in the middle, resume, eval, generate
TRAIN=("${LMFORGE[@]}" --workspace "$WS" train "${TRAIN_MODEL[@]}" --data wikitext-smoke --run gpucheck
       --device "$DEVICE" --steps "$TRAIN_STEPS" --log-interval 10 --wandb disabled)
if [ "$DRY" = 1 ]; then TRAIN+=(--dtype fp32 --compile off); else TRAIN+=(--dtype bf16 --compile on); fi
log "== train: ${TRAIN[*]}"
t0=$(date +%s)
"${TRAIN[@]}" >"$RESULTS/train.out" 2>"$RESULTS/train.err" &
pid=$!
metrics="$WS/runs/gpucheck/metrics.jsonl"
# the SIGTERM: after TERM_AFTER seconds, or once a step >= TERM_AT_STEP is logged (never after
# the last step, however fast the device)
while kill -0 "$pid" 2>/dev/null; do
    now=$(date +%s)
    if [ -f "$metrics" ]; then
        logged=$(grep '"kind": *"train"' "$metrics" | tail -n 1 | grep -o '"step": *[0-9]*' | grep -o '[0-9]*$')
        if [ -n "$logged" ] && [ "$logged" -ge "$TERM_AT_STEP" ]; then break; fi
    fi
    if [ $((now - t0)) -ge "$TERM_AFTER" ]; then break; fi
    sleep 0.1
done
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
cat "$RESULTS/train.out" "$RESULTS/train.err" >>"$LOG"
printf '{"rc": %d, "seconds": %d}\n' "$rc" "$(($(date +%s) - t0))" >"$RESULTS/train.step.json"
log "-- train (SIGTERM): exit $rc (143 expected)"
step resume 200 "${LMFORGE[@]}" --workspace "$WS" train --resume gpucheck --json
step eval 90 "${LMFORGE[@]}" --workspace "$WS" eval gpucheck --split validation "${EVAL_MAX[@]}" \
    --device "$DEVICE" --json
step generate 60 "${LMFORGE[@]}" --workspace "$WS" generate gpucheck "The history of" --max-tokens 32 \
    --seed 0 --no-stream --device "$DEVICE"

# the figures, in one JSON
"$PY" - "$RESULTS" "$WS/runs/gpucheck" "$OUT/gpu_check.json" "$DEVICE" "$DRY" "$BATCH" "$BLOCK" <<'EOF'
import json, re, sys
from pathlib import Path

results, run, out, device, dry, batch, block = sys.argv[1:]
R = Path(results)

def text(name, ext):
    p = R / f"{name}.{ext}"
    return p.read_text(errors="replace") if p.exists() else ""

def status(name):
    try:
        return json.loads(text(name, "step.json"))
    except ValueError:
        return {"rc": None, "seconds": None}

def rows(name):
    try:
        return json.loads(text(name, "out"))
    except ValueError:
        return []

def compile_logs(name):
    err = text(name, "err")
    return {"recompiles": len(re.findall(r"Recompiling function", err)),
            "graph_breaks": len(re.findall(r"Graph break", err))}

report = {"device": device, "dry_run": dry == "1", "batch_size": int(batch), "block_size": int(block), "steps": {}}
try:
    import torch
    report["torch"] = torch.__version__
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
except ImportError:
    pass
for name in ("pytest", "throughput_gpt2", "plain_loop", "throughput_modern", "train", "resume", "eval", "generate"):
    report["steps"][name] = status(name)
tail = text("pytest", "out").strip().splitlines()
report["steps"]["pytest"]["summary"] = tail[-1] if tail else ""

def figures(row):
    return {"tokens_per_sec": row.get("tokens_per_sec"), "mfu": row.get("mfu"),
            "peak_gib": (row["peak_memory_mb"] / 1024 if row.get("peak_memory_mb") is not None
                         else row.get("peak_memory_gib"))}

lm = rows("throughput_gpt2")
modern = rows("throughput_modern")
try:
    plain = json.loads(text("plain_loop", "out").strip().splitlines()[-1])
except (ValueError, IndexError):
    plain = None
report["throughput"] = {
    "lmforge_gpt2": {**figures(lm[0]), **compile_logs("throughput_gpt2")} if lm else None,
    "plain": figures(plain) if plain else None,
    "lmforge_modern": {**figures(modern[0]), **compile_logs("throughput_modern")} if modern else None,
}
if lm and plain and plain.get("tokens_per_sec"):
    report["throughput"]["lmforge_vs_plain"] = lm[0]["tokens_per_sec"] / plain["tokens_per_sec"]

metrics = Path(run) / "metrics.jsonl"
records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
train = [r for r in records if r.get("kind") == "train"]
evals = [r for r in records if r.get("kind") == "eval"]
run_json = Path(run) / "run.json"
report["train"] = {
    "sigterm_exit": report["steps"]["train"]["rc"],
    "final_status": json.loads(run_json.read_text()).get("status") if run_json.exists() else None,
    "stopped_at_step": next((int(m) for m in re.findall(r"checkpoint at step (\d+)", text("train", "err"))), None),
    "steps_logged": [r["step"] for r in train][-5:],
    "losses": [[r["step"], round(r["loss"], 4)] for r in train][:: max(1, len(train) // 20)],
    "val_losses": [[r["step"], r.get("val_loss")] for r in evals],
    "tokens_per_sec_last": train[-1].get("tokens_per_sec") if train else None,
    "mfu_last": train[-1].get("mfu") if train else None,
}
try:
    report["eval"] = json.loads(text("eval", "out"))
except ValueError:
    report["eval"] = None
report["generate"] = text("generate", "out")[-400:]
report["ok"] = all(s.get("rc") == 0 for k, s in report["steps"].items() if k != "train") and \
    report["steps"]["train"]["rc"] == 143
Path(out).write_text(json.dumps(report, indent=2))
print(json.dumps({"ok": report["ok"], "steps": {k: v["rc"] for k, v in report["steps"].items()}}))
EOF
log "wrote $OUT/gpu_check.json and $LOG"
rm -rf "$WORK"
