#!/usr/bin/env bash
# Checks a CUDA build of `peft` (scripts/cuda-build.sh) on a machine with an NVIDIA GPU, its
# driver and the CUDA 13 libraries (e.g. a PyTorch cu130 install's nvidia-* wheels) but no Rust
# toolchain. One prepared run, about 5 minutes; everything lands in $OUT:
#   gpu-check.md / gpu-check.json  the report (loss curves GPU vs CPU, tokens/s, peak device
#                                  memory against the planner, greedy tokens on both devices,
#                                  and the same shape trained by PyTorch+PEFT when available)
#   ldd.txt, hardware.txt, *.log   the raw material
#
#   OUT=/some/dir scripts/gpu-check.sh [PEFT_BINARY]    # default: target/cuda/peft (or .xz)
#
# Run from the repository root (it reads datasets/bolt-stories.jsonl and, for the PyTorch
# reference, models/stories260K/tokenizer.json). STEPS (default 30) sets the training length.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check-out}
STEPS=${STEPS:-30}
BIN=${1:-target/cuda/peft}
mkdir -p "$OUT"
say() { echo "gpu-check: $*" | tee -a "$OUT/gpu-check.log"; }

if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then
  xz -dkf "$BIN.xz" && chmod +x "$BIN"
fi
[ -x "$BIN" ] || { say "no binary at $BIN"; exit 1; }
BIN=$(readlink -f "$BIN")

# 1. The CUDA libraries the binary links (DT_NEEDED): libcuda.so.1 from the driver, the rest
#    from the nvidia-* wheels of a PyTorch install (cu13 layout: site-packages/nvidia/cu13/lib).
LIBDIRS=$(python3 - <<'PY' 2>/dev/null
import os, glob
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = set()
for r in roots:
    for pat in ("libcublas.so.13*", "libcublasLt.so.13*", "libcurand.so.10*", "libnvrtc.so.13*",
                "libcudart.so.13*"):
        for f in glob.glob(os.path.join(r, "**", pat), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
DRIVER=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
[ -z "$DRIVER" ] && DRIVER=$(find / -name libcuda.so.1 2>/dev/null | head -1)
export LD_LIBRARY_PATH="${LIBDIRS}${DRIVER:+:$(dirname "$DRIVER")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$BIN" > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then
  say "missing libraries:"; grep "not found" "$OUT/ldd.txt" | tee -a "$OUT/gpu-check.log"
  exit 1
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$BIN" hardware > "$OUT/hardware.txt" 2>&1

# Peak device memory: nvidia-smi's device-wide "used", sampled every 100 ms, minus the level
# before the command (so it includes the CUDA context, which the planner also counts).
used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1; }
measured() { # NAME CMD... : runs CMD with a timeout, logs, records base/peak MiB
  local name=$1; shift
  local base; base=$(used)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 \
    > "$OUT/mem-$name.csv" 2>/dev/null &
  local sampler=$!
  local t0; t0=$(date +%s.%N)
  timeout 300 "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  local t1; t1=$(date +%s.%N)
  echo "{\"name\":\"$name\",\"rc\":$rc,\"base_mib\":${base:-0},\"seconds\":$(awk "BEGIN{print $t1 - $t0}")}" \
    >> "$OUT/commands.jsonl"
  say "$name: exit $rc"
}

DATA=datasets/bolt-stories.jsonl
COMMON=(--model demo --data "$DATA" --rank 16 --alpha 32 --dropout 0 --seq-len 128
  --batch-size 4 --lr 3e-3 --max-steps "$STEPS" --val-fraction 0 --seed 7)
# 2. LoRA and QLoRA on the GPU and on the CPU from the same seed, the same data order.
for m in lora qlora; do
  for d in cpu cuda; do
    rm -rf "$OUT/run-$m-$d"
    measured "train-$m-$d" "$BIN" train "${COMMON[@]}" --method "$m" --device "$d" \
      --out "$OUT/run-$m-$d"
  done
  "$BIN" plan --model demo --data "$DATA" --method "$m" --rank 16 --alpha 32 --seq-len 128 \
    --batch-size 4 --json > "$OUT/plan-$m.json" 2> "$OUT/plan-$m.log"
done

# 3. Greedy generation on both devices: the base, and with the adapter trained on the GPU.
for d in cpu cuda; do
  measured "generate-base-$d" "$BIN" generate --device "$d" --temperature 0 \
    --max-new-tokens 60 --prompt "Once upon a time" --json
  measured "generate-lora-$d" "$BIN" generate --device "$d" --temperature 0 \
    --max-new-tokens 60 --chat --prompt "Tell me a story." --json --adapter "$OUT/run-lora-cuda"
done

# 4. The SmolLM2-135M shape (random weights) trained by PyTorch+PEFT and by us on this GPU.
if python3 -c 'import torch, transformers, peft' 2>/dev/null; then
  rm -rf "$OUT/smollm2-random"
  measured torch-lora-smollm2 python3 scripts/bench_torch_lora.py --device cuda --steps 12 \
    --save-dir "$OUT/smollm2-random"
  measured peft-bench-smollm2 "$BIN" bench train --model "$OUT/smollm2-random" \
    --configs lora,qlora --steps 12 --seq-len 256
else
  say "PyTorch+PEFT not importable: no reference run"
fi

# 5. The report.
python3 - "$OUT" "$STEPS" <<'PY'
import json, os, re, sys
out, steps = sys.argv[1], int(sys.argv[2])
def read(p, default=""):
    try:
        return open(os.path.join(out, p)).read()
    except OSError:
        return default
cmds = {}
for line in read("commands.jsonl").splitlines():
    c = json.loads(line)
    cmds[c["name"]] = c
def peak(name):
    vals = [int(v) for v in read(f"mem-{name}.csv").split() if v.strip().isdigit()]
    base = cmds.get(name, {}).get("base_mib", 0)
    return (max(vals) - base) if vals else None
def losses(run):
    try:
        return [l for _, l in json.load(open(os.path.join(out, run, "run.json")))["losses"]]
    except Exception:
        return []
def tok_s(name):
    m = re.search(r"([\d.]+) tokens/s", read(f"{name}.log"))
    return float(m.group(1)) if m else None
def planned(method):
    try:
        r = json.loads(read(f"plan-{method}.json"))
    except Exception:
        return None, None
    for c in r["candidates"]:
        q = c["request"]
        if q["seq_len"] == 128 and not q["grad_checkpointing"]:
            return r["device"], c["estimate"]["device_bytes"] or c["estimate"]["peak_bytes"]
    return r["device"], None
report = {"steps": steps, "training": [], "generation": [], "reference": {}}
md = ["# gpu-check", "", f"`peft` CUDA build; bundled stories260K, Bolt stories, batch 4 × 128 tokens, "
      f"{steps} steps, seed 7. GPU runs compute in bf16 (adapters f32), CPU runs in f32.", "",
      "| method | loss CPU first→last | loss GPU first→last | max abs loss diff | tokens/s CPU | tokens/s GPU | "
      "GPU peak (nvidia-smi, MiB) | planner (device, MiB) |", "|---|---|---|---:|---:|---:|---:|---|"]
for m in ("lora", "qlora"):
    lc, lg = losses(f"run-{m}-cpu"), losses(f"run-{m}-cuda")
    diff = max((abs(a - b) for a, b in zip(lc, lg)), default=None)
    dev, pb = planned(m)
    row = {"method": m, "cpu_losses": lc, "gpu_losses": lg, "max_abs_loss_diff": diff,
           "tokens_per_s_cpu": tok_s(f"train-{m}-cpu"), "tokens_per_s_gpu": tok_s(f"train-{m}-cuda"),
           "gpu_peak_mib": peak(f"train-{m}-cuda"), "planned_device": dev,
           "planned_bytes": pb, "exit": [cmds.get(f"train-{m}-{d}", {}).get("rc") for d in ("cpu", "cuda")]}
    report["training"].append(row)
    f = lambda l: f"{l[0]:.4f}→{l[-1]:.4f}" if l else "failed"
    md.append(f"| {m} | {f(lc)} | {f(lg)} | {diff if diff is None else round(diff, 5)} | "
              f"{row['tokens_per_s_cpu']} | {row['tokens_per_s_gpu']} | {row['gpu_peak_mib']} | "
              f"{dev}, {None if pb is None else round(pb / 2**20)} |")
md += ["", "| generation | CPU tokens = GPU tokens | first differing position |", "|---|---|---:|"]
for g in ("base", "lora"):
    def ids(d):
        try:
            return json.loads(read(f"generate-{g}-{d}.log").strip().splitlines()[-1])["token_ids"]
        except Exception:
            return None
    a, b = ids("cpu"), ids("cuda")
    first = None
    if a is not None and b is not None:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                     None if len(a) == len(b) else min(len(a), len(b)))
    report["generation"].append({"what": g, "cpu": a, "gpu": b, "same": a == b and a is not None,
                                 "first_difference": first})
    md.append(f"| {g} | {a == b and a is not None} | {first} |")
torch = read("torch-lora-smollm2.log").strip().splitlines()
ours = read("peft-bench-smollm2.log")
if torch or ours:
    report["reference"] = {"torch_peft": torch[-1] if torch else None, "peft_bench": ours}
    md += ["", "## SmolLM2-135M shape on this GPU (random weights, seq 256, batch 1, LoRA r8)", "",
           "PyTorch+PEFT (bf16 base, f32 adapters): " + (torch[-1] if torch else "not run"), "",
           "peft bench train (`--device auto` = cuda):", "", ours]
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
