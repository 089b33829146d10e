"""Acceptance of an EAGLE-3 head on prompts it was not trained on: copy prompts with seeds
SEED.. (train_eagle3 --dataset copy uses seeds 0..), the bundled model as target, greedy, one
batch, against the same engine without speculation. Prints one JSON line.

    python -m sgl.bench_draft_acceptance HEAD NUM_STEPS TOPK NUM_DRAFT_TOKENS [N=16] [SEED=1000]
"""
import json
import sys

from sgl.bench_speculative import copy_prompts
from sgl.runtime.engine import Engine
from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.train_eagle3 import tokenize_prompts


def main() -> None:
    head, steps, topk, num_draft = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 16
    seed = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
    prompts = tokenize_prompts(bundled_model_path(), copy_prompts(n, seed=seed), True)
    params = {"max_new_tokens": 96, "temperature": 0}
    with Engine(skip_tokenizer_init=True, random_seed=0) as engine:
        plain = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    with Engine(skip_tokenizer_init=True, random_seed=0, speculative_algorithm="EAGLE3",
                speculative_draft_model_path=head, speculative_num_steps=steps,
                speculative_eagle_topk=topk, speculative_num_draft_tokens=num_draft) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
    verified = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    accepted = sum(o["meta_info"].get("spec_accepted_tokens", 0) for o in outs)
    print(json.dumps({"head": head, "num_steps": steps, "topk": topk, "num_draft_tokens": num_draft,
                      "accept_len": round((accepted + verified) / max(verified, 1), 3),
                      "identical": sum(o["output_ids"] == p for o, p in zip(outs, plain)), "n": n}))


if __name__ == "__main__":
    main()
