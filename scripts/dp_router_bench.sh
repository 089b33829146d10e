#!/usr/bin/env bash
# DP=N behind the standalone router on a shared-prefix workload: N sgl servers (one GPU each,
# the 8B-shaped dummy model, a KV pool of POOL tokens each) and `python -m sgl.router`, once with
# cache_aware and once with round_robin, caches flushed in between. Results: $OUT/dp_router.jsonl;
# after each run the router's per-worker request counts and cache_aware's decisions (cache /
# new_prefix / imbalanced) are printed. Worker step logs ("Prefill batch", "Decode batch"):
# WORKER_LOG_LEVEL=info, in $LOGS/worker{0,1}.log.
# GPUS="0 1 2 3": one server per GPU named (default "0 1"). SERVER_FLAGS: extra flags for every
# server. GSP: the workload's bench_serving flags.
#   bash scripts/dp_router_bench.sh [POOL]
set -uo pipefail
POOL=${1:-98304}
M=${M:-llama-3.1-8b-dummy}
SERVER_FLAGS=${SERVER_FLAGS:---tokenizer-path .tok/llama3}
GSP=${GSP:-"--gsp-num-groups 64 --gsp-prompts-per-group 16 --gsp-system-prompt-len 2048
     --gsp-question-len 128 --gsp-output-len 32 --max-concurrency 64"}
read -ra GPU_IDS <<< "${GPUS:-0 1}"
WORKERS=$(seq 0 $((${#GPU_IDS[@]} - 1)))
URLS=$(for i in $WORKERS; do printf "http://127.0.0.1:%d " $((31000 + i)); done)
pids=()
for i in $WORKERS; do
  CUDA_VISIBLE_DEVICES=${GPU_IDS[$i]} python3 -m sgl.launch_server --model-path $M --load-format dummy \
    $SERVER_FLAGS --port $((31000 + i)) --max-total-tokens $POOL --log-level ${WORKER_LOG_LEVEL:-warning} \
    > ${LOGS:-/tmp}/worker$i.log 2>&1 &
  pids+=($!)
done
for i in $WORKERS; do
  for _ in $(seq 240); do curl -sf localhost:$((31000 + i))/health >/dev/null && break; sleep 1; done
done
for method in cache_aware round_robin; do
  for i in $WORKERS; do curl -sf -X POST localhost:$((31000 + i))/flush_cache >/dev/null; done
  python3 -m sgl.router --worker-urls $URLS \
    --load-balance-method $method --port 30000 --log-level warning > ${LOGS:-/tmp}/router_$method.log 2>&1 &
  router=$!
  for _ in $(seq 60); do curl -sf localhost:30000/health >/dev/null && break; sleep 1; done
  echo "--- $method"
  python3 -m sgl.bench_serving --port 30000 --dataset-name generated-shared-prefix $GSP --output-file ${OUT:-/tmp}/dp_router.jsonl 2>&1 \
    | grep -E "Successful|Failed|duration|Input token|Output token|Total token|hit rate|Median E2E|error"
  curl -s localhost:30000/get_server_info | python3 -c "import json, sys; i = json.load(sys.stdin); \
print('router:', [(w['url'], w['num_requests']) for w in i['workers']], i['policy'].get('decisions'))"
  kill $router; wait $router 2>/dev/null
done
kill "${pids[@]}"; wait 2>/dev/null
tail -n 3 ${LOGS:-/tmp}/worker0.log
