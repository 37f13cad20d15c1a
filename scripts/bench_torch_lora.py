"""Reference for `peft bench train`: PyTorch + PEFT on the SmolLM2-135M shape, or (--shape)
Qwen3-0.6B's or Gemma-3-270M's.

Not part of the test suite. Run by hand in a virtualenv with torch, transformers and peft:
    python scripts/bench_torch_lora.py [--steps 12] [--ckpt] [--full] [--device cuda] [--batch N]
        [--shape smollm2|qwen3-0.6b|gemma3-270m] [--save DIR] [--save-dir DIR]
        [--bf16 | --bf16-base] [--losses]
--bf16 runs the forward under CPU bf16 autocast (f32 weights); --bf16-base also stores the
frozen base in bf16 (adapters f32): the references for `peft train --bf16-compute`. --losses prints
every step's loss, for comparing a bf16 loss curve with f32's.
--save writes the same random model as a Hugging Face folder (bf16 safetensors + config.json;
copy a tokenizer.json beside it) for `peft bench train --model DIR` and exits.
Weights are random (speed and memory do not depend on them); the shape, LoRA r8 on all seven
projections, seq 256, batch 1, AdamW and 2 threads match our benchmark. Prints tokens/s over
the steps after the first, the median step time and the process's peak RSS (and, on a GPU,
the peak memory PyTorch allocated there).

`--save-dir DIR` also writes the random model as a Hugging Face folder (config, safetensors,
the bundled model's tokenizer) that `peft bench train --model DIR` trains: the same shape on
both sides (scripts/gpu-check.sh uses it on a GPU machine).
"""
import argparse, os, resource, shutil, statistics, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=12)
p.add_argument("--seq-len", type=int, default=256)
p.add_argument("--ckpt", action="store_true")
p.add_argument("--full", action="store_true")
p.add_argument("--device", default="cpu")
p.add_argument("--batch", type=int, default=1)
p.add_argument("--save-dir", default=None)
p.add_argument("--shape", default="smollm2", choices=["smollm2", "qwen3-0.6b", "gemma3-270m"])
p.add_argument("--save", default=None)
# CPU bf16 as PyTorch offers it: autocast (f32 weights, bf16 matmuls); --bf16-base also stores
# the frozen base in bf16 (the adapters stay f32), which is what `peft train --bf16-compute` does.
p.add_argument("--bf16", action="store_true")
p.add_argument("--bf16-base", action="store_true")
# Print every step's loss (for the loss-curve comparison of f32 against bf16).
p.add_argument("--losses", action="store_true")
a = p.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
if a.shape == "smollm2":
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
elif a.shape == "qwen3-0.6b":  # Qwen/Qwen3-0.6B config.json
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                      num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, tie_word_embeddings=True)
    model = Qwen3ForCausalLM(cfg)
else:  # google/gemma-3-270m config.json
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM
    cfg = Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                           num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                           max_position_embeddings=32768, rms_norm_eps=1e-6,
                           rope_theta=1000000.0, rope_local_base_freq=10000.0,
                           layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                        for i in range(18)],
                           tie_word_embeddings=True)
    model = Gemma3ForCausalLM(cfg)
if a.save:
    model.to(torch.bfloat16).save_pretrained(a.save)
    raise SystemExit(0)
if a.save_dir:
    model.save_pretrained(a.save_dir, safe_serialization=True)
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "..", "models", "stories260K", "tokenizer.json"), a.save_dir)
model = model.to(a.device)
if a.device.startswith("cuda"):
    # bf16 base and activations, f32 adapters: what `peft --device cuda` computes in.
    model = model.to(torch.bfloat16)
if a.bf16_base:
    model = model.to(torch.bfloat16)
if not a.full:
    from peft import LoraConfig, get_peft_model
    targets = "all-linear"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=targets))
    for n, q in model.named_parameters():
        if q.requires_grad:
            q.data = q.data.float()
if a.ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq_len), device=a.device)
times = []
autocast = a.bf16 or a.bf16_base
for step in range(a.steps):
    t = time.perf_counter()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    if a.losses:
        print(f"step {step} loss {loss.item():.6f}")
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
timed = times[1:]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
gpu = ""
if a.device.startswith("cuda"):
    gpu = f"  peak GPU allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
print(f"tokens/s {a.batch * a.seq_len * len(timed) / sum(timed):.1f}  median step {statistics.median(timed):.3f} s"
      f"  peak RSS {peak / 2**30:.2f} GiB{gpu}")
