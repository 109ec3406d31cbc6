# Source on the accelerator machine: unpack the GPU kit (spconv, easydict, tensorboardX; made by
# ../shared/tools/gpu-kit.sh into .gpu-kit/) and put it and the repository on PYTHONPATH.
[ -d .gpu-site/spconv ] || { mkdir -p .gpu-site && tar -xJf .gpu-kit/kit.tar.xz -C .gpu-site; }
export PYTHONPATH=$PWD/.gpu-site:$PWD
# Each benchmark adds its run to $OUT/<benchmark>_<card>.json; back here, add them to the repository's
# files with: python benchmarks/results_file.py merge <the returned $OUT>/*.json
export OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "cpus $(nproc)"
python -c "import torch, spconv; print('torch', torch.__version__, 'spconv', spconv.__version__)"
# frames shared by every benchmark of a machine start; run: one benchmark, its JSON lines and errors only
D=/tmp/pcdet_rmae_ts_bench
run() { timeout "${RUN_LIMIT_S:-150}" "$@" 2>&1 | grep -E '^\{|Error|error' | tail -3; }
