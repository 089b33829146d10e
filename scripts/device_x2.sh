#!/usr/bin/env bash
# One nvidia-h100-x2 call, from the repository root (after the wheels and .tok have arrived):
#   phase 1, side by side: GPU 0 the batch-1 GEMV probe and batch-1/64 decode with the probed
#   table and with cuBLAS; GPU 1 the 500-prompt offline benchmark;
#   phase 2: DP=2 behind the router (cache_aware vs round_robin) on both GPUs;
#   phase 3: TP parity 1 vs 2, then TP=2 decode with overlap off and on.
# Job logs land in $OUT/logs, tarred into $OUT/logs.tgz at the end.
set -uo pipefail
bash scripts/device_run.sh  # set-up only
L=$OUT/logs
mkdir -p $L
M=llama-3.1-8b-dummy
B="python3 -m sgl.bench_one_batch --model-path $M --load-format dummy --input-len 128 --output-len 256 --cuda-graph-bs 1 64"
P="python3 scripts/tp_parity.py --hang-dump 70 --model-path $M --load-format dummy --num-prompts 16 --input-len 256 --output-len 64 --vocab-size 128000"
phase() { echo "=== $1 $(date +%T)"; }
clean() { pkill -9 -f "sgl\.|tp_parity"; sleep 2; tar czf $OUT/logs.tgz -C $OUT logs; }

phase 1
(CUDA_VISIBLE_DEVICES=0 timeout 230 bash scripts/device_run.sh gemv_tests gemv_probe_q bench1_probed bench1_nogemv > $L/gpu0.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 250 bash scripts/device_run.sh offline > $L/gpu1.log 2>&1) &
wait; clean
grep -vhE "^\s*$|sgl importable|Loading" $L/gpu0.log $L/gpu1.log

phase 2
LOGS=$L WORKER_LOG_LEVEL=info timeout 140 bash scripts/device_run.sh dp > $L/dp.log 2>&1; clean
grep -vE "^\s*$|sgl importable" $L/dp.log | tail -n 30

phase 3
export PYTHONPATH=/tmp/site; source scripts/device_env.sh
timeout 85 $P --tp-sizes 1 2 --out $OUT/tp_parity12.json > $L/parity12.log 2>&1; clean; tail -n 8 $L/parity12.log
for ov in 0 1; do echo "tp 2 SGL_TP_OVERLAP=$ov"; SGL_TP_OVERLAP=$ov timeout -s INT 50 \
  $B --tp-size 2 --batch-size 1 64 --result-filename $OUT/tp_one_batch.jsonl 2>&1 | grep -E "Total|Error|error"; clean; done
phase end
rm -rf $L
