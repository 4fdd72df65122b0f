#!/usr/bin/env python3
"""The peer a user would otherwise run: a MoE layer's expert FFN in PyTorch as
Hugging Face transformers' eager path does it (a Python loop over experts,
index_select, three F.linear calls, index_add_), on the GPU.

Same shapes, routing and FLOP count as `epmoe bench kernels`: each token picks
k distinct experts uniformly at random; FLOPs = 6 * hidden * ffn per routed
row. Prints CSV: backend,dtype,shape,tokens,rows,ms,tflops.
Run by bench/gpu_kernels_vs_torch.sh beside `epmoe bench kernels --backend cuda`.
"""
import argparse
import sys

import torch
import torch.nn.functional as F

SHAPES = {
    "mixtral": dict(hidden=4096, ffn=14336, experts=8, k=2),
    "dsv3": dict(hidden=7168, ffn=2048, experts=256, k=8),
}


def moe_loop(x, ids, wts, gate, up, down):
    out = torch.zeros_like(x)
    for e in range(len(gate)):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:  # transformers skips empty experts the same way
            continue
        h = x.index_select(0, tok)
        y = F.linear(F.silu(F.linear(h, gate[e])) * F.linear(h, up[e]), down[e])
        out.index_add_(0, tok, y * wts[tok, slot, None])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="all", choices=["mixtral", "dsv3", "all"])
    ap.add_argument("--tokens", default="1,16,128,1024,4096,16384")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 77
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(1)
    print("backend,dtype,shape,tokens,rows,ms,tflops")
    for name in (["mixtral", "dsv3"] if a.shape == "all" else [a.shape]):
        s = SHAPES[name]
        H, Fd, E, k = s["hidden"], s["ffn"], s["experts"], s["k"]
        sc = 1.0 / H ** 0.5
        gate = [(torch.randn(Fd, H, generator=g) * sc).to(dev, dt) for _ in range(E)]
        up = [(torch.randn(Fd, H, generator=g) * sc).to(dev, dt) for _ in range(E)]
        down = [(torch.randn(H, Fd, generator=g) / Fd ** 0.5).to(dev, dt) for _ in range(E)]
        for T in [int(t) for t in a.tokens.split(",")]:
            x = torch.randn(T, H, generator=g).to(dev, dt)
            ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(dev)
            wts = torch.softmax(torch.randn(T, k, generator=g), -1).to(dev, dt)
            moe_loop(x, ids, wts, gate, up, down)  # warm-up: cuBLAS handles, allocator
            torch.cuda.synchronize()
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(a.reps):
                moe_loop(x, ids, wts, gate, up, down)
            t1.record()
            torch.cuda.synchronize()
            ms = t0.elapsed_time(t1) / a.reps
            rows = T * k
            tf = 6.0 * H * Fd * rows / (ms * 1e-3) / 1e12
            print(f"torch-loop,{a.dtype},{name},{T},{rows},{ms:.4f},{tf:.2f}", flush=True)
        del gate, up, down
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
