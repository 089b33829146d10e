#!/usr/bin/env bash
# nvidia-h100-x4, calls on one warm machine, from the repository root (the wheels and .tok
# arrive with every call; the bundled model's two halves, where a mode needs it, one per call):
#   bash scripts/device_x4.sh tp    phase 1 side by side: GPU 0 TP=1, GPUs 2-3 TP=2 (decode at
#       batch 1 and 64, a 200-prompt offline run; TP=2 also a kernel profile), GPU 1 the
#       transformers comparisons (prefill 8 x 4096, batch-1 decode, each beside sgl's);
#       phase 2: TP=4 decode and offline, then greedy parity and teacher-forced
#       log-probabilities at TP 1/2/4.
#   bash scripts/device_x4.sh spec  side by side: GPU 1 the bundled model's GPU tests and
#       speculative benchmarks (NGRAM sweep and profile, EAGLE-3 training and sweep); GPUs 2-3
#       DP=2 behind the router, cache_aware vs round_robin, on two shared-prefix workloads.
#   bash scripts/device_x4.sh ar1   side by side: GPUs 0-1 the two DP=2 router workloads of
#       `spec`; GPUs 2-3 the all-reduce benchmark at TP=2 (NCCL vs one-shot), the TP GPU tests,
#       batch-1/64 decode at TP=2 with and without the custom all-reduce, then TP=1 on GPU 2.
#   bash scripts/device_x4.sh ar2   side by side: GPUs 0-1 the DP=2 router workloads again; GPUs
#       2-3 batch-1/64 decode at TP=1 and TP=2; then the all-reduce benchmark and decode at TP=4
#       with and without the custom all-reduce, and float32 greedy parity at TP 1/2/4.
# Carry .tok on both calls: the DP workers read the tokenizer from it, and an ignored path
# left out of a call's carry is gone there.
# Job logs land in $OUT/logs.
set -uo pipefail
bash scripts/device_run.sh  # set-up only
export PYTHONPATH=/tmp/site; source scripts/device_env.sh
L=$OUT/logs
mkdir -p $L
M=llama-3.1-8b-dummy
B="python3 -m sgl.bench_one_batch --model-path $M --load-format dummy --input-len 128 --output-len 256 --cuda-graph-bs 1 64"
O="python3 -m sgl.bench_offline_throughput --model-path $M --load-format dummy --skip-tokenizer-init --num-prompts 200
   --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0 --result-filename $OUT/tp_offline.jsonl"
phase() { echo "=== $1 $(date +%T)"; }
clean() { pkill -9 -f "sgl\.|tp_parity"; sleep 2; }
show() { grep -hE "Total|Decode\.|output_throughput|duration|rror" "$@" | head -40; }
tp() {
  timeout -s INT 150 $B --tp-size $1 --batch-size 1 64 --result-filename $OUT/tp_one_batch.jsonl
  echo "offline tp $1"; timeout -s INT 200 $O --tp-size $1
}
# DP=2 behind the router on GPUs $1 $2, cache_aware then round_robin, on two shared-prefix
# workloads (2,048-token system prompts with 81,920-token pools; 4,096 with 163,840).
dp_pair() {
  export GPUS="$1 $2" LOGS=$L WORKER_LOG_LEVEL=info
  echo "--- system prompt 2048, pool 81920"; timeout 200 bash scripts/dp_router_bench.sh 81920
  pkill -f "port 310[0-9][0-9]"; pkill -f sgl.router; sleep 3
  echo "--- system prompt 4096, pool 163840"
  GSP="--gsp-num-groups 64 --gsp-prompts-per-group 16 --gsp-system-prompt-len 4096 --gsp-question-len 128
       --gsp-output-len 32 --max-concurrency 64" timeout 250 bash scripts/dp_router_bench.sh 163840
}
case ${1:-tp} in
  tp)
    phase 1
    (export CUDA_VISIBLE_DEVICES=0; tp 1) > $L/tp1.log 2>&1 &
    (export CUDA_VISIBLE_DEVICES=2,3; tp 2
     timeout -s INT 120 $B --tp-size 2 --batch-size 1 --output-len 16 --profile-kernels 64) > $L/tp2.log 2>&1 &
    (export CUDA_VISIBLE_DEVICES=1; timeout 280 bash scripts/device_run.sh prefill hf_prefill bench1 hf1) > $L/hf.log 2>&1 &
    wait; clean
    echo "--- tp 1"; show $L/tp1.log; echo "--- tp 2"; show $L/tp2.log
    grep -B2 -A34 "Self CUDA" $L/tp2.log | head -40
    echo "--- gpu 1"; grep -vE "^\s*$|sgl importable" $L/hf.log | tail -n 14
    phase 2
    tp 4 > $L/tp4.log 2>&1; clean; echo "--- tp 4"; show $L/tp4.log
    timeout 200 python3 scripts/tp_parity.py --hang-dump 150 --model-path $M --load-format dummy --tp-sizes 1 2 4 \
      --num-prompts 16 --input-len 256 --output-len 64 --vocab-size 128000 --out $OUT/tp_parity.json > $L/parity.log 2>&1
    clean; tail -n 14 $L/parity.log ;;
  spec)
    phase spec+dp
    (export CUDA_VISIBLE_DEVICES=1
     bash scripts/device_run.sh gpu_bundled
     grep -q "test_draft_graphs.*FAILED\|test_draft_graphs.*ERROR" $OUT/gpu_bundled.log || export DG=1
     echo "draft graphs in the EAGLE-3 sweep: ${DG:-0}"
     timeout 420 bash scripts/device_run.sh spec_smol spec_prof eagle3_smol) > $L/spec.log 2>&1 &
    (dp_pair 2 3) > $L/dp.log 2>&1 &
    wait; clean
    grep -vE "^\s*$|sgl importable" $L/spec.log | tail -n 75
    grep -vE "^\s*$" $L/dp.log | tail -n 40 ;;
  ar1)
    phase ar1
    (dp_pair 0 1) > $L/dp.log 2>&1 &
    (export CUDA_VISIBLE_DEVICES=2,3
     timeout 90 python3 -m sgl.bench_all_reduce --tp-size 2 --result-filename $OUT/all_reduce.jsonl
     timeout 150 python3 -m pytest -q -m gpu tests/runtime/test_custom_all_reduce.py \
       tests/runtime/test_tensor_parallel.py -rfE --tb=short 2>&1 | tail -n 15
     clean_tp() { pkill -9 -f "sgl.bench_one" ; sleep 2; }
     echo "tp 2, custom all-reduce"; timeout -s INT 120 $B --tp-size 2 --batch-size 1 64 --enable-custom-all-reduce --result-filename $OUT/tp_one_batch.jsonl; clean_tp
     echo "tp 2, nccl only"; timeout -s INT 120 $B --tp-size 2 --batch-size 1 64 \
       --result-filename $OUT/tp_one_batch.jsonl; clean_tp
     echo "tp 1"; CUDA_VISIBLE_DEVICES=2 timeout -s INT 100 $B --batch-size 1 64 --result-filename $OUT/tp_one_batch.jsonl
    ) > $L/tp2.log 2>&1 &
    wait; clean
    grep -vE "^\s*$|sgl importable|INFO|Loading" $L/tp2.log | grep -v "Prefill\." | tail -n 50
    grep -vE "^\s*$" $L/dp.log | tail -n 40 ;;
  ar2)
    phase ar2-1
    (dp_pair 0 1) > $L/dp.log 2>&1 &
    (export CUDA_VISIBLE_DEVICES=2,3
     echo "tp 1"; CUDA_VISIBLE_DEVICES=2 timeout -s INT 100 $B --batch-size 1 64 --result-filename $OUT/tp_one_batch.jsonl
     echo "tp 2, custom all-reduce"; timeout -s INT 120 $B --tp-size 2 --batch-size 1 64 --enable-custom-all-reduce --result-filename $OUT/tp_one_batch.jsonl
    ) > $L/tp12.log 2>&1 &
    wait; clean
    grep -E "^tp|Total|Decode\.|rror" $L/tp12.log
    grep -vE "^\s*$|INFO:" $L/dp.log | tail -n 40
    phase ar2-2
    timeout 60 python3 -m sgl.bench_all_reduce --tp-size 4 --result-filename $OUT/all_reduce.jsonl 2>&1 | grep -vE "Warning|warn|^\s*$"
    (echo "tp 4, custom all-reduce"; timeout -s INT 100 $B --tp-size 4 --batch-size 1 64 --enable-custom-all-reduce --result-filename $OUT/tp_one_batch.jsonl
     clean; echo "tp 4, nccl only"; timeout -s INT 100 $B --tp-size 4 --batch-size 1 64 \
      --result-filename $OUT/tp_one_batch.jsonl) > $L/tp4.log 2>&1; clean; grep -E "^tp|Total|Decode\.|rror" $L/tp4.log
    timeout 200 python3 scripts/tp_parity.py --hang-dump 150 --model-path $M --load-format dummy --dtype float32 \
      --tp-sizes 1 2 4 --num-prompts 16 --input-len 256 --output-len 64 --vocab-size 128000 \
      --out $OUT/tp_parity_fp32.json > $L/parity.log 2>&1
    clean; tail -n 14 $L/parity.log ;;
esac
phase end
