"""Train an EAGLE-3 draft head for a target model by self-distillation; write it in the published
layout, for `--speculative-algorithm EAGLE3 --speculative-draft-model-path OUT`.

    python -m sgl.train_eagle3 --model-path PATH --dataset copy --output OUT \\
        [--prompts-file FILE] [--num-prompts 256] [--max-new-tokens 256] [--epochs 3] \\
        [--ttt-steps 3] [--draft-vocab-size 8192] [--device cuda]

1. Data: sgl's Engine generates the target's own completions of the prompts (greedy unless
   --temperature): the head learns what the target says, not what a dataset says.
2. Features: transformers runs the target over each prompt + completion with
   output_hidden_states: the inputs of the capture layers (eagle3_capture_layers: SGLang's
   default 2, n // 2, n - 3), fused (L, 3H), and the target's greedy choice at every position,
   which is the label.
3. The head (`Eagle3Trainee`: the parameters of models/llama_eagle3.py, in plain differentiable
   torch) learns those choices by cross entropy over its draft vocabulary (the
   `draft_vocab_size` most frequent labels, ascending target ids: d2t / t2d). Row p reads
   (fc(fused p), token p + 1) and predicts the target's choice after token p + 1. Training
   unrolls `ttt_steps` steps as drafting does (EAGLE-3's training-time test): step j >= 1 reads
   its own step j - 1 output as the hidden state and token p + j + 1, sits at position p + j,
   and attends to the step-0 keys of positions <= p and to its own chain's steps 1..j.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from sgl.kernels.norm import fused_add_rms_norm_ref, rms_norm_ref
from sgl.kernels.rotary import apply_rotary_ref
from sgl.runtime.loader.draft import eagle_head_config
from sgl.runtime.models.llama_eagle import draft_rotary
from sgl.runtime.models.llama_eagle3 import eagle3_capture_layers

logger = logging.getLogger("sgl.train_eagle3")


@dataclass
class Sample:
    fused: torch.Tensor   # (L, 3H) inputs of the capture layers
    tokens: torch.Tensor  # (L,) the sequence
    labels: torch.Tensor  # (L,) the target's greedy choice after each position


# -- data --------------------------------------------------------------------------------------
def tokenize_prompts(model_path: str, prompts: list[str], apply_chat_template: bool) -> list[list[int]]:
    from sgl.runtime.loader.tokenizer import get_tokenizer
    tok = get_tokenizer(model_path)
    if apply_chat_template:
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in prompts]
        return [tok.encode(t, add_special_tokens=False) for t in texts]
    return [tok.encode(p) for p in prompts]


def generate_sequences(model_path: str, prompts: list[list[int]], max_new_tokens: int,
                       temperature: float = 0.0, seed: int = 0, **engine_kw: Any) -> list[list[int]]:
    """prompt + completion token ids of the target's answer to each prompt (token ids)."""
    from sgl.runtime.engine import Engine
    params = [{"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed + i}
              for i in range(len(prompts))]
    with Engine(model_path, random_seed=seed, skip_tokenizer_init=True, **engine_kw) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
    return [list(p) + o["output_ids"] for p, o in zip(prompts, outs)]


def load_hf_target(model_path: str, device: str, dtype: torch.dtype) -> nn.Module:
    import transformers
    kw: dict[str, Any] = {"dtype": dtype}
    where = model_path
    if model_path.endswith(".gguf"):
        where, kw["gguf_file"] = os.path.dirname(model_path), os.path.basename(model_path)
    return transformers.AutoModelForCausalLM.from_pretrained(where, **kw).to(device).eval()


@torch.no_grad()
def target_features(hf_model: nn.Module, seqs: list[list[int]], capture: list[int],
                    device: str) -> list[Sample]:
    out = []
    for seq in seqs:
        res = hf_model(torch.tensor([seq], device=device), output_hidden_states=True)
        fused = torch.cat([res.hidden_states[i][0] for i in capture], dim=-1)
        out.append(Sample(fused.float().cpu(), torch.tensor(seq), res.logits[0].argmax(-1).cpu()))
    return out


def draft_vocabulary(samples: list[Sample], vocab_size: int, draft_vocab_size: int) -> torch.Tensor:
    """The draft_vocab_size most frequent labels (padded with the lowest unused ids), ascending."""
    counts = torch.bincount(torch.cat([s.labels for s in samples]), minlength=vocab_size)
    order = torch.argsort(counts, descending=True, stable=True)
    return order[:min(draft_vocab_size, vocab_size)].sort().values


# -- the head ----------------------------------------------------------------------------------
class Eagle3Trainee(nn.Module):
    """models/llama_eagle3.py's computation with trainable, checkpoint-named parameters
    (q/k/v and gate/up unfused, as published heads store them)."""

    def __init__(self, head_config: dict, embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        super().__init__()
        from transformers import LlamaConfig
        cfg = LlamaConfig(**{k: v for k, v in head_config.items() if k != "architectures"})
        h, inter, d = cfg.hidden_size, cfg.intermediate_size, head_config["head_dim"]
        self.num_heads, self.num_kv_heads, self.head_dim, self.eps = (
            cfg.num_attention_heads, cfg.num_key_value_heads, d, cfg.rms_norm_eps)

        def lin(o: int, i: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(o, i) * 0.02)
        self.weights = nn.ParameterDict({
            "fc": lin(h, 3 * h), "q_proj": lin(self.num_heads * d, 2 * h),
            "k_proj": lin(self.num_kv_heads * d, 2 * h), "v_proj": lin(self.num_kv_heads * d, 2 * h),
            "o_proj": lin(h, self.num_heads * d), "gate_proj": lin(inter, h), "up_proj": lin(inter, h),
            "down_proj": lin(h, inter), "lm_head": nn.Parameter(lm_head.clone().float()),
            **{n: nn.Parameter(torch.ones(h)) for n in
               ("input_layernorm", "hidden_norm", "post_attention_layernorm", "norm")}})
        self.register_buffer("embed", embed.float(), persistent=False)
        self.register_buffer("cos_sin", draft_rotary(cfg).cos_sin_cache.float(), persistent=False)

    def checkpoint(self, draft_ids: torch.Tensor, vocab_size: int) -> dict[str, torch.Tensor]:
        w = {k: v.detach().float().cpu().contiguous() for k, v in self.weights.items()}
        out = {"fc.weight": w["fc"], "norm.weight": w["norm"], "lm_head.weight": w["lm_head"]}
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"midlayer.self_attn.{name}.weight"] = w[name]
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"midlayer.mlp.{name}.weight"] = w[name]
        for name in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
            out[f"midlayer.{name}.weight"] = w[name]
        draft_ids = draft_ids.cpu()
        t2d = torch.zeros(vocab_size, dtype=torch.bool)
        t2d[draft_ids] = True
        out["d2t"], out["t2d"] = draft_ids - torch.arange(len(draft_ids)), t2d
        return out

    def _qkv(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor):
        w, t, d = self.weights, embeds.shape[0], self.head_dim
        x = torch.cat([rms_norm_ref(embeds, w["input_layernorm"], self.eps),
                       rms_norm_ref(hidden, w["hidden_norm"], self.eps)], dim=-1)
        q, k = apply_rotary_ref(F.linear(x, w["q_proj"]).view(t, self.num_heads, d),
                                F.linear(x, w["k_proj"]).view(t, self.num_kv_heads, d),
                                positions, self.cos_sin)
        group = self.num_heads // self.num_kv_heads
        v = F.linear(x, w["v_proj"]).view(t, self.num_kv_heads, d)
        return q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

    def _finish(self, attn: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """o_proj, the residual MLP block and the final norm: (hidden_next, logits)."""
        w = self.weights
        out, residual = fused_add_rms_norm_ref(F.linear(attn.flatten(1), w["o_proj"]), hidden,
                                               w["post_attention_layernorm"], self.eps)
        mlp = F.linear(F.silu(F.linear(out, w["gate_proj"])) * F.linear(out, w["up_proj"]), w["down_proj"])
        for_logits, hidden_next = fused_add_rms_norm_ref(mlp, residual, w["norm"], self.eps)
        return hidden_next, F.linear(for_logits, w["lm_head"])

    def unroll(self, fused: torch.Tensor, tokens: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Logits (L - 1 - j, draft_vocab) of each step j < steps; row p of step j predicts the
        target's choice after token p + j + 1."""
        n = tokens.shape[0] - 1  # rows: positions 0..n-1 read tokens 1..n
        scale = self.head_dim ** -0.5
        pos = torch.arange(n, device=tokens.device)
        hidden = F.linear(fused[:n], self.weights["fc"])
        q, k0, v0 = self._qkv(self.embed[tokens[1:]], hidden, pos)
        causal = pos[None, :] <= pos[:, None]  # (query, key)
        chain_k: list[torch.Tensor] = []
        chain_v: list[torch.Tensor] = []
        logits = []
        for j in range(steps):
            rows = n - j  # chains whose step-j token p + j + 1 exists
            if rows <= 0:
                break
            if j > 0:
                q, k, v = self._qkv(self.embed[tokens[j + 1:j + 1 + rows]], hidden[:rows], pos[:rows] + j)
                chain_k, chain_v = [c[:rows] for c in chain_k] + [k], [c[:rows] for c in chain_v] + [v]
            scores = torch.einsum("qhd,khd->hqk", q[:rows], k0) * scale  # step-0 keys of the prefix
            scores = scores.masked_fill(~causal[:rows], float("-inf"))
            own = [torch.einsum("qhd,qhd->hq", q[:rows], kc)[..., None] * scale for kc in chain_k]
            probs = torch.softmax(torch.cat([scores] + own, dim=-1), dim=-1)
            attn = torch.einsum("hqk,khd->qhd", probs[..., :n], v0)
            for s, vc in enumerate(chain_v):
                attn = attn + probs[..., n + s].transpose(0, 1)[..., None] * vc
            hidden, step_logits = self._finish(attn, hidden[:rows])
            logits.append(step_logits)
        return logits


# -- training ----------------------------------------------------------------------------------
def train(samples: list[Sample], head_config: dict, embed: torch.Tensor, lm_head: torch.Tensor,
          draft_ids: torch.Tensor, steps: int = 3, epochs: int = 3, lr: float = 3e-4, device: str = "cpu",
          seed: int = 0, log_every: int = 50) -> tuple[Eagle3Trainee, list[float]]:
    """embed, lm_head: the target's (vocab, H) tables; the head's draft lm_head starts as the
    target's rows of its draft ids. Returns the head and the step-0 top-1 accuracy on the
    training labels during each epoch."""
    torch.manual_seed(seed)
    vocab = embed.shape[0]
    to_draft = torch.full((vocab,), -100, dtype=torch.long)
    to_draft[draft_ids] = torch.arange(len(draft_ids))
    head = Eagle3Trainee(head_config, embed, lm_head[draft_ids]).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    total = epochs * len(samples)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * max(0.05, 1 - i / total))
    order, accuracy, it = list(range(len(samples))), [], 0
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        hits = count = 0
        for i in order:
            s = samples[i]
            logits = head.unroll(s.fused.to(device), s.tokens.to(device), steps)
            loss = torch.zeros((), device=device)
            for j, lg in enumerate(logits):
                target = to_draft[s.labels[j + 1:j + 1 + lg.shape[0]]].to(device)
                loss = loss + F.cross_entropy(lg, target, ignore_index=-100) * 0.8 ** j
                if j == 0:
                    keep = target >= 0
                    hits += int((lg.argmax(-1)[keep] == target[keep]).sum())
                    count += int(keep.sum())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
            it += 1
            if log_every and it % log_every == 0:
                logger.info("step %d/%d loss %.3f", it, total, loss.item())
        accuracy.append(hits / max(count, 1))
        logger.info("epoch accuracy (step 0, top-1): %.3f", accuracy[-1])
    return head, accuracy


def save_head(head: Eagle3Trainee, head_config: dict, draft_ids: torch.Tensor, vocab_size: int,
              path: str) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(head_config, f, indent=2)
    save_file(head.checkpoint(draft_ids, vocab_size), os.path.join(path, "model.safetensors"))


def head_config_for(target_config: Any, draft_vocab_size: int, capture: list[int]) -> dict:
    """The head's config.json; `capture` (the target layers whose inputs it reads) is written as
    eagle_config's layer ids, which name layer outputs: the inputs of the next layers."""
    config = eagle_head_config(target_config, "EAGLE3", draft_vocab_size)
    config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in capture],
                              "use_aux_hidden_state": True}
    return config


def main(argv: list[str] | None = None) -> None:
    from sgl.bench_speculative import copy_prompts, read_prompts
    from sgl.runtime.loader.bundled import bundled_model_path
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="the target (default: the bundled model)")
    p.add_argument("--output", required=True, help="folder for config.json and model.safetensors")
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--dataset", choices=["copy"], default=None)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--apply-chat-template", action="store_true")
    p.add_argument("--draft-vocab-size", type=int, default=8192)
    p.add_argument("--ttt-steps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model_path = args.model_path or bundled_model_path()
    if args.prompts_file:
        prompts = read_prompts(args.prompts_file)
    elif args.dataset == "copy":
        prompts = copy_prompts(args.num_prompts, seed=args.seed)
    else:
        raise SystemExit("give --prompts-file FILE or --dataset copy")
    prompts = (prompts * (args.num_prompts // len(prompts) + 1))[:args.num_prompts]
    t0 = time.time()
    seqs = generate_sequences(model_path, tokenize_prompts(model_path, prompts, args.apply_chat_template),
                              args.max_new_tokens, args.temperature, args.seed, device=args.device)
    logger.info("generated %d sequences (%d tokens) in %.1f s", len(seqs), sum(map(len, seqs)), time.time() - t0)
    hf_model = load_hf_target(model_path, args.device, torch.float32)
    config = hf_model.config
    capture = eagle3_capture_layers(config, config.num_hidden_layers)  # SGLang's default layers
    samples = target_features(hf_model, seqs, capture, args.device)
    embed = hf_model.get_input_embeddings().weight.detach().float().cpu()
    lm_head = hf_model.get_output_embeddings().weight.detach().float().cpu()
    del hf_model
    draft_ids = draft_vocabulary(samples, config.vocab_size, args.draft_vocab_size)
    head_config = head_config_for(config, len(draft_ids), capture)
    head, accuracy = train(samples, head_config, embed, lm_head, draft_ids, args.ttt_steps, args.epochs, args.lr,
                           args.device, args.seed)
    save_head(head, head_config, draft_ids, config.vocab_size, args.output)
    logger.info("wrote %s (step-0 training accuracy per epoch: %s) in %.1f s", args.output,
                ", ".join(f"{a:.3f}" for a in accuracy), time.time() - t0)


if __name__ == "__main__":
    main()
