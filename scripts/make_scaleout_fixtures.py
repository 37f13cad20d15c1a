# Writes the adapter fixtures for crates/engine/tests/adapter_import.rs: LoRA adapters for the
# bundled models/stories260K in the naming variants other trainers produce, each with the logits
# Python `peft` computes for base + adapter.
#
# Run once by hand from the repository root, in a scratch virtualenv outside the repository:
#   python3 -m venv /work/venv-trl
#   /work/venv-trl/bin/pip install torch transformers peft safetensors
#   /work/venv-trl/bin/python scripts/make_scaleout_fixtures.py
# Afterwards each folder gets a short README.md (the script removes PEFT's empty model card).
# The tests never run Python. Fixtures are kept to a few KB: rank 2, one or two projections,
# reference logits of the last position only (which attends to every earlier one).
import json
import os

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

MODEL = "models/stories260K"
FIXTURES = "crates/engine/tests/fixtures"
TOKENS = [1, 403, 407, 261, 378, 432, 383, 286]  # as in the peft_lora_stories fixture


def build(seed, **lora):
    torch.manual_seed(seed)  # seeds A's Kaiming-uniform init
    base = LlamaForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, task_type="CAUSAL_LM", **lora))
    # A fresh adapter has B = 0 and changes nothing: give B (and any saved module copy) seeded
    # non-zero values, as after training.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.8)
            elif "modules_to_save" in n:
                p.mul_(1.0 + (torch.rand(p.shape, generator=g) - 0.5))
    model.eval()
    return model


def reference(model, out, variant):
    with torch.no_grad():
        ids = torch.tensor([TOKENS])
        logits = model(ids).logits[0, -1]
        with model.disable_adapter():
            base = model(ids).logits[0, -1]
    ref = {
        "produced_by": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        "variant": variant,
        "token_ids": TOKENS,
        "position": len(TOKENS) - 1,
        "max_abs_adapter_effect": float((logits - base).abs().max()),
        "logits": [round(float(x), 6) for x in logits],
    }
    with open(os.path.join(out, "reference_logits.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)  # PEFT's empty model card
    print(out, variant, "adapter effect", ref["max_abs_adapter_effect"])


def no_prefix():
    """save_pretrained, then keys without `base_model.model.` (as some exporters write)."""
    out = os.path.join(FIXTURES, "scaleout_no_prefix")
    model = build(20, target_modules=["q_proj"])
    model.save_pretrained(out)
    path = os.path.join(out, "adapter_model.safetensors")
    t = load_file(path)
    save_file({k.removeprefix("base_model.model."): v for k, v in t.items()}, path)
    reference(model, out, "LoRA keys without the base_model.model. prefix")


def raw_state_dict():
    """A raw state dict (FSDP / ZeRO-3 consolidation): `.default.` adapter-name infixes, a
    modules_to_save copy and the original module it shadows."""
    out = os.path.join(FIXTURES, "scaleout_raw_state_dict")
    model = build(30, target_modules=["v_proj"], modules_to_save=["model.norm"], use_rslora=True)
    os.makedirs(out, exist_ok=True)
    model.peft_config["default"].save_pretrained(out)
    keep = ("lora_", "modules_to_save", "original_module")
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if any(s in k for s in keep)}
    save_file(sd, os.path.join(out, "adapter_model.safetensors"))
    reference(model, out, "raw state dict: .default. infixes, modules_to_save + original_module")


def modules_to_save():
    """PEFT's own save of an adapter with a fully trained module and chosen layers."""
    out = os.path.join(FIXTURES, "scaleout_modules_to_save")
    model = build(40, target_modules=["o_proj", "down_proj"], layers_to_transform=[3, 4], modules_to_save=["model.norm"])
    model.save_pretrained(out)
    reference(model, out, "save_pretrained with modules_to_save and layers_to_transform")


no_prefix()
raw_state_dict()
modules_to_save()
