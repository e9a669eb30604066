#!/usr/bin/env python3
"""torch's time for each matrix product of `cargo bench --bench gemm_step -- --json`, in the
same layouts (a transposed operand is the transposed view of a contiguous tensor, as
`x @ w.t()`), float32 on the CPU. Reads the bench's JSON lines on stdin, writes them back with
`torch_s` added. benches/gemm_compare.sh runs both back to back.
"""
import json
import sys
import time

import torch


def operand(batch, rows, cols, transposed):
    x = torch.randn((batch, cols, rows) if transposed else (batch, rows, cols))
    if transposed:
        x = x.transpose(-1, -2)
    return x[0] if batch == 1 else x


def best_time(a, b, budget=0.1):
    torch.matmul(a, b)  # warm-up
    best, spent, runs = float("inf"), 0.0, 0
    while spent < budget or runs < 3:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def main():
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    torch.manual_seed(0)
    for line in sys.stdin:
        g = json.loads(line)
        a = operand(g["batch"], g["m"], g["k"], g["lhs_t"])
        b = operand(g["batch"], g["k"], g["n"], g["rhs_t"])
        g["torch_s"] = best_time(a, b)
        g["torch_threads"] = torch.get_num_threads()
        print(json.dumps(g), flush=True)


if __name__ == "__main__":
    main()
