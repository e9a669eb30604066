//! Every matrix product of one LoRA training step, timed alone as the step computes it: the
//! base and attention products with candle's `matmul` (gemm) in the layout the step uses
//! (`x · Wᵀ` takes a strided, transposed right operand), the LoRA products with the rank-r
//! kernels of `socratune::model::lowrank` (column "gemm": those through candle's `matmul`
//! instead, in the step's layout); and again with candle's `matmul` on contiguous operands:
//! what the step's GEMMs cost at their shapes, and what a layout or kernel costs.
//!
//! `cargo bench --bench gemm_step -- [--preset small] [--json]`; `benches/gemm_compare.sh` runs
//! it and then torch on the same list (`benches/gemm_torch.py`), back to back, and prints the
//! ratios. The list follows the step of `socratune bench train` (src/model/lora.rs,
//! src/model/fused_attn.rs, src/model/loss.rs): keep them in step.

use candle_core::{Device, Tensor};
use serde_json::json;
use socratune::model::loss::Batch;
use socratune::model::lowrank;
use socratune::model::ModelConfig;
use std::time::Instant;

/// How the step computes a product.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// candle's `matmul` (gemm), in the layouts `lhs_t`/`rhs_t`.
    Matmul,
    /// `lowrank::rank_n`: n is the rank.
    RankN,
    /// `lowrank::rank_k`, added to the output: k is the rank.
    RankK,
    /// `lowrank::rank_m`, `lhsᵀ · rhs` with `lhs` `[k, m]`: m is the rank.
    RankM,
}

/// One product `[batch ×] (m × k) · (k × n)`, `count` times a step; `lhs_t`/`rhs_t`: the
/// operand is the transpose of a contiguous tensor (a strided view), as the step has it.
struct Gemm {
    path: Path,
    name: String,
    count: usize,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs_t: bool,
    rhs_t: bool,
}

fn gemm(name: &str, count: usize, batch: usize, mkn: [usize; 3], lhs_t: bool, rhs_t: bool) -> Gemm {
    let [m, k, n] = mkn;
    Gemm {
        path: Path::Matmul,
        name: name.to_string(),
        count,
        batch,
        m,
        k,
        n,
        lhs_t,
        rhs_t,
    }
}

/// The products of one step of `bench train --preset <preset>` (LoRA on all seven projections,
/// r = 16, no dropout, B × T tokens, the loss on the supervised rows only).
fn step_gemms(cfg: &ModelConfig, b: usize, t: usize, supervised: usize) -> Vec<Gemm> {
    let (n, h, i, r) = (b * t, cfg.hidden_size, cfg.intermediate_size, 16);
    let (nh, nkv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let layers = cfg.num_hidden_layers;
    let mut v = Vec::new();
    // (name, in, out) of the seven projections; q/k/v/o, gate/up and down share shapes.
    let projections = [
        ("q/o", h, nh * d, 2),
        ("k/v", h, nkv * d, 2),
        ("gate/up", h, i, 2),
        ("down", i, h, 1),
    ];
    for (p, fan_in, out, times) in projections {
        // (product, m × k × n, lhs transposed, rhs transposed, path), as src/model/lora.rs
        // forms them (the rank-r kernels take `Aᵀ` and `Bᵀ` copied, `dB` comes transposed).
        let products = [
            ("x·Wᵀ", [n, fan_in, out], false, true, Path::Matmul),
            ("x·Aᵀ", [n, fan_in, r], false, true, Path::RankN),
            ("u·Bᵀ", [n, r, out], false, true, Path::RankK),
            ("dx=g·W", [n, out, fan_in], false, false, Path::Matmul),
            ("dBᵀ=uᵀ·g", [r, n, out], true, false, Path::RankM),
            ("du=g·B", [n, out, r], false, false, Path::RankN),
            ("dA=duᵀ·x", [r, n, fan_in], true, false, Path::RankM),
            ("du·A", [n, r, fan_in], false, false, Path::RankK),
        ];
        for (what, mkn, lt, rt, path) in products {
            let name = format!("{p} {what}");
            v.push(Gemm {
                path,
                ..gemm(&name, layers * times, 1, mkn, lt, rt)
            });
        }
    }
    // Attention, causal: each query head's positions in tiles, each tile against the keys up to
    // its last position only, one product a tile and head, as src/model/fused_attn.rs forms
    // them (the presets' windows are longer than their sequences: nothing more is skipped).
    for (rows, keys) in socratune::model::causal_tile_shapes(t) {
        let products = [
            ("S=Q·Kᵀ", [rows, d, keys], false, true),
            ("O=P·V", [rows, keys, d], false, false),
            ("dV=Pᵀ·dO", [keys, rows, d], true, false),
            ("dP=dO·Vᵀ", [rows, d, keys], false, true),
            ("dQ=dS·K", [rows, keys, d], false, false),
            ("dK=dSᵀ·Q", [keys, rows, d], true, false),
        ];
        for (what, mkn, lt, rt) in products {
            let name = format!("attn {what} {rows}×{keys}");
            v.push(gemm(&name, layers, b * nh, mkn, lt, rt));
        }
    }
    let vocab = cfg.vocab_size;
    v.push(gemm(
        "head z=h·Wᵀ",
        1,
        1,
        [supervised, h, vocab],
        false,
        true,
    ));
    v.push(gemm(
        "head dh=dz·W",
        1,
        1,
        [supervised, vocab, h],
        false,
        false,
    ));
    v
}

/// A `[batch, rows, cols]` operand, or the transposed view of a contiguous `[batch, cols, rows]`.
fn operand(batch: usize, rows: usize, cols: usize, transposed: bool) -> Tensor {
    let dims = if transposed {
        (batch, cols, rows)
    } else {
        (batch, rows, cols)
    };
    let x = Tensor::randn(0f32, 1.0, dims, &Device::Cpu).expect("randn");
    let x = if transposed { x.t().expect("t") } else { x };
    if batch == 1 {
        x.squeeze(0).expect("squeeze")
    } else {
        x
    }
}

/// Seconds of one product by `path` (`lhs_t`/`rhs_t`: the matmul's layout): the best of
/// repeated runs over at least `budget` seconds.
fn time(g: &Gemm, path: Path, lhs_t: bool, rhs_t: bool, budget: f64) -> f64 {
    let (m, k, n) = (g.m, g.k, g.n);
    let vals = |len: usize| (0..len).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let (p, q): (Vec<f32>, Vec<f32>) = (vals(m * k), vals(k * n));
    let mut dst = vec![0f32; m * n];
    let mut run: Box<dyn FnMut()> = match path {
        Path::Matmul => {
            let a = operand(g.batch, m, k, lhs_t);
            let b = operand(g.batch, k, n, rhs_t);
            Box::new(move || drop(std::hint::black_box(a.matmul(&b).expect("matmul"))))
        }
        Path::RankN => Box::new(|| lowrank::rank_n(&mut dst, &p, &q, [m, k, n], 1.0)),
        Path::RankK => Box::new(|| lowrank::rank_k(&mut dst, &p, &q, [m, k, n], 1.0, true, None)),
        Path::RankM => Box::new(|| lowrank::rank_m(&mut dst, &p, &q, [k, m, n], 1.0, None)),
    };
    run(); // warm-up: thread pools, page faults
    let (mut best, mut spent, mut runs) = (f64::INFINITY, 0.0, 0);
    while spent < budget || runs < 3 {
        let t0 = Instant::now();
        run();
        let dt = t0.elapsed().as_secs_f64();
        best = best.min(dt);
        spent += dt;
        runs += 1;
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let preset = value("--preset").unwrap_or_else(|| "small".into());
    let json_out = args.iter().any(|a| a == "--json");
    socratune::threads::pin_thread_count();
    socratune::fpenv::flush_subnormals_everywhere();
    let cfg = ModelConfig::preset(&preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
    let (b, t) = socratune::train::bench::preset_batch(&preset);
    let rows: Vec<Vec<u32>> = (0..b).map(|_| vec![3; t]).collect();
    let supervised = Batch::masked_prefix(&rows, 0.4, cfg.vocab_size, &Device::Cpu)
        .expect("batch")
        .supervised();
    let (mut total, mut total_gemm, mut total_contig, mut flops) = (0.0, 0.0, 0.0, 0.0);
    if !json_out {
        println!(
            "{:<16} {:>5} {:>22} {:>9} {:>8} {:>9} {:>9}",
            "product", "×step", "batch×m×k×n", "ms", "GFLOP/s", "gemm", "contig."
        );
    }
    for g in step_gemms(&cfg, b, t, supervised) {
        let f = 2.0 * (g.batch * g.m * g.k * g.n) as f64;
        let s = time(&g, g.path, g.lhs_t, g.rhs_t, 0.1);
        // What gemm takes in the step's layout, where the step uses a rank-r kernel instead.
        let s_gemm = match g.path {
            Path::Matmul => s,
            _ => time(&g, Path::Matmul, g.lhs_t, g.rhs_t, 0.1),
        };
        let s_contig = if g.lhs_t || g.rhs_t || g.path != Path::Matmul {
            time(&g, Path::Matmul, false, false, 0.1)
        } else {
            s
        };
        total += s * g.count as f64;
        total_gemm += s_gemm * g.count as f64;
        total_contig += s_contig * g.count as f64;
        flops += f * g.count as f64;
        if json_out {
            println!(
                "{}",
                json!({"impl": "candle", "name": g.name, "count": g.count, "batch": g.batch,
                       "m": g.m, "k": g.k, "n": g.n, "lhs_t": g.lhs_t, "rhs_t": g.rhs_t,
                       "s": s, "s_gemm": s_gemm, "s_contiguous": s_contig})
            );
        } else {
            println!(
                "{:<16} {:>5} {:>22} {:>9.3} {:>8.0} {:>9.0} {:>9.0}",
                g.name,
                g.count,
                format!("{}×{}×{}×{}", g.batch, g.m, g.k, g.n),
                s * 1e3,
                f / s / 1e9,
                f / s_gemm / 1e9,
                f / s_contig / 1e9
            );
        }
    }
    if !json_out {
        println!(
            "step: {:.1} GFLOP in {:.0} ms ({:.0} GFLOP/s); all through gemm {:.0} ms; with contiguous operands {:.0} ms",
            flops / 1e9,
            total * 1e3,
            flops / total / 1e9,
            total_gemm * 1e3,
            total_contig * 1e3
        );
    }
}
