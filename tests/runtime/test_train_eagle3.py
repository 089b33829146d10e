"""The EAGLE-3 training recipe (runtime/train_eagle3.py): the trainee computes what the engine's
head computes once saved and loaded (step 0 and the unrolled chain steps), and a head trained by
self-distillation on a tiny target drafts tokens the target accepts, where a random head's are
rejected, without changing the output."""
from __future__ import annotations

import random

import torch
import transformers

from sgl.runtime.engine import Engine
from sgl.runtime.loader.draft import load_draft_model, write_random_eagle_head
from sgl.runtime.loader import load_model
from sgl.runtime.train_eagle3 import (
    Eagle3Trainee,
    draft_vocabulary,
    generate_sequences,
    head_config_for,
    save_head,
    target_features,
    train,
)
from sgl.runtime.models.llama_eagle3 import eagle3_capture_layers
from tests.runtime.pools import Pools
from tests.runtime.test_eagle_heads import _randomize, _tiny_config


def _hf_target(path, seed: int = 0) -> transformers.PreTrainedModel:
    model = transformers.LlamaForCausalLM(_tiny_config())
    _randomize(model.named_parameters(), torch.Generator().manual_seed(seed))
    model.eval().save_pretrained(path)
    return model


def test_trainee_computes_what_the_loaded_head_computes(tmp_path):
    hf = _hf_target(tmp_path / "target")
    config = hf.config
    draft_ids = torch.tensor(sorted(random.Random(0).sample(range(config.vocab_size), 40)))
    head_config = head_config_for(config, len(draft_ids), [2, 2, 1])
    embed, lm_head = hf.get_input_embeddings().weight.detach(), hf.get_output_embeddings().weight.detach()
    trainee = Eagle3Trainee(head_config, embed, lm_head[draft_ids])
    _randomize(trainee.weights.named_parameters(), torch.Generator().manual_seed(1))
    save_head(trainee, head_config, draft_ids, config.vocab_size, str(tmp_path / "head"))

    target = load_model(str(tmp_path / "target")).model
    info = load_draft_model(str(tmp_path / "head"), target, torch.float32, "cpu")
    head = info.model
    capture = eagle3_capture_layers(transformers.PretrainedConfig(**head_config), config.num_hidden_layers)
    assert list(info.target_layers_to_capture) == capture == [2, 2, 1]
    assert torch.equal(head.draft_to_target, draft_ids)

    seq = [5, 9, 2, 77, 31, 8, 100, 17, 3, 64, 12, 90, 41, 7]
    (sample,) = target_features(hf, [seq], capture, "cpu")
    with torch.no_grad():
        steps = trainee.unroll(sample.fused, sample.tokens, 3)
    assert [s.shape[0] for s in steps] == [13, 12, 11]

    m = 9  # chains from base p = m - 1: the engine's catch-up over positions 0..m-1, then 2 steps
    pools = Pools(head.num_kv_heads, head.head_dim, 1, num_slots=64)
    with torch.no_grad():
        batch = pools.batch({0: seq[1:m + 1]})
        nxt, for_logits = head(batch.input_ids, batch.positions, batch, sample.fused[:m])
        torch.testing.assert_close(head.compute_logits(for_logits), steps[0][:m], atol=1e-4, rtol=1e-4)
        for j in (1, 2):  # the chain's next steps read the ground-truth tokens m + 1, m + 2
            batch = pools.batch({0: [seq[m + j]]})
            nxt, for_logits = head(batch.input_ids, batch.positions, batch, nxt[-1:])
            torch.testing.assert_close(head.compute_logits(for_logits)[0], steps[j][m - 1],
                                       atol=1e-4, rtol=1e-4)


def _accept_len(path, prompts, **spec) -> tuple[list, float]:
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=4096, random_seed=0, **spec) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 24, "temperature": 0,
                                                                   "ignore_eos": True})
    ids = [o["output_ids"] for o in outs]
    verify = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    return ids, (sum(len(i) - 1 for i in ids) / verify if verify else 0.0)


def test_trained_head_is_accepted_where_a_random_one_is_not(tmp_path):
    hf = _hf_target(tmp_path / "target", seed=3)
    target = str(tmp_path / "target")
    rng = random.Random(0)
    train_prompts = [[rng.randrange(3, 128) for _ in range(rng.randrange(4, 12))] for _ in range(32)]
    seqs = generate_sequences(target, train_prompts, 40)
    capture = eagle3_capture_layers(hf.config, 4)  # SGLang's default: 2, n // 2, n - 3
    samples = target_features(hf, seqs, capture, "cpu")
    draft_ids = draft_vocabulary(samples, hf.config.vocab_size, 64)
    head_config = head_config_for(hf.config, len(draft_ids), capture)
    head, accuracy = train(samples, head_config, hf.get_input_embeddings().weight.detach(),
                           hf.get_output_embeddings().weight.detach(), draft_ids, steps=3, epochs=40,
                           lr=3e-3, log_every=0)
    assert accuracy[-1] > accuracy[0]
    save_head(head, head_config, draft_ids, hf.config.vocab_size, str(tmp_path / "trained"))
    write_random_eagle_head(_tiny_config(), str(tmp_path / "random"), "EAGLE3", seed=1, draft_vocab_size=64)

    # A random target's outputs follow no pattern a head could generalize from: what it learns
    # is the target's continuations of these prompts, so that is what is checked.
    test_prompts = train_prompts[:6]
    plain, _ = _accept_len(target, test_prompts)
    spec = dict(speculative_algorithm="EAGLE3", speculative_num_steps=3, speculative_eagle_topk=1,
                speculative_num_draft_tokens=4)
    trained, trained_len = _accept_len(target, test_prompts, speculative_draft_model_path=str(tmp_path / "trained"), **spec)
    rand, rand_len = _accept_len(target, test_prompts, speculative_draft_model_path=str(tmp_path / "random"), **spec)
    assert trained == plain and rand == plain  # lossless either way
    assert rand_len < 1.3 and trained_len > rand_len + 0.5, (trained_len, rand_len)
