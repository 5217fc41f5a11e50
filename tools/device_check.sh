#!/usr/bin/env bash
# The one GPU check of the W1A4 kernel: what a lent GPU machine runs, from the repository root.
#
#   OUT=/some/dir bash tools/device_check.sh             # on the GPU machine (7 minutes at most)
#   OUT=/tmp/dc bash tools/device_check.sh --dry-run     # here, without a GPU: the reference, two shapes
#
# Stages, each under `timeout` and none stopping the next: install the carried wheels (.whl: diffusers
# and what it needs that the GPU image lacks), nvidia-smi, versions, `pytest -m gpu` on the kernel
# tests, tools/train_check.py (the trainer on the GPU: CPU/GPU parity of 5 steps, no host sync inside a step,
# a 50-step run exported and reloaded on the CPU, its checkpoint resumed there), tools/bench_train.py's QAT
# step against FP fine-tuning (ddpm-cifar10-32 at batch 64, bf16-mixed and fp32; SD 1.5's UNet at batch 4,
# bf16, gradient checkpointing, peak memory), tools/bench_kernel.py per layer (cuDNN fp16 vs W1A4, batch 1/64/256, one and two bases, both
# kernels: the bit-plane one of cuda/w1a4_bmma.cu and the s8 x s8 one of cuda/w1a4_conv.cu), the whole
# UNet fp16 vs W1A4 (each kernel), the same for BiDM's W1A1 UNet (batch 64), the tensor-core issue rates
# (cuda/mma_rates.cu: IMMA, BMMA, HMMA, IGMMA, BGMMA, HGMMA), and a summary. Writes $OUT/device_check.json
# (every stage's exit status and seconds, the pytest summary, the benchmark figures),
# $OUT/device_check.log (everything printed), $OUT/train_check/train_check.json,
# $OUT/bench_train_sd15.json, $OUT/bench_kernel.{json,md}, $OUT/bench_unet{,_w1a1}.{json,md} and
# $OUT/mma_rates.jsonl. The whole run stops inside $BUDGET seconds (420 by default) even if a stage hangs:
# each stage gets the lesser of its own limit and what is left.
set -u
cd "$(dirname "$0")/.." || exit 1
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
LOG=$OUT/device_check.log
STAGES=$(mktemp)
: >"$LOG"
START=$(date +%s)
BUDGET=${BUDGET:-420}
SUMMARY_RESERVE=25
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ $DRY = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi

# stage NAME LIMIT CMD...: run CMD under min(LIMIT, time left) seconds, output to the log, record the
# exit status (124/137: timed out) and the seconds taken. Never exits the script.
stage() {
    local name=$1 limit=$2 left t0 rc
    shift 2
    left=$((START + BUDGET - SUMMARY_RESERVE - $(date +%s)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        echo "=== $name: skipped, no time left" | tee -a "$LOG"
        printf '%s\t%s\t%s\n' "$name" "skipped" 0 >>"$STAGES"
        return
    fi
    echo "=== $name (limit ${limit}s, at $(($(date +%s) - START))s)" | tee -a "$LOG"
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $(($(date +%s) - t0))s" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STAGES"
}

install_wheels() {
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl carried"; return 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
}

versions() {
    "$PY" - <<'EOF'
import json, platform
info = {"python": platform.python_version()}
for name in ("torch", "cupy", "diffusers", "lightning", "numpy"):
    try:
        info[name] = __import__(name).__version__
    except Exception as err:  # noqa: BLE001
        info[name] = f"missing: {type(err).__name__}: {err}"
import torch
info["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name()
    info["capability"] = torch.cuda.get_device_capability()
    info["cudnn"] = torch.backends.cudnn.version()
try:
    from binarydm.kernels import cuda as kcuda
    info["kernel_loads"] = kcuda.is_available()
    info["kernel_error"] = kcuda.load_error()
    if info["kernel_loads"]:
        info["bmma_self_check"] = kcuda.bmma_self_check()  # bit for bit on 4 shapes: then the default
        info["bmma_error"] = kcuda._bmma_state.get("check_error") or kcuda.load_error(kcuda.BMMA_SOURCE)
        info["default_variant"] = kcuda.default_variant()
        info["wgmma_built"] = kcuda.wgmma_built()  # the sm_90a cubin of stage cubin_sm90a was loaded
        for loop in ("bgmma", "bgmma_ws") if info["wgmma_built"] else ():
            info[f"{loop}_self_check"] = kcuda.bmma_self_check(loop=loop)
            info[f"{loop}_error"] = kcuda._bmma_state.get(f"{loop}_check_error")
except Exception as err:  # noqa: BLE001
    info["kernel_loads"] = f"{type(err).__name__}: {err}"
print("VERSIONS " + json.dumps(info))
EOF
}

# The tensor-core issue-rate microbenchmark (cuda/mma_rates.cu), one process per instruction kind.
mma_rates() {
    local cap arch
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
    arch=${cap:-90}
    [ "$arch" = 90 ] && arch=90a  # wgmma needs the arch-specific target
    nvcc -O3 -std=c++17 "-gencode=arch=compute_$arch,code=sm_$arch" -o /tmp/mma_rates cuda/mma_rates.cu || return 1
    for kind in imma_u8s8 imma_s4s4 bmma_and hmma_f16 igmma_s8 bgmma_and hgmma_f16; do
        timeout -k 2 15 /tmp/mma_rates $kind | tee -a "$OUT/mma_rates.jsonl"
    done
}

export -f install_wheels versions mma_rates
export PY OUT
if [ $DRY = 0 ]; then
    stage install 60 bash -c install_wheels
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
stage nvidia_smi 20 nvidia-smi
# The bit-plane module for sm_90a (on a Hopper): NVRTC builds plain sm_90, where the warpgroup (wgmma) kernels
# trap; this cubin holds them, and every later stage loads it (cuda/build/, named by the source's hash).
cubin_sm90a() {
    local cap
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
    [ "${cap:-0}" = 90 ] || { echo "not a Hopper (compute capability ${cap:-unknown}): no sm_90a cubin"; return 0; }
    "$PY" -c "from binarydm.kernels import cuda; print(cuda.build_cubin('sm_90a', source=cuda.BMMA_SOURCE))"
}
export -f cubin_sm90a
[ $DRY = 0 ] && stage cubin_sm90a 60 bash -c cubin_sm90a
stage versions 60 bash -c versions
PYTEST_ARGS=(-q -rfEs -p no:cacheprovider -m gpu tests/test_kernels.py)
for f in tests/test_kernel_*.py; do PYTEST_ARGS+=("$f"); done
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS+=(--timeout 60)
stage pytest_gpu 120 "$PY" -m pytest "${PYTEST_ARGS[@]}"
# Batch 256 first: the issue's targets are there, and a stage cut short keeps what it measured.
BENCH=("$PY" tools/bench_kernel.py --json "$OUT/bench_kernel.json" --batch 256 64 1 --target-us 10000)
BENCH_UNET=("$PY" tools/bench_kernel.py --json "$OUT/bench_unet.json" --out "$OUT/bench_unet.md" --no-layers
            --batch 256 64 1)
# BiDM's W1A1 UNet on the same kernels (sign codes), batch 64 only: the W1A1 figure beside the W1A4 one.
BENCH_W1A1=("$PY" tools/bench_kernel.py --json "$OUT/bench_unet_w1a1.json" --out "$OUT/bench_unet_w1a1.md"
            --no-layers --quant bidm --batch 64)
if [ $DRY = 1 ]; then
    BENCH+=(--dry-run)
    BENCH_UNET+=(--dry-run)
    BENCH_W1A1+=(--dry-run)
fi
# The trainer on the GPU (issue 28): the QAT step of ddpm-cifar10-32's architecture at batch 64 against FP
# fine-tuning, fp32 and bf16-mixed, with peak memory. The output is in the log.
if [ $DRY = 1 ]; then
    TRAIN=("$PY" tools/bench_train.py --unet attn16 --batch 2 --steps 2 --threads 1)
    SD15=("$PY" tools/bench_train.py --unet cond-tiny --batch 2 --steps 1 --threads 1)
    TRAIN_CHECK=("$PY" tools/train_check.py --out "$OUT/train_check" --dry-run --steps 12 --window 4)
else
    TRAIN=("$PY" tools/bench_train.py --device cuda --unet ddpm-cifar10-32 --batch 64 --steps 10)
    SD15=("$PY" tools/bench_train.py --device cuda --unet sd15 --batch 4 --steps 5)
    TRAIN_CHECK=("$PY" tools/train_check.py --out "$OUT/train_check")
fi
stage train_check 120 "${TRAIN_CHECK[@]}"
stage bench_train_bf16 60 "${TRAIN[@]}" --precision bf16-mixed
stage bench_train_fp32 60 "${TRAIN[@]}"
stage bench_train_sd15 90 "${SD15[@]}" --precision bf16-mixed --gradient-checkpointing --json "$OUT/bench_train_sd15.json"
stage bench_layers 150 "${BENCH[@]}" --no-unet --out "$OUT/bench_kernel.md"
stage bench_unet 130 "${BENCH_UNET[@]}"
stage bench_unet_w1a1 60 "${BENCH_W1A1[@]}"
rm -f "$OUT/mma_rates.jsonl"
stage mma_rates 60 bash -c mma_rates

# Summary: always gets its reserved seconds.
timeout -k 5 $((SUMMARY_RESERVE - 5)) "$PY" - "$OUT" "$STAGES" "$START" "$DRY" <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys, time
from pathlib import Path

out, stages_file, start, dry = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
log = (out / "device_check.log").read_text(errors="replace")
result = {"dry_run": dry, "seconds": round(time.time() - start), "stages": []}
for line in Path(stages_file).read_text().splitlines():
    name, rc, secs = line.split("\t")
    result["stages"].append({"name": name, "rc": rc, "seconds": int(secs),
                             "timed_out": rc in ("124", "137")})
m = re.search(r"^VERSIONS (.*)$", log, re.M)
result["versions"] = json.loads(m.group(1)) if m else None
smi = re.search(r"=== nvidia_smi \(.*?\n(.*?)=== nvidia_smi: exit", log, re.S)
result["nvidia_smi"] = smi.group(1) if smi else None
py = re.search(r"=== pytest_gpu \(.*?\n(.*?)=== pytest_gpu: exit", log, re.S)
if py:
    text = py.group(1)
    summary = [l for l in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|no tests ran)\b", l)]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary[-1])} \
        if summary else {}
    result["pytest"] = {"summary": summary[-1] if summary else None, "counts": counts,
                        "failed": re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)}
rates = out / "mma_rates.jsonl"
result["mma_rates"] = [json.loads(l) for l in rates.read_text().splitlines() if l.startswith("{")] \
    if rates.exists() else None
for key, name in (("bench", "bench_kernel.json"), ("bench_unet", "bench_unet.json"),
                  ("bench_unet_w1a1", "bench_unet_w1a1.json"), ("train_check", "train_check/train_check.json"),
                  ("bench_train_sd15", "bench_train_sd15.json")):
    p = out / name
    try:
        result[key] = json.loads(p.read_text()) if p.exists() else None
    except ValueError as err:
        result[key] = {"error": f"unreadable: {err}"}
(out / "device_check.json").write_text(json.dumps(result, indent=1))

# The short table last: the reply carries the end of the output.
print("\n==== device_check summary", "(DRY RUN: figures meaningless)" if dry else "")
for s in result["stages"]:
    print(f"{s['name']:14s} rc={s['rc']:>7s} {s['seconds']:4d}s{'  TIMED OUT' if s['timed_out'] else ''}")
if result.get("pytest"):
    print("pytest -m gpu:", result["pytest"]["summary"], *result["pytest"]["failed"][:10], sep="\n  ")
for r in (result.get("bench") or {}).get("layers", []):
    if r["batch"] in (1, 256) or dry:
        sp = r.get("speedup")
        print(f"b{r['batch']:<4d}{r['cin']:>4d}->{r['cout']:<4d}k{r['k']}s{r['stride']} {r['h']:>2d}x{r['w']:<2d} "
              f"nb{r['bases']} {r.get('variant', '-'):4s}: fp16 {r['fp16_graph_us'] or r['fp16_us'] or 0:9.1f} us  "
              f"w1a4 {r['w1a4_graph_us'] or r['w1a4_us'] or 0:9.1f} us  x{sp or 0:.2f}")
for r in (result.get("bench_unet") or {}).get("unet", []):
    print(f"UNet b{r['batch']} {r.get('variant', '-')}: fp16 {r['t_fp16_ms'] or 0:.3f} ms, W1A4 {r['t_w1a4_ms'] or 0:.3f} ms, "
          f"x{r.get('speedup') or 0:.2f}, graph={r['graph']}, rel.err {r['rel_err_vs_fake_quant']:.1e}")
tc = result.get("train_check") or {}
if tc.get("run"):
    print(f"train_check ok={tc.get('ok')}: parity max rel {tc['parity']['max_rel_diff']:.1e}, run "
          f"{tc['run']['global_step']} steps in {tc['run']['seconds']:.1f} s, syncs/step {tc['run']['sync_events_per_step']}, "
          f"resumed on CPU to {tc['run']['resumed_on_cpu_to_step']}")
for name, r in ((result.get("bench_train_sd15") or {}).get("unets") or {}).items():
    print(f"bench_train {name}: FP {r['fp']:.0f} ms, QAT {r['qat']:.0f} ms (x{r['qat'] / r['fp']:.2f}), peak QAT "
          f"{r.get('peak_qat', 0) / 2**30:.1f} GiB")
for r in result["mma_rates"] or []:
    print(f"{r['kind']:10s} " + (r["error"] if "error" in r else
          f"{r['tmacs']:8.1f} TMAC/s, {r['macs_per_sm_per_clk']:7.0f} MAC/SM/clk  ({r['instr']})"))
v = result.get("versions") or {}
print(f"bit-plane kernel self-check: {v.get('bmma_self_check')} ({v.get('bmma_error')}); default variant: "
      f"{v.get('default_variant')}; sm_90a cubin loaded: {v.get('wgmma_built')}; wgmma loops' self-checks: "
      f"bgmma {v.get('bgmma_self_check')} ({v.get('bgmma_error')}), bgmma_ws {v.get('bgmma_ws_self_check')} "
      f"({v.get('bgmma_ws_error')})")
errors = [e for k in ("bench", "bench_unet") for e in ((result.get(k) or {}).get("errors") or [])]
print(f"bench errors: {len(errors)}", *[f"{e['where']}: {e['error'][:160]}" for e in errors[:8]], sep="\n  ")
print(f"wrote {out / 'device_check.json'} after {result['seconds']}s")
EOF
rm -f "$STAGES"
