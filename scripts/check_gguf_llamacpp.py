#!/usr/bin/env python3
"""Independent check of PEFT Studio's GGUF exports with llama.cpp itself (via llama-cpp-python).

Not a test dependency: run by hand from a scratch virtualenv OUTSIDE the repo, e.g.

    python3 -m venv /work/venv-llama && /work/venv-llama/bin/pip install llama-cpp-python
    peft export ... --json > report.json
    /work/venv-llama/bin/python scripts/check_gguf_llamacpp.py report.json [--base BASE.gguf]

For each self-check conversation in the report it
  1. tokenizes the rendered prompt with llama.cpp's tokenizer (special tokens parsed, no extra
     BOS) and compares with our prompt ids;
  2. greedy-generates from our prompt ids with llama.cpp and compares the tokens with the ones
     our engine generated from the exported file (`exported_tokens`), stopping where llama.cpp's
     end-of-generation set says so (`llama_vocab_is_eog`), which also checks the EOS/EOT
     metadata.
For a LoRA adapter report (`--format gguf-adapter`) pass the base model as GGUF with --base
(e.g. `peft export --format gguf --quant f32` without --adapter); llama.cpp applies the adapter.
Prints one line per conversation and exits non-zero on any difference.
"""

import argparse
import json
import sys

import llama_cpp
from llama_cpp import Llama


def greedy(llm, prompt_ids, budget):
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for _ in range(budget):
        logits = llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            return out, True
        out.append(tok)
        llm.eval([tok])
    return out, False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--base", help="base model GGUF, for adapter reports")
    a = ap.parse_args()
    report = json.load(open(a.report))
    path = report["files"][0]
    check = report["self_check"]
    kwargs = dict(n_ctx=1024, logits_all=True, verbose=False, seed=0)
    if report["format"] == "gguf_adapter":
        if not a.base:
            sys.exit("an adapter report needs --base BASE.gguf")
        llm = Llama(model_path=a.base, lora_path=path, **kwargs)
    else:
        llm = Llama(model_path=path, **kwargs)
    md = llm.metadata
    print(f"{path}: arch {md.get('general.architecture')}, file_type {md.get('general.file_type')}, "
          f"eos {md.get('tokenizer.ggml.eos_token_id')}, eot {md.get('tokenizer.ggml.eot_token_id')}")
    failed = 0
    for i, p in enumerate(check["prompts"], 1):
        if p.get("skipped"):
            print(f"  {i}. skipped")
            continue
        ids = llm.tokenize(p["prompt_text"].encode(), add_bos=False, special=True)
        same_prompt = ids == p["prompt_ids"]
        toks, stopped = greedy(llm, p["prompt_ids"], check["max_new_tokens"])
        ours = p["exported_tokens"]
        agree = next((k for k, (x, y) in enumerate(zip(toks, ours)) if x != y), min(len(toks), len(ours)))
        same = toks == ours and stopped == p["exported_stopped"]
        failed += (not same_prompt) + (not same)
        print(f"  {i}. prompt ids {'equal' if same_prompt else 'DIFFER'}; "
              f"greedy {'equal' if same else 'DIFFER'} ({agree}/{max(len(toks), len(ours))} agree; "
              f"llama.cpp {'stops' if stopped else 'no stop'}, ours {'stops' if p['exported_stopped'] else 'no stop'})")
        if not same:
            print(f"     llama.cpp {toks}\n     ours      {ours}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
