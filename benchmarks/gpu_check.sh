#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): reference equality of the kept rows in fp32 and bf16,
# the update-mode invariant, MIGU / plain step times at batch 8 and 64 (bf16) and peak memory,
# all into one JSON file. Random-weight models built from configs: nothing is downloaded, nothing
# is installed. Under 8 minutes on one H200; a hard limit of 470 s keeps it there (the JSON is
# rewritten after every section, so a run cut short keeps what it finished).
#
#   bash benchmarks/gpu_check.sh --out gpu_check.json [more options of gpu_check.py]
#
# The interpreter is $PYTHON if set, else `python` (the environment's; nothing is installed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi >/dev/null; then nvidia-smi -L || true; fi
exec timeout 470 "${PYTHON:-python}" "$root/benchmarks/gpu_check.py" "$@"
