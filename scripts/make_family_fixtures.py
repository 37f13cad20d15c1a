"""Writes the model-family fixtures used by crates/engine/tests/families.rs and
crates/engine/tests/family_templates.rs. Run ONCE by hand (tests never run Python), from the
repository root, in a virtualenv outside the repository:

    python3 -m venv /work/venv-families
    /work/venv-families/bin/pip install torch transformers peft safetensors
    /work/venv-families/bin/python scripts/make_family_fixtures.py

For each family (Llama 3 with llama3 RoPE scaling, Qwen3, Gemma 3 text, Phi-3 with partial
rotary + longrope + sliding window) it writes under crates/engine/tests/fixtures/family_<name>/:
  base/config.json, base/model.safetensors   a tiny random model, saved by transformers
  adapter/                                   a LoRA adapter on all-linear, saved by peft
  reference.json                             token ids, transformers' base logits and peft's
                                             base+adapter logits at every position
and fixtures/templates/rendered.json: each real chat template (the .jinja files beside it,
see their README) rendered by transformers' own apply_chat_template.
"""
import json, os

import torch, transformers, peft
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

FIX = "crates/engine/tests/fixtures"
TOKENS = [2, 17, 5, 33, 60, 8, 41, 12, 29, 3, 50, 7]
PRODUCED_BY = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"


def randomize(model, seed, norm_offset):
    """Seeded values for every parameter (a fresh init leaves norms at 1 or 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() == 1:  # norm weights
                p.copy_(norm_offset + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.8 / p.shape[-1] ** 0.5 if "embed" not in name else 0.5))


def make(name, cls, cfg, seed, norm_offset=1.0):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model, seed, norm_offset)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    out = os.path.join(FIX, f"family_{name}")
    base_dir = os.path.join(out, "base")
    os.makedirs(base_dir, exist_ok=True)
    cfg.save_pretrained(base_dir)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(base_dir, "model.safetensors"), metadata={"format": "pt"})
    ids = torch.tensor([TOKENS])
    with torch.no_grad():
        base_logits = model(ids).logits[0]
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in sorted(pm.named_parameters()):
            if "lora_B" in n:  # a fresh adapter has B = 0; give it values, as after training
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.4)
    pm.save_pretrained(os.path.join(out, "adapter"))
    readme = os.path.join(out, "adapter", "README.md")
    if os.path.exists(readme):
        os.remove(readme)  # PEFT's empty model card
    pm.eval()
    with torch.no_grad():
        lora_logits = pm(ids).logits[0]
    targets = sorted(pm.peft_config["default"].target_modules)
    ref = {
        "produced_by": PRODUCED_BY,
        "token_ids": TOKENS,
        "target_modules": targets,
        "max_abs_adapter_effect": float((lora_logits - base_logits).abs().max()),
        "base_logits": [[round(float(x), 6) for x in row] for row in base_logits],
        "lora_logits": [[round(float(x), 6) for x in row] for row in lora_logits],
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print(name, targets, "adapter effect", ref["max_abs_adapter_effect"])


def families():
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                              Gemma3TextConfig, Gemma3ForCausalLM, Phi3Config, Phi3ForCausalLM)
    # Llama 3: llama3 scaling with every branch used at head_dim 8 (wavelengths 6.3, 63, 628,
    # 6283 against thresholds 32 and 256: kept, smoothed, divided, divided); untied head.
    make("llama3", LlamaForCausalLM, LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=2,
        eos_token_id=[3, 4],
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                         "original_max_position_embeddings": 256}), seed=1)
    # Qwen3: explicit head_dim (q_dim 32 != hidden 16), q/k norms, tied embeddings.
    make("qwen3", Qwen3ForCausalLM, Qwen3Config(
        vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), seed=2)
    # Gemma 3: window 4 on layers 0-1 (seq 12 crosses it), full layer 2 with linear scaling,
    # query_pre_attn_scalar 12 != head_dim 8, soft-capped logits, (1 + w) norms.
    make("gemma3", Gemma3ForCausalLM, Gemma3TextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
        rms_norm_eps=1e-6, query_pre_attn_scalar=12, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=30.0, attn_logit_softcapping=None,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        seed=3, norm_offset=0.0)
    # Phi-3/4: fused qkv/gate_up, partial rotary 0.5, longrope (12 tokens < original 16:
    # short factors, attention factor sqrt(1 + ln 4 / ln 16)), sliding window 7, untied.
    make("phi3", Phi3ForCausalLM, Phi3Config(
        vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        original_max_position_embeddings=16, partial_rotary_factor=0.5,
        rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=7, pad_token_id=0,
        bos_token_id=1, eos_token_id=3,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0, 1.7], "long_factor": [2.0, 9.0]}), seed=4)


def templates():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    tdir = os.path.join(FIX, "templates")
    convo = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": " Name a colour. "},
        {"role": "assistant", "content": "Blue."},
    ]
    # Qwen3: a prior turn that carries reasoning, which the template drops from history.
    qwen_convo = convo[:2] + [{"role": "assistant", "content": "<think>\nThey greet.\n</think>\n\nHello. How can I help?"}] + convo[3:]
    cases = []
    specs = [
        ("llama-3.2-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", convo, {"date_string": "26 Jul 2024"}),
        ("qwen3.jinja", "", "<|im_end|>", qwen_convo, {"enable_thinking": False}),
        ("qwen3.jinja", "", "<|im_end|>", qwen_convo, {"enable_thinking": True}),
        ("gemma3.jinja", "<bos>", "<eos>", convo, {}),
        ("phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>", convo, {}),
        ("phi4-mini.jinja", "<|endoftext|>", "<|endoftext|>", convo, {}),
    ]
    for file, bos, eos, msgs, kwargs in specs:
        src = open(os.path.join(tdir, file)).read()
        vocab = {"<unk>": 0}
        for t in {bos, eos} - {""}:
            vocab[t] = len(vocab)
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                      bos_token=bos or None, eos_token=eos, unk_token="<unk>")
        tok.chat_template = src
        for gen, m in [(False, msgs), (True, msgs[:-1])]:
            text = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=gen, **kwargs)
            cases.append({"template": file, "bos_token": bos, "eos_token": eos, "kwargs": kwargs,
                          "add_generation_prompt": gen, "messages": m, "expected": text})
    with open(os.path.join(tdir, "rendered.json"), "w") as f:
        json.dump({"produced_by": PRODUCED_BY, "cases": cases}, f, indent=1, ensure_ascii=False)
    print("templates", len(cases))


if __name__ == "__main__":
    families()
    templates()
