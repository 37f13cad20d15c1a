"""llama.cpp's figures for `peft bench generate`, on the same GGUF, prompt and thread count.

Run by hand from a scratch virtualenv outside the repo (tests never need Python):

    python3 -m venv /work/venv-llama && /work/venv-llama/bin/pip install llama-cpp-python numpy
    /work/venv-llama/bin/python scripts/bench_llamacpp_generate.py \
        --model ../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf \
        --threads 2 --prompt-tokens 128 --new-tokens 64

Same prompt as ours (ids cycling over the vocabulary's middle, `10 + i*7919 % (vocab-20)`),
greedy, no stop tokens. Prefill = one batched eval of the prompt; decode = tokens generated per
second of the loop that picks each token and evaluates it (the last one is not evaluated), as
`peft_engine::infer::generate` times it. Peak RSS is the whole process (the Python interpreter
and numpy included; their share is printed as the baseline before loading).
"""

import argparse
import os
import resource
import time

import numpy as np
from llama_cpp import Llama


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(b):
    return f"{b / 2**20:.1f} MiB"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    a = p.parse_args()

    baseline = rss_bytes()
    n_ctx = a.prompt_tokens + a.new_tokens
    llm = Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        use_mmap=True,
        verbose=False,
    )
    vocab = llm.n_vocab()
    ids = [10 + (i * 7919) % (vocab - 20) for i in range(a.prompt_tokens)]

    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    generated = []
    for i in range(a.new_tokens):
        # llama-cpp-python 0.3 keeps `scores` only with logits_all; read the last logits.
        last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))
        nxt = int(np.argmax(last))
        generated.append(nxt)
        if i + 1 == a.new_tokens:
            break
        llm.eval([nxt])
    decode_s = time.perf_counter() - t1

    md = llm.metadata
    arch = md.get("general.architecture", "llama")
    layers = int(md[f"{arch}.block_count"])
    heads = int(md[f"{arch}.attention.head_count"])
    kv_heads = int(md.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(md[f"{arch}.embedding_length"]) // heads
    # llama.cpp's default KV cache: f16 keys and values for the whole context.
    kv = 2 * layers * kv_heads * head_dim * 2 * n_ctx
    file = os.path.getsize(a.model)
    peak = peak_rss_bytes()
    print("| model | engine | threads | prompt | prefill tok/s | decode tok/s | file | KV cache (f16) "
          "| RSS before load | peak RSS | peak / (file + KV) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {a.model} | llama.cpp {__import__('llama_cpp').__version__} | {a.threads} "
        f"| {a.prompt_tokens} | {a.prompt_tokens / prefill_s:.0f} "
        f"| {len(generated) / decode_s:.1f} | {mib(file)} | {mib(kv)} | {mib(baseline)} "
        f"| {mib(peak)} | {peak / (file + kv):.2f}× |"
    )
    print(f"first tokens: {generated[:16]}")


if __name__ == "__main__":
    main()
