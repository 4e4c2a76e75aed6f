#!/usr/bin/env bash
# Runs on a GPU machine from the folder `scripts/gpu-check` packed (device-bin/): every GPU test,
# `d2a bench` against PyTorch on the same card, a short training run, then a summary.
# Needs the CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, the runtime), e.g. PyTorch's wheels.
set -uo pipefail
cd "$(dirname "$0")"
tar -xJf bins.tar.xz

# The CUDA libraries: PyTorch's nvidia wheels, else a toolkit under /usr/local.
libs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(f"{r}/nvidia/**/lib*.so*", recursive=True)}
print(":".join(sorted(dirs)))
EOF
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libs=${libs:+$libs:}$d
done
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
    ldd ./d2a | grep -q "$lib => not found" && echo "gpu-run: $lib not found on LD_LIBRARY_PATH"
done

summary=()
step() {  # step NAME COMMAND...: runs it, records PASS/FAIL
    local name=$1
    shift
    echo "=== $name: $*"
    if "$@"; then summary+=("PASS $name"); else summary+=("FAIL $name (exit $?)"); fi
}

export D2A_REQUIRE_GPU=1
step "GPU tests (ops and both models' training steps against the CPU)" \
    ./composed-test --test-threads 1 --nocapture gpu_
step "d2a train --device cuda (synthetic phantoms, 1 epoch)" \
    ./d2a train --device cuda --epochs 1 --out /tmp/d2a-gpu-run --force
step "bench models: d2a / PyTorch on this GPU" \
    timeout 300 python3 compare.py --device cuda --models --model-runs 3 --d2a ./d2a
step "bench convolutions: d2a / PyTorch on this GPU" \
    timeout 120 python3 compare.py --device cuda --ops --runs 20 --d2a ./d2a

echo "=== summary"
printf '%s\n' "${summary[@]}"
