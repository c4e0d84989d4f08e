#!/usr/bin/env bash
# Every GPU test and benchmark in one run, on one card, ending with one comparison table.
#
#   bash benchmarks/gpu_suite.sh            # on a GPU machine, from the repository root
#
# Needs wheels in .whl/: fla (../shared/gpu/wheels.sh) and, absent from the GPU image, jsonschema with
# attrs, jsonschema-specifications, referencing and rpds-py (cp312 manylinux). Writes logs and JSON
# rows into $OUT (default ./gpu_suite_out). SUITE_PARTS picks the parts and their order (default
# "tests baseline ours acaround noac vlm"; also "autotune": no AC with Inductor's max-autotune, and
# "e2e": benchmarks/gpu_e2e.py, the real CLI end to end, E2E_CELLS picking its cells and
# E2E_OVERRIDES (space-separated key=value) added to each; "layouts":
# the bench on the e2e spec, packed and one-document rows; "lora": LoRA against full fine-tuning at
# 8k (issue 15); "levers": issue 14's precision levers,
# one bench row each; "auto": activation checkpointing mode auto under AUTO_BUDGET_GIB at AUTO_SEQS;
# "images4": the one/fast/images cell on 8k rows of four 448x448 images each (issue 16's data share;
# IMAGES4_WORKERS collating workers, default 4); "realistic": `assemble train` and `assemble bench`
# (packed and the set's own rows) of the e2e spec on a generated set shaped like real use (issue 22);
# "longctx": one document of LONG_SEQS tokens per step through `assemble train` (issue 22); "masters":
# fp32 against bf16 master parameters, MASTERS_STEPS steps of the realistic set, both loss curves;
# "fp8": float8 rowwise matmuls against the shipped precision, bench rows and FP8_STEPS-step curves;
# "titan": torchtitan 0.3.0's own Qwen3.5 4B trained its way (benchmarks/torchtitan_anchor.py: its
# compile, FSDP2, full AC and CUDA graph; wheels from benchmarks/titan_wheels.sh) at BASE_SEQS, an
# anchor row in baseline_torchtitan.json, again without the CUDA graph if that run leaves no row;
# LEVER_SPEC / LEVER_BACKEND replace their spec and backend, e.g. for a CPU dry run); ANCHORS the baseline's anchor rows
# (default "plain liger plain-noac liger-noac"), BASE_FLAGS its extra flags (default --memory-peak);
# SUITE_SEQS the text sizes (BASE_SEQS, NOAC_SEQS per part); SUITE_TESTS the pytest selection
# (default tests/gpu); T_<part> a part's time limit in seconds; SUITE_QUICK=1 runs fewer steps.
#
# Triton's autotuning (fla's kernels) and Inductor's compiles take minutes on a fresh machine, so
# both caches live in .gpu_cache/ (autotune results included: TRITON_CACHE_AUTOTUNING=1), which a
# later run on the same machine reuses: on an H200 the baseline's 8k+16k part took 56 s on a warm
# machine against more than 150 s (cut at its limit) on a fresh one. Packed, the caches exceed the
# 16 MiB a device call sends back, so a fresh machine starts cold.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_suite_out}
mkdir -p "$OUT"
PARTS=${SUITE_PARTS:-"tests baseline ours acaround noac vlm"}
SEQS=${SUITE_SEQS:-"4096 8192 16384 32768"}
STEPS=5; WARMUP=2
[ "${SUITE_QUICK:-0}" = 1 ] && STEPS=3 && WARMUP=2
has() { [[ " $PARTS " == *" $1 "* ]]; }

if [ -d .whl ] && ! python3 -c "import fla" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

CACHE=$PWD/.gpu_cache
mkdir -p "$CACHE"
export TRITON_CACHE_DIR=$CACHE/triton TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor TRITON_CACHE_AUTOTUNING=1

seq_args() { for s in $1; do printf -- "--seq %s " "$s"; done; }

{
  date -u +"%Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'fla', fla.__version__)"
  git log --oneline -1 2>/dev/null || true
} | tee "$OUT/env.txt"

t() { local var="T_$1"; echo "${!var:-$2}"; }  # per-part time limit: T_<part>=seconds

run_part() {
  case "$1" in
    tests)
      echo "== GPU tests"
      timeout "$(t tests 900)" python3 -m pytest ${SUITE_TESTS:-tests/gpu} -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40 ;;
    baseline)
      # The anchors a user would pick: transformers, and transformers + Liger-Kernel, each with and
      # without gradient checkpointing (ANCHORS picks; Liger patches classes, so one process each).
      for anchor in ${ANCHORS:-plain liger plain-noac liger-noac}; do
        echo "== transformers anchor: $anchor"
        flags=""
        [[ $anchor == liger* ]] && flags="--liger"
        [[ $anchor == *-noac ]] && flags="$flags --no-checkpointing"
        timeout "$(t baseline 300)" python3 benchmarks/hf_baseline.py $flags --seq ${BASE_SEQS:-$SEQS} --steps $STEPS \
          --warmup $WARMUP ${BASE_FLAGS---memory-peak} --json "$OUT/baseline_$anchor.json" 2>&1 | grep -v "^\s*$" | tail -60
      done ;;
    layouts)
      echo "== ours through assemble train's step: packed rows and one document per row (the e2e spec)"
      timeout "$(t layouts 300)" python3 cli.py bench benchmarks/specs/e2e_4b.yaml -o ops.backend=fast $(seq_args "${BASE_SEQS:-$SEQS}") \
        --layout packed --layout one-document --steps $STEPS --warmup $WARMUP --no-profile --json "$OUT/ours_layouts.json" 2>&1 | tail -30 ;;
    ours)
      echo "== ours: fast ops, compile, full activation checkpointing (memory capped to 78 GiB, what an 80 GB H100 leaves a process)"
      timeout "$(t ours 360)" python3 cli.py bench specs/qwen3_5_4b.yaml -o ops.backend=fast $(seq_args "$SEQS") --steps $STEPS \
        --warmup $WARMUP --memory-cap-gib 78 --memory-peak --label "ours, full AC" --json "$OUT/ours_full_ac.json" 2>&1 | tail -80
      if [ ! -f "$OUT/ours_full_ac.json" ]; then
        echo "== ours, compile failed or timed out: eager fast ops, full activation checkpointing"
        timeout "$(t eager 200)" python3 cli.py bench specs/qwen3_5_4b.yaml -o ops.backend=fast \
          -o "parallel.compile={linear: {enabled: false}, full: {enabled: false}, vision: {enabled: false}}" \
          --seq 8192 --seq 16384 --steps $STEPS --warmup $WARMUP --label "ours eager, full AC" --json "$OUT/ours_eager.json" 2>&1 | tail -60
      fi ;;
    acaround)
      echo "== ours: fast ops, compile, full activation checkpointing placed around the compiled blocks (78 GiB cap)"
      timeout "$(t acaround 300)" python3 cli.py bench specs/qwen3_5_4b.yaml -o ops.backend=fast \
        -o parallel.activation_checkpointing.placement=around_compile $(seq_args "$SEQS") --steps $STEPS --warmup $WARMUP \
        --memory-cap-gib 78 --memory-peak --label "ours, full AC around compile" --json "$OUT/ours_ac_around.json" 2>&1 | tail -60 ;;
    noac)
      echo "== ours: fast ops, compile, no activation checkpointing"
      timeout "$(t noac 300)" python3 cli.py bench specs/qwen3_5_4b.yaml -o ops.backend=fast -o parallel.activation_checkpointing.mode=none \
        $(seq_args "${NOAC_SEQS:-4096 8192}") --steps $STEPS --warmup $WARMUP --label "ours, no AC" --json "$OUT/ours_no_ac.json" 2>&1 | tail -60 ;;
    autotune)
      echo "== ours: fast ops, no activation checkpointing, compile mode max-autotune-no-cudagraphs (Inductor's matmul templates)"
      timeout "$(t autotune 500)" python3 cli.py bench specs/qwen3_5_4b.yaml -o ops.backend=fast -o parallel.activation_checkpointing.mode=none \
        -o parallel.compile.linear.mode=max-autotune-no-cudagraphs -o parallel.compile.full.mode=max-autotune-no-cudagraphs \
        $(seq_args "${NOAC_SEQS:-4096 8192}") --steps $STEPS --warmup $WARMUP --label "ours, no AC, max-autotune" \
        --json "$OUT/ours_no_ac_autotune.json" 2>&1 | tail -60 ;;
    e2e)
      echo "== the real CLI end to end (benchmarks/gpu_e2e.py)"
      timeout "$(t e2e 1500)" python3 benchmarks/gpu_e2e.py --out "$OUT" ${E2E_CELLS:+--cells $E2E_CELLS} \
        $(for o in ${E2E_OVERRIDES:-}; do printf -- "--override %s " "$o"; done) 2>&1 | tail -30 ;;
    levers)
      # Issue 14's precision levers through the training step, one row each at LEVER_SEQS (default 8k),
      # packed and one document per row: fp32 masters (the default), no fp32-kept parameters (the linear
      # layers then compile fullgraph), bf16 masters and AdamW states (what the anchors train with), both.
      for lever in "fp32 masters|" "no fp32-kept params|-o parallel.fsdp.fp32_params=[]" "bf16 masters|-o train.dtype=bfloat16" \
                   "bf16 masters, no fp32-kept params|-o train.dtype=bfloat16 -o parallel.fsdp.fp32_params=[]"; do
        label=${lever%%|*}; flags=${lever#*|}
        echo "== ours, lever: $label"
        timeout "$(t levers 300)" python3 cli.py bench "${LEVER_SPEC:-specs/qwen3_5_4b.yaml}" -o ops.backend=${LEVER_BACKEND:-fast} $flags \
          $(seq_args "${LEVER_SEQS:-8192}") --layout packed --layout one-document --steps $STEPS --warmup $WARMUP --no-profile \
          --label "ours, $label" --json "$OUT/ours_lever_${label//[^a-z0-9]/_}.json" 2>&1 | tail -12
      done ;;
    lora)
      # Issue 15: LoRA rank 16 on every linear layer (bf16 frozen base, fp32 adapters) next to full
      # fine-tuning, 8k packed tokens per step, through the training step (target peak <= 24 GiB).
      for row in "full fine-tuning|specs/qwen3_5_4b.yaml" "LoRA r16, all linear layers|specs/qwen3_5_4b_lora.yaml"; do
        label=${row%%|*}; spec=${row#*|}
        echo "== ours, $label"
        timeout "$(t lora 300)" python3 cli.py bench "$spec" -o ops.backend=fast --seq 8192 --layout packed --steps $STEPS \
          --warmup $WARMUP --no-profile --label "ours, $label" --json "$OUT/ours_lora_${label//[^a-z0-9]/_}.json" 2>&1 | tail -12
      done ;;
    auto)
      # Issue 14: `mode: auto` under a 40 GiB budget at 16k, against the fixed plans (acaround, ours), with
      # bf16 masters (AUTO_FLAGS): fp32 masters and AdamW states alone are 68.8 GiB, which no plan fits in 40.
      echo "== ours: activation checkpointing mode auto, budget ${AUTO_BUDGET_GIB:-40} GiB"
      timeout "$(t auto 400)" python3 cli.py bench "${LEVER_SPEC:-specs/qwen3_5_4b.yaml}" -o ops.backend=${LEVER_BACKEND:-fast} ${AUTO_FLAGS--o train.dtype=bfloat16} \
        -o parallel.activation_checkpointing.mode=auto -o parallel.activation_checkpointing.memory_budget_gib=${AUTO_BUDGET_GIB:-40} \
        $(seq_args "${AUTO_SEQS:-16384}") --steps $STEPS --warmup $WARMUP --no-profile --label "ours, AC auto ${AUTO_BUDGET_GIB:-40} GiB" \
        --json "$OUT/ours_ac_auto.json" 2>&1 | tail -20 ;;
    images4)
      echo "== the real CLI, 8k rows of four 448x448 images each (benchmarks/make_large_dataset.py)"
      python3 benchmarks/make_large_dataset.py /root/ds_images4 --records 4000 --image-share 1 --image-size 448 --caption-words 1800
      timeout "$(t images4 600)" python3 benchmarks/gpu_e2e.py --out "$OUT" --cells one/fast/images \
        --override 'data.sources=[{"path":"/root/ds_images4/records.jsonl"}]' --override "data.workers=${IMAGES4_WORKERS:-4}" 2>&1 | tail -30 ;;
    realistic)
      # Issue 22: the shipped spec on a set shaped like real use (log-normal chats around 500 words,
      # one in ten around a 448x448 image, rows 99.8% full): `assemble train` through the real CLI,
      # then `assemble bench` on the same spec, its synthetic packed row and the set's own rows.
      echo "== the real CLI and the bench on the realistic set (benchmarks/make_large_dataset.py --median-words 500)"
      python3 benchmarks/make_large_dataset.py /root/ds_realistic --records 20000 --image-share 0.1 --image-size 448 --median-words 500
      sources='data.sources=[{"path":"/root/ds_realistic/records.jsonl"}]'
      timeout "$(t realistic 600)" python3 benchmarks/gpu_e2e.py --out "$OUT/realistic" --runs /root/e2e_runs_realistic --cells one/fast/images \
        --override "$sources" --override "data.workers=${REALISTIC_WORKERS:-2}" 2>&1 | tail -30
      timeout "$(t realistic 600)" python3 cli.py bench benchmarks/specs/e2e_4b.yaml -o ops.backend=fast -o "$sources" \
        --seq 8192 --layout packed --layout data --steps $STEPS --warmup $WARMUP \
        --label "ours as shipped, realistic set" --json "$OUT/ours_realistic.json" 2>&1 | tail -60 ;;
    masters)
      # Issue 22: do bf16 masters (train.dtype=bfloat16) lose anything against the default fp32
      # masters? MASTERS_STEPS (default 200) steps of the realistic set each, then both loss curves.
      python3 benchmarks/make_large_dataset.py /root/ds_realistic --records 20000 --image-share 0.1 --image-size 448 --median-words 500
      for dtype in float32 bfloat16; do
        echo "== the real CLI, $dtype masters, ${MASTERS_STEPS:-200} steps of the realistic set"
        timeout "$(t masters 900)" python3 cli.py train benchmarks/specs/e2e_4b.yaml -o ops.backend=fast \
          -o 'data.sources=[{"path":"/root/ds_realistic/records.jsonl"}]' -o data.workers=2 -o train.dtype=$dtype \
          -o train.steps=${MASTERS_STEPS:-200} -o train.log_every=1 -o "train.schedule={name: cosine, warmup_steps: 20, min_lr_ratio: 0.1}" \
          --output-dir /root/masters_$dtype > "$OUT/masters_$dtype.log" 2>&1
        tail -2 "$OUT/masters_$dtype.log"
      done
      python3 benchmarks/compare_loss_curves.py /root/masters_float32/metrics.jsonl /root/masters_bfloat16/metrics.jsonl \
        --labels "fp32 masters" "bf16 masters" | tee "$OUT/masters_curves.txt" ;;
    fp8)
      # Issue 22: float8 rowwise matmuls (torchao; `.whl/torchao-*.whl` from `bash ../shared/gpu/wheels.sh
      # torchao==0.18.0`) against the shipped precision: `assemble bench` on the realistic set's own
      # rows, both in this call, then FP8_STEPS (default 200) steps of `assemble train` each and
      # both loss curves (the masters part's float32 run is the bf16-matmul curve when it ran;
      # FP8_STEPS=0: the bench rows only).
      python3 -c "import torchao" 2>/dev/null || { echo "torchao is not installed: add its wheel to .whl"; return; }
      python3 benchmarks/make_large_dataset.py /root/ds_realistic --records 20000 --image-share 0.1 --image-size 448 --median-words 500
      sources='data.sources=[{"path":"/root/ds_realistic/records.jsonl"}]'
      for matmul in param_dtype float8_rowwise; do
        timeout "$(t fp8 600)" python3 cli.py bench benchmarks/specs/e2e_4b.yaml -o ops.backend=fast -o "$sources" \
          -o parallel.precision.matmul=$matmul --layout data --steps $STEPS --warmup $WARMUP \
          --label "matmuls $matmul, realistic set" --json "$OUT/fp8_bench_$matmul.json" 2>&1 | tail -40
      done
      [ "${FP8_STEPS:-200}" = 0 ] && return  # the bench rows only
      for matmul in param_dtype float8_rowwise; do
        [ "$matmul" = param_dtype ] && [ -f /root/masters_float32/metrics.jsonl ] && continue
        echo "== the real CLI, matmuls $matmul, ${FP8_STEPS:-200} steps of the realistic set"
        timeout "$(t fp8 900)" python3 cli.py train benchmarks/specs/e2e_4b.yaml -o ops.backend=fast -o "$sources" \
          -o data.workers=2 -o parallel.precision.matmul=$matmul -o train.steps=${FP8_STEPS:-200} -o train.log_every=1 \
          -o "train.schedule={name: cosine, warmup_steps: 20, min_lr_ratio: 0.1}" \
          --output-dir /root/fp8_$matmul > "$OUT/fp8_$matmul.log" 2>&1
        tail -2 "$OUT/fp8_$matmul.log"
      done
      reference=/root/masters_float32/metrics.jsonl; [ -f "$reference" ] || reference=/root/fp8_param_dtype/metrics.jsonl
      python3 benchmarks/compare_loss_curves.py "$reference" /root/fp8_float8_rowwise/metrics.jsonl \
        --labels "bf16 matmuls" "float8 rowwise matmuls" | tee "$OUT/fp8_curves.txt" ;;
    longctx)
      # Issue 22: one document per row of LONG_SEQS tokens (default 32k 64k 128k) through `assemble
      # train` with the shipped defaults (activation checkpointing auto under the card's memory); a
      # size that cannot fit is refused before step 1 with what to set, which the log keeps.
      python3 benchmarks/make_large_dataset.py /root/ds_long --records 32 --image-share 0 --words 150000
      for seq in ${LONG_SEQS:-32768 65536 131072}; do
        echo "== the real CLI, one document of $seq tokens per step"
        timeout "$(t longctx 420)" python3 benchmarks/gpu_e2e.py --out "$OUT/long_$seq" --runs /root/e2e_runs_long --cells one/fast/text \
          --override 'data.sources=[{"path":"/root/ds_long/records.jsonl"}]' --override "train.tokens_per_step=$seq" \
          --override "data.packing.length=$seq" --override "train.steps=${LONG_STEPS:-6}" 2>&1 | tail -12
      done ;;
    titan)
      # Issue 22, item 4: torchtitan's Qwen3.5 4B as torchtitan trains it, beside the transformers anchors.
      echo "== torchtitan anchor: torchtitan 0.3.0's Qwen3.5 4B"
      if ! ls .whl/torchtitan-*.whl >/dev/null 2>&1; then
        echo "no .whl/torchtitan-*.whl: run bash benchmarks/titan_wheels.sh where there is an index"
      else
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
          .whl/torchtitan-*.whl .whl/spmd_types-*.whl .whl/tyro-*.whl .whl/docstring_parser-*.whl .whl/typeguard-*.whl \
          .whl/torchdata-*.whl || { echo "installing the torchtitan wheels failed"; return; }
        for graphs in "" "--no-cuda-graphs"; do
          [ -f "$OUT/baseline_torchtitan.json" ] && break
          PYTHONPATH=/tmp/site:$PYTHONPATH timeout "$(t titan 600)" python3 benchmarks/torchtitan_anchor.py $graphs \
            $(seq_args "${BASE_SEQS:-8192}") --steps $STEPS --warmup $WARMUP --json "$OUT/baseline_torchtitan.json" 2>&1 \
            | grep -v "^\s*$" | tee "$OUT/titan${graphs:+_no_graphs}.log" | tail -40
        done
      fi ;;
    vlm)
      echo "== ours: VLM row, four 448x448 images in 8k tokens"
      timeout "$(t vlm 300)" python3 cli.py bench specs/qwen3_5_4b.yaml -o ops.backend=fast --seq 8192 --images 4x448x448 \
        --steps $STEPS --warmup $WARMUP --label "ours VLM, full AC" --json "$OUT/ours_vlm.json" 2>&1 | tail -40 ;;
  esac
}
for part in $PARTS; do
  start=$SECONDS
  run_part "$part"
  echo "== $part took $((SECONDS - start)) s" | tee -a "$OUT/timing.txt"
done

echo "== comparison (same run, same card)"
cat "$OUT/env.txt" | head -3
# Ours against the fastest and the leanest anchor row at each size.
python3 -m assembler.bench.report $(ls "$OUT"/ours_*.json 2>/dev/null) --anchors $(ls "$OUT"/baseline_*.json 2>/dev/null) --memory-at 16384
[ -f "$OUT/tests.log" ] && grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
cat "$OUT/timing.txt"
