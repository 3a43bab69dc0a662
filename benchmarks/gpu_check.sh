#!/usr/bin/env bash
# The GPU checks of the paper-scale issue in one call, for a session that is lent a GPU machine.
#
#   benchmarks/gpu_check.sh prepare     here (package registries reachable, .venv built by `make test`):
#                                       the wheels that machine lacks (pydantic and its needs, at .venv's
#                                       versions, for its Python 3.12) into .whl/
#   benchmarks/gpu_check.sh [quick]     there, from the repository root, with .whl carried: the CUDA
#                                       tests, bench_zip.py (the zip in rounds on the GPU against the
#                                       CPU's loop), then bench_scale.py on the GPU (ResNet-50 with a timed
#                                       re-merge at a new alpha, then ViT-B/16 unless `quick`); logs in
#                                       $OUT (or gpu_out/)
#
# The machine has PyTorch, timm, SciPy, safetensors and pytest but no pydantic, and no network. Each step
# runs under `timeout`, so a slow one cannot eat the device time the next one needs; all of them together
# stay under 10 minutes, one device call's limit (run it with timeout_s 600).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then  # the versions this checkout's .venv was tested with
    rm -rf .whl && mkdir .whl
    for name in pydantic pydantic_core annotated_types typing_inspection; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))") || exit 1
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$name==$version" || exit 1
    done
    ls .whl
    exit 0
fi

out=${OUT:-gpu_out}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 MUDSC_HOME=$(mktemp -d)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"; } 2>&1 | tee "$out/device.txt"

# the tests that need CUDA, and the engine's own tests on the default device (CUDA there)
timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 120 tests/test_solvers.py tests/test_similarity.py \
    tests/test_descriptor_cache.py tests/test_stats.py "tests/test_fuse.py::test_on_cuda" \
    "tests/test_landscape_grid.py::test_cuda_vmap_matches_loop_and_bf16_is_close" 2>&1 | tee "$out/tests.txt"

# the zip in rounds on the GPU against the CPU's loop, by size (where ROUNDS_FROM should be)
timeout 60 python3 benchmarks/bench_zip.py --sizes 128 256 512 1024 2048 --max-ref 0 --threads 4 --rounds-on cuda \
    2>&1 | tee "$out/bench_zip.txt"

timeout 200 python3 benchmarks/bench_scale.py --device cuda --models resnet50 --images 256 --remerge-alpha 0.3 \
    2>&1 | tee "$out/bench_scale_resnet50.txt"
[ "${1:-}" = quick ] && exit 0
timeout 140 python3 benchmarks/bench_scale.py --device cuda --models vitb16 --images 256 \
    2>&1 | tee "$out/bench_scale_vitb16.txt"
