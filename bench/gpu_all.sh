#!/usr/bin/env bash
# Every GPU figure the open issues ask for, in one call of the lent device machine (about 9 minutes of its
# 10-minute limit): the GPU tests, then decode (#3), SFT step (#4), serving (#5), pretraining and
# Shakespeare (#7). Each step has its own time limit and prints its last lines, so one failure costs only
# its own step. Copy what it prints into BENCHMARKS.md with the device and date.
#
# The device image has torch, lightning, transformers and peft but not pydantic, and installs nothing from
# the network, so carry its wheels (Python 3.12) and the Shakespeare text, which are ignored by git:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl pydantic==2.14.3 pydantic-core==2.50.4 annotated-types \
#     typing-inspection typing_extensions==4.16.0
#   mkdir -p .gpu && cp ../shared/data/tinyshakespeare.txt .gpu/
# then: run(command="bash bench/gpu_all.sh", carry=[".whl", ".gpu"], timeout_s=600)
# Name steps to run only those: bash bench/gpu_all.sh tests decode sft serve pretrain shakespeare
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/bench"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
date -u

WANTED=" $* "
step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${WANTED// /}" ] && [[ "$WANTED" != *" ${name%% *} "* ]]; then return; fi
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tail -n 30
    echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}

step "tests" 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/unit/generate/test_engine.py \
    tests/unit/test_footprint.py tests/unit/test_quantize.py tests/integration/test_train_cli.py
step "decode (#3)" 120 python3 bench/decode.py --device cuda --dtype bf16 --batch 1 32
step "sft (#4)" 75 python3 bench/sft.py --compile
step "serve (#5)" 90 python3 bench/serve.py --shape smollm2 --clients 32 --requests 2 --max-tokens 128
step "pretrain (#7)" 75 python3 bench/pretrain.py
step "shakespeare (#7)" 90 python3 bench/shakespeare.py --set data.path=.gpu/tinyshakespeare.txt
