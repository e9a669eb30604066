#!/usr/bin/env python3
"""torch's time for each matrix product of `cargo bench --bench gemm_step -- --json`, in the
same layouts (a transposed operand is the transposed view of a contiguous tensor, as
`x @ w.t()`), float32 on the CPU. Reads the bench's JSON lines on stdin, writes them back with
`torch_s` added (`--json`), or a table of both with the step's totals.
benches/gemm_compare.sh runs both back to back.
"""
import argparse
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    for line in sys.stdin:
        g = json.loads(line)
        lhs = operand(g["batch"], g["m"], g["k"], g["lhs_t"])
        rhs = operand(g["batch"], g["k"], g["n"], g["rhs_t"])
        g["torch_s"] = best_time(lhs, rhs)
        g["torch_threads"] = torch.get_num_threads()
        rows.append(g)
        if a.json:
            print(json.dumps(g), flush=True)
    if not a.json:
        report(rows)


def report(rows):
    print("%-16s %5s %20s %8s %8s %8s   GFLOP/s: candle as the step lays it out, contiguous, torch"
          % ("product", "xstep", "batch x m x k x n", "candle", "contig.", "torch"))
    total, flops = [0.0, 0.0, 0.0], 0.0
    for g in rows:
        f = 2.0 * g["batch"] * g["m"] * g["k"] * g["n"]
        t = (g["s"], g["s_contiguous"], g["torch_s"])
        total = [acc + x * g["count"] for acc, x in zip(total, t)]
        flops += f * g["count"]
        shape = "%dx%dx%dx%d" % (g["batch"], g["m"], g["k"], g["n"])
        print("%-16s %5d %20s %8.0f %8.0f %8.0f"
              % ((g["name"], g["count"], shape) + tuple(f / x / 1e9 for x in t)))
    c, cc, tt = total
    print("step: %.1f GFLOP; candle %.0f ms (%.0f GFLOP/s), contiguous %.0f ms, torch %.0f ms "
          "(%.0f GFLOP/s); torch / candle time %.2fx; threads %d"
          % (flops / 1e9, c * 1e3, flops / c / 1e9, cc * 1e3, tt * 1e3, flops / tt / 1e9,
             tt / c, rows[0]["torch_threads"] if rows else 0))


if __name__ == "__main__":
    main()
