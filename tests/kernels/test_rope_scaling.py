"""Every rope_type's cos/sin table against transformers' own rope functions: YaRN (with its
attention factor), dynamic NTK and LongRoPE, whose rows follow transformers' frequencies for a
sequence ending at that position."""
from __future__ import annotations

import pytest
import torch
from sgl.kernels.rope_scaling import compute_cos_sin_cache, rope_cos_sin_cache
from sgl.runtime.layers.rotary import TRAINED_MAX_POSITIONS_ATTR, get_rope, rope_params_from_config
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HEAD_DIM, TRAINED = 64, 128


def _hf_table(config, rope_type: str, positions: list[int]) -> torch.Tensor:
    """transformers' (cos, sin) rows for each position p, its frequencies computed for a
    sequence of p + 1 tokens (what it does when generating the token at p)."""
    rows = []
    for p in positions:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, seq_len=p + 1)
        if rope_type == "longrope" and p + 1 <= config.rope_parameters["original_max_position_embeddings"]:
            inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config)  # the short factors
        angles = p * inv_freq.double()
        rows.append(torch.cat([angles.cos(), angles.sin()]) * scale)
    return torch.stack(rows)


CASES = {
    "yarn": lambda: LlamaConfig(hidden_size=HEAD_DIM * 2, num_attention_heads=2,
                                max_position_embeddings=TRAINED * 4, rope_theta=10000.0,
                                rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": TRAINED}),
    "yarn_mscale": lambda: LlamaConfig(hidden_size=HEAD_DIM * 2, num_attention_heads=2,
                                       max_position_embeddings=TRAINED * 4, rope_theta=50000.0,
                                       rope_scaling={"rope_type": "yarn", "factor": 4.0, "mscale": 1.0,
                                                     "mscale_all_dim": 0.5, "beta_fast": 16,
                                                     "original_max_position_embeddings": TRAINED}),
    "dynamic": lambda: LlamaConfig(hidden_size=HEAD_DIM * 2, num_attention_heads=2,
                                   max_position_embeddings=TRAINED, rope_theta=10000.0,
                                   rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "longrope": lambda: Phi3Config(hidden_size=HEAD_DIM * 2, num_attention_heads=2,
                                   max_position_embeddings=TRAINED * 8,
                                   original_max_position_embeddings=TRAINED,
                                   rope_scaling={"rope_type": "longrope",
                                                 "short_factor": [1.0 + i / 40 for i in range(32)],
                                                 "long_factor": [1.0 + i for i in range(32)]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_match_transformers(name):
    config = CASES[name]()
    ours = CASES[name]()
    if ours.max_position_embeddings < 512:  # what the loader does for --context-length 512
        setattr(ours, TRAINED_MAX_POSITIONS_ATTR, ours.max_position_embeddings)
        ours.max_position_embeddings = 512
    rope = get_rope(ours, HEAD_DIM)  # what the models build
    theta, scaling = rope_params_from_config(config)
    positions = [0, 1, 5, TRAINED - 2, TRAINED - 1, TRAINED, TRAINED + 1, 300, 500]
    expected = _hf_table(config, scaling["rope_type"], positions)
    torch.testing.assert_close(rope.cos_sin_cache[positions].double(), expected, atol=2e-5, rtol=1e-5)
    plain = compute_cos_sin_cache(1.0 / theta ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM),
                                  ours.max_position_embeddings)
    assert not torch.allclose(rope.cos_sin_cache, plain, atol=1e-3)  # the scaling did something


def test_dynamic_measures_against_the_trained_length():
    # --context-length past max_position_embeddings widens the table, not the trained length.
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    trained = rope_cos_sin_cache(HEAD_DIM, 10000.0, scaling, TRAINED * 4, TRAINED)
    widened = rope_cos_sin_cache(HEAD_DIM, 10000.0, scaling, TRAINED * 4, TRAINED * 4)
    assert torch.equal(trained[:TRAINED], widened[:TRAINED])
    assert not torch.allclose(trained[TRAINED * 2:], widened[TRAINED * 2:])
