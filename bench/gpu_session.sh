#!/usr/bin/env bash
# One batched GPU session on the lent H100: run from the repo root with $OUT set.
#   bash bench/gpu_session.sh budget    # ONE call for a 15-minute device budget (BUDGET_S=480 s of it; run
#                                       #   with timeout_s 540): the figures for main's default kernels,
#                                       #   then wgmma, Winograd and the VGG16 step variants, every row validated
#                                       #   against PyTorch; bench/targets.py's verdict in $OUT/targets.md
#   bash bench/gpu_session.sh tests     # GPU test suite, gpuconv check, cold/warm kernel load
#   bash bench/gpu_session.sh resnet    # resnet50 step (fp32, TF32) and resnet20 10 epochs beside their PyTorch
#                                       #   twins, plan vs NVML vs PyTorch memory of resnet18/50 and googlenet
#   bash bench/gpu_session.sh sanitize  # compute-sanitizer memcheck (+ racecheck on shared-memory kernels)
#   bash bench/gpu_session.sh bench     # benchmarks vs PyTorch/cuDNN and the Fashion-MNIST training run
#   bash bench/gpu_session.sh verify    # what the last sessions left GPU-unverified: the cp.async GEMM
#   bash bench/gpu_session.sh verify2   #   schedule (tests, reg vs async rows beside cuDNN/cuBLAS); the
#   bash bench/gpu_session.sh verify3   #   autotuner and the max-batch 50-step run; racecheck to the end
#   bash bench/gpu_session.sh baseline REV  # (here, not on the GPU) kernels/ of git revision REV into
#                                           #   .data/baseline-kernels: carry it to the GPU, then
#   bash bench/gpu_session.sh ab        # conv and FC timed with those kernels and with ours, one run each
#   bash bench/gpu_session.sh winograd  # Winograd F(2x2,3x3): GPU tests, then Winograd vs our GEMM vs cuDNN
#                                       #   (fp32 and TF32 rows)
#   bash bench/gpu_session.sh winograd-vgg  # the VGG16 step, fp32 and TF32, GPUCONV_CONV_ALGO=gemm / winograd / auto
#   bash bench/gpu_session.sh graph     # CUDA-graph capture of the planned step: GPU tests (replay vs eager),
#                                       #   then the training rows (fmnist, VGG16 step) with and without it
#   bash bench/gpu_session.sh wgmma     # the Hopper wgmma GEMMs (sm_90a, fc.cu and conv.cu): GPU tests first
#                                       #   (exact-input, truncation, FC layer, every conv tile), memcheck of
#                                       #   them, then bench_fc's and bench_conv's [wgmma] rows
# "-m 'gpu and not emu'": the emu variants of the gpu tests run the CPU emulator (CI does).
# Logs land in $OUT (at most 8 files come back).
# Kernel variants: each step is its own process, whose kernel configuration (gpuconv.kernel_config)
# is resolved once from its GPUCONV_* variables (`env GPUCONV_CONV_ALGO=auto python3 ...`); inside
# one bench process the variant rows switch with kernel_config.using (bench/harness.with_config).
# `gpuconv plan` prints the kernel each layer and pass will run under that configuration.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpuconv-out}
mkdir -p "$OUT"
what=${1:-tests}
{ date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"; } > "$OUT/env.txt" 2>&1

case "$what" in
budget)  # most important first; each step cut off at the deadline, every row printed as it finishes
  start=$SECONDS end=$((SECONDS + ${BUDGET_S:-480}))
  step() {  # step CAP_S LOG COMMAND...: run COMMAND for at most CAP_S (and not past the deadline) >> $OUT/LOG
    local cap=$1 log=$2; shift 2
    local t=$((end - SECONDS)); ((t > cap)) && t=$cap
    if ((t < 20)); then echo "skipped (deadline): $*" >> "$OUT/steps.log"; return; fi
    echo "$(date -u +%T) up to ${t}s: $*" >> "$OUT/steps.log"
    timeout "$t" "$@" >> "$OUT/$log" 2>&1
    echo "  rc=$? after $((SECONDS - start))s of the budget" >> "$OUT/steps.log"
  }
  # 1. main's default kernels: the figures (conv, VGG16 step, FC, pooling)
  step 200 conv.log python3 bench/bench_conv.py --wgmma off --json
  step 70 train.log python3 bench/bench_train.py --vgg16-step fp32,tf32 --json
  step 90 train.log python3 bench/bench_train.py --twin-step fp32,tf32 --json   # resnet50 step beside its PyTorch twin
  step 60 ops.log python3 bench/bench_fc.py --wgmma off --json
  step 30 ops.log python3 bench/bench_pool.py
  # 2. the never-timed candidates, each in a process of its own (a fault cannot take other rows with it)
  step 120 wgmma.log python3 bench/bench_conv.py --wgmma only --json
  step 40 wgmma.log python3 bench/bench_fc.py --wgmma only --json
  step 120 winograd.log python3 bench/bench_winograd.py --json
  step 70 train.log env GPUCONV_CONV_ALGO=auto GPUCONV_CACHE_DIR=/tmp/gpuconv-cache python3 bench/bench_train.py \
      --vgg16-step fp32,tf32 --json
  step 60 train.log env GPUCONV_CONV_ALGO=auto GPUCONV_GEMM_WGMMA=1 GPUCONV_CACHE_DIR=/tmp/gpuconv-cache \
      python3 bench/bench_train.py --vgg16-step tf32 --json
  # 2b. branching nets beside their PyTorch twin (same graph and parameters; our scores and gradients
  #     validated against the twin's on the same inputs; the resnet50 step runs in 1.): resnet20 on
  #     Fashion-MNIST, memory
  #     (into train.log: the 8 files that come back are taken)
  step 150 train.log env GPUCONV_DATA=${GPUCONV_DATA:-$PWD/.data} python3 bench/bench_train.py --resnet20-gpu --json
  step 240 train.log python3 bench/bench_memory.py --models resnet18 resnet50 googlenet --modes train --torch-twins
  # 3. the verdict (even past the deadline: it reads logs, no GPU)
  { echo "commit: ${GPUCONV_COMMIT:-unknown}"; cat "$OUT/env.txt"; echo
    python3 bench/targets.py "$OUT"/conv.log "$OUT"/ops.log "$OUT"/train.log "$OUT"/wgmma.log "$OUT"/winograd.log
  } > "$OUT/targets.md" 2>> "$OUT/steps.log"
  cat "$OUT/steps.log" "$OUT/targets.md"; grep -h "WARNING\|Error" "$OUT"/*.log | sort | uniq -c | head -20
  ;;
baseline)  # runs where git is: the GPU machine gets the working tree without .git
  rev=${2:?usage: gpu_session.sh baseline REV}
  rm -rf .data/baseline-kernels && mkdir -p .data/baseline-kernels
  for f in $(git ls-tree --name-only "$rev" kernels/); do git show "$rev:$f" > ".data/baseline-kernels/${f#kernels/}"; done
  git rev-parse --short "$rev" > .data/baseline-kernels/REVISION
  echo "carry .data/baseline-kernels ($(ls .data/baseline-kernels | wc -l) files, $(cat .data/baseline-kernels/REVISION))"
  ;;
ab)  # the same launchers over two kernel sources (entry names and arguments must match)
  base=.data/baseline-kernels
  [ -f "$base/conv.cu" ] || { echo "no $base: run 'bash bench/gpu_session.sh baseline REV' and carry it"; exit 2; }
  echo "baseline kernels: $(cat $base/REVISION 2>/dev/null)" >> "$OUT/env.txt"
  # --wgmma off: the baseline has no sm_90a variant (both sides time the same rows)
  GPUCONV_KERNEL_DIR=$PWD/$base timeout 200 python3 bench/bench_conv.py --wgmma off > "$OUT/conv_baseline.log" 2>&1
  timeout 200 python3 bench/bench_conv.py --wgmma off > "$OUT/conv_current.log" 2>&1
  GPUCONV_KERNEL_DIR=$PWD/$base timeout 80 python3 bench/bench_fc.py --wgmma off > "$OUT/fc_baseline.log" 2>&1
  timeout 80 python3 bench/bench_fc.py --wgmma off > "$OUT/fc_current.log" 2>&1
  tail -n 2 "$OUT"/conv_*.log "$OUT"/fc_*.log
  ;;
tests)
  rm -rf ~/.cupy/kernel_cache
  { echo "cold:"; python3 -m gpuconv kernels --load; echo "warm (new process, disk cache):"; python3 -m gpuconv kernels --load; } > "$OUT/kernel_load.txt" 2>&1
  timeout 420 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider -rf --timeout 120 tests > "$OUT/gpu_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu_tests.log"
  { for m in small fmnist; do timeout 60 python3 -m gpuconv check $m; done; } > "$OUT/check.log" 2>&1
  tail -n 5 "$OUT/gpu_tests.log"
  ;;
sanitize)
  export GPUCONV_DEBUG_ALLOC=1
  timeout 280 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider -x \
      tests/test_conv.py tests/test_pool.py tests/test_fc.py tests/test_activation.py tests/test_dropout.py \
      tests/test_loss.py tests/test_optim.py tests/test_batchnorm.py tests/test_lrn.py tests/test_local.py \
      > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?" >> "$OUT/memcheck.log"
  timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider -x \
      tests/test_conv.py tests/test_fc.py tests/test_batchnorm.py tests/test_loss.py -k "not float64" \
      > "$OUT/racecheck.log" 2>&1
  echo "racecheck rc=$?" >> "$OUT/racecheck.log"
  tail -n 3 "$OUT/memcheck.log" "$OUT/racecheck.log"
  ;;
bench)
  cp -r ${GPUCONV_DATA_SRC:-.data/fashion-mnist} /tmp/fmnist 2>/dev/null && export GPUCONV_DATA=/tmp/fmnist
  timeout ${BENCH_TIMEOUT:-540} python3 bench/run_all.py ${BENCH_ARGS:-} --out "$OUT/results.md" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?" >> "$OUT/bench.log"
  tail -n 3 "$OUT/bench.log"
  ;;
memory)
  cp -r .data/fashion-mnist /tmp/fmnist 2>/dev/null && export GPUCONV_DATA=/tmp/fmnist
  timeout 100 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider tests/test_conv.py tests/test_train.py tests/test_arena.py tests/test_profile.py > "$OUT/gpu_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu_tests.log"
  timeout 150 python3 -m gpuconv train --model fmnist --epochs 10 --device cuda --schedule cosine --log-every 200 --out /tmp/run > "$OUT/train.log" 2>&1
  echo "train rc=$?" >> "$OUT/train.log"
  timeout 200 python3 bench/bench_memory.py --json "$OUT/memory.json" > "$OUT/memory.log" 2>&1
  timeout 90 python3 bench/bench_memory.py --max-batch --model alexnet --budget 0.5 >> "$OUT/memory.log" 2>&1
  { python3 -m gpuconv plan vgg16 --batch 64 --optimizer momentum --budget 0.9
    python3 -m gpuconv plan vgg16 --optimizer momentum --budget 0.9 --max-batch
    timeout 60 python3 -m gpuconv profile vgg16 --batch 32 --steps 3 --out /tmp/prof; } > "$OUT/profile.txt" 2>&1
  cp /tmp/prof/profile.html "$OUT/" 2>/dev/null
  timeout 90 python3 bench/bench_conv.py --only "L1,AlexNet conv1" >> "$OUT/gpu_tests.log" 2>&1
  tail -n 3 "$OUT/gpu_tests.log" "$OUT/train.log" "$OUT/memory.log"
  ;;
resnet)  # the branching-net rows alone (as budget's step 2b, without its deadline); data: .data/fashion-mnist
  export GPUCONV_DATA=${GPUCONV_DATA:-$PWD/.data}
  timeout 150 python3 bench/bench_train.py --twin-step fp32,tf32 --json > "$OUT/resnet.log" 2>&1
  timeout 200 python3 bench/bench_train.py --resnet20-gpu --json >> "$OUT/resnet.log" 2>&1
  timeout 240 python3 bench/bench_memory.py --models resnet18 resnet50 googlenet --modes train --torch-twins \
      --json "$OUT/memory.json" > "$OUT/memory.log" 2>&1
  grep -E "^\| train|WARNING|Error" "$OUT/resnet.log"; cat "$OUT/memory.log"
  ;;
memory2)
  timeout 60 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider tests/test_net.py tests/test_arena.py tests/test_profile.py tests/test_budget.py > "$OUT/gpu_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu_tests.log"
  timeout 200 python3 bench/bench_memory.py --json "$OUT/memory.json" > "$OUT/memory.log" 2>&1
  timeout 100 python3 bench/bench_memory.py --max-batch --model alexnet --budget 0.5 >> "$OUT/memory.log" 2>&1
  timeout 60 python3 -c "from bench.bench_train import gpu_vgg16_step; from bench.harness import print_rows; print_rows([r for p in ('fp32', 'tf32') for r in gpu_vgg16_step(64, p)])" > "$OUT/vgg16.log" 2>&1
  timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider -x \
      tests/test_pool.py tests/test_batchnorm.py tests/test_loss.py tests/test_fc.py -k "not float64 and not large and not loop" \
      > "$OUT/racecheck.log" 2>&1
  echo "racecheck rc=$?" >> "$OUT/racecheck.log"
  ;;
verify)   # the cp.async schedule: GPU tests of both schedules, then reg vs async beside cuDNN/cuBLAS
  timeout 150 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider tests/test_conv.py tests/test_fc.py \
      tests/test_autotune.py > "$OUT/gpu_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu_tests.log"
  timeout 250 python3 bench/bench_conv.py --schedules reg,async > "$OUT/conv_schedules.log" 2>&1
  timeout 150 python3 bench/bench_fc.py > "$OUT/fc_schedules.log" 2>&1
  tail -n 3 "$OUT/gpu_tests.log"; grep -c async "$OUT/conv_schedules.log" "$OUT/fc_schedules.log"
  ;;
verify2)  # the autotuner over tiles x schedules, and the max-batch 50-step run
  export GPUCONV_CACHE_DIR=/tmp/gpuconv-cache
  GPUCONV_AUTOTUNE=1 timeout 250 python3 bench/bench_conv.py > "$OUT/autotune.log" 2>&1
  cp /tmp/gpuconv-cache/autotune.json "$OUT/" 2>/dev/null
  timeout 240 python3 bench/bench_memory.py --max-batch --model alexnet --budget 0.5 > "$OUT/memory.log" 2>&1
  tail -n 3 "$OUT/autotune.log" "$OUT/memory.log"
  ;;
winograd)  # never run on a GPU before: correctness first, then the three-way timing
  timeout 150 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider tests/test_winograd.py tests/test_fc.py \
      > "$OUT/gpu_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu_tests.log"
  timeout 400 python3 bench/bench_winograd.py > "$OUT/winograd.log" 2>&1
  echo "bench rc=$?" >> "$OUT/winograd.log"
  tail -n 3 "$OUT/gpu_tests.log"; tail -n 28 "$OUT/winograd.log"
  ;;
winograd-vgg)  # whole training steps: does Winograd pay off in a net (its workspace planned in the arena)?
  { for prec in fp32 tf32; do for algo in gemm winograd auto; do echo "GPUCONV_CONV_ALGO=$algo $prec"
      GPUCONV_CACHE_DIR=/tmp/gpuconv-cache GPUCONV_CONV_ALGO=$algo timeout 90 python3 -c "from bench.bench_train import gpu_vgg16_step; from bench.harness import print_rows; print_rows(gpu_vgg16_step(64, '$prec'))"
    done; done; } > "$OUT/vgg16.log" 2>&1
  cat "$OUT/vgg16.log"
  ;;
graph)  # never run on a GPU before: correctness of capture/replay first, then what it saves
  timeout 200 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider tests/test_step.py tests/test_train.py \
      tests/test_optim.py tests/test_dropout.py tests/test_loss.py tests/test_batchnorm.py tests/test_fc.py \
      > "$OUT/gpu_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/gpu_tests.log"
  timeout 360 python3 bench/bench_train.py > "$OUT/train.log" 2>&1
  echo "bench rc=$?" >> "$OUT/train.log"
  tail -n 3 "$OUT/gpu_tests.log"; grep -E "^\| train|rc=" "$OUT/train.log"
  ;;
wgmma)  # never run on a GPU: descriptors, swizzle and fragments first (tests), then bounds, then speed
  # the wgmma tests switch GPUCONV_GEMM_WGMMA on themselves (the others pin mma.sync's rounding)
  timeout 150 python3 -m pytest -q -m "gpu and not emu" -p no:cacheprovider tests/test_fc.py \
      tests/test_conv.py -k wgmma > "$OUT/wgmma_tests.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/wgmma_tests.log"
  GPUCONV_DEBUG_ALLOC=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q \
      -m "gpu and not emu" -p no:cacheprovider -x tests/test_fc.py tests/test_conv.py -k "wgmma and not matches_cpu" \
      > "$OUT/wgmma_memcheck.log" 2>&1
  echo "memcheck rc=$?" >> "$OUT/wgmma_memcheck.log"
  timeout 90 python3 bench/bench_fc.py > "$OUT/fc.log" 2>&1
  echo "bench rc=$?" >> "$OUT/fc.log"
  timeout 200 python3 bench/bench_conv.py --only "L5,VGG conv3_2,VGG conv5_2,CIFAR 128,1x1" > "$OUT/conv_wgmma.log" 2>&1
  echo "bench rc=$?" >> "$OUT/conv_wgmma.log"
  tail -n 3 "$OUT/wgmma_tests.log" "$OUT/wgmma_memcheck.log"; grep -E "tf32|rc=" "$OUT/fc.log" "$OUT/conv_wgmma.log"
  ;;
verify3)  # racecheck of conv (both schedules) and local to the end
  GPUCONV_DEBUG_ALLOC=1 timeout 500 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -q \
      -m "gpu and not emu" -p no:cacheprovider -x tests/test_conv.py tests/test_local.py -k "not float64" \
      > "$OUT/racecheck.log" 2>&1
  echo "racecheck rc=$?" >> "$OUT/racecheck.log"
  tail -n 3 "$OUT/racecheck.log"
  ;;
esac
