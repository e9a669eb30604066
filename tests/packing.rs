//! Packing is exact: a batch whose rows hold several examples (best-fit-decreasing, as the
//! trainer packs them) gives the same mean loss and the same gradients as the same examples
//! one a row, for every family's fixture (Gemma-2 with its sliding window of 7 tokens,
//! shorter than the packed rows, and its soft-caps; Gemma-3; Qwen3; Llama-3), both kernel
//! sets, LoRA and full-parameter training.

mod common;
use candle_core::{DType, Device, Tensor};
use socratune::model::lora::Mode;
use socratune::model::loss::{loss_sum, Batch, Seq, IGNORE};
use socratune::model::{adapter, load_with_kernels, CausalLm, Kernels, Source};
use socratune::train::batching::pack_rows;

/// Lengths of the examples: uneven, several longer than the window, one short, three long
/// ones, so that attention runs in several groups of similar length (200; 140 and 131; the
/// eight short ones padded to 30 together: see `length_groups` in src/model/blocks.rs).
const LENGTHS: [usize; 11] = [23, 9, 17, 5, 30, 12, 8, 14, 200, 131, 140];
/// Tokens a packed row: 1–7 examples each.
const ROW: usize = 240;
const TOLERANCE: f32 = 1e-5;

/// Examples with a BOS each, pseudo-random ids, a prompt part that is not trained.
fn examples(vocab: u32, bos: u32) -> Vec<(Vec<u32>, Vec<i64>)> {
    let mut x = 12345u64;
    LENGTHS
        .iter()
        .map(|&n| {
            let ids: Vec<u32> = (0..n)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if i == 0 {
                        bos
                    } else {
                        3 + (x >> 33) as u32 % (vocab - 3)
                    }
                })
                .collect();
            let prompt = n / 3;
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { IGNORE } else { t as i64 })
                .collect();
            (ids, labels)
        })
        .collect()
}

/// The mean token loss of `batch` and its gradients: the LoRA ones when an adapter is
/// attached, those of `vars` otherwise.
fn loss_and_grads(
    m: &CausalLm,
    batch: &Batch,
    vars: &[(String, candle_core::Var)],
) -> (f32, Vec<(String, Tensor)>) {
    let loss =
        (loss_sum(m, batch, &mut Mode::grad_only()).unwrap() / batch.supervised() as f64).unwrap();
    let store = loss.backward().unwrap();
    let grads = if vars.is_empty() {
        m.lora_vars()
            .into_iter()
            .zip(m.take_lora_grads())
            .map(|((name, _), g)| (name.clone(), g.unwrap_or_else(|| panic!("{name}: no grad"))))
            .collect()
    } else {
        vars.iter()
            .map(|(name, v)| {
                let g = store.get(v).unwrap_or_else(|| panic!("{name}: no grad"));
                (name.clone(), g.clone())
            })
            .collect()
    };
    (loss.to_scalar::<f32>().unwrap(), grads)
}

fn check(family: &str, kernels: Kernels, full: bool) {
    let dir = common::family_fixture(family);
    let mut m = load_with_kernels(
        &Source::Local(dir.clone()),
        DType::F32,
        &Device::Cpu,
        kernels,
    )
    .unwrap();
    let vars = if full {
        m.make_trainable().unwrap()
    } else {
        adapter::load(&mut m, &dir.join("adapter")).unwrap();
        Vec::new()
    };
    let vocab = m.cfg.vocab_size;
    let bos = m.cfg.bos_token_id.unwrap_or(2);
    let ex = examples(vocab as u32, bos);
    let seq = |i: usize| -> Seq { (ex[i].0.as_slice(), ex[i].1.as_slice()) };
    let lengths: Vec<usize> = ex.iter().map(|e| e.0.len()).collect();
    let order: Vec<usize> = (0..ex.len()).collect();
    let rows = pack_rows(&lengths, &order, ROW);
    assert!(
        rows.len() < ex.len() && rows.iter().any(|r| r.len() >= 3),
        "{rows:?}"
    );
    let packed_rows: Vec<Vec<Seq>> = rows
        .iter()
        .map(|r| r.iter().map(|&i| seq(i)).collect())
        .collect();
    let packed = Batch::packed(&packed_rows, 0, vocab, &Device::Cpu).unwrap();
    let singles: Vec<Seq> = (0..ex.len()).map(seq).collect();
    let unpacked = Batch::new(&singles, 0, vocab, &Device::Cpu).unwrap();
    assert_eq!(packed.supervised(), unpacked.supervised());
    assert_eq!(packed.input_ids.dim(0).unwrap(), rows.len());

    let what = format!("{family} {kernels:?} full={full}");
    let (loss_p, grads_p) = loss_and_grads(&m, &packed, &vars);
    let (loss_u, grads_u) = loss_and_grads(&m, &unpacked, &vars);
    assert!(
        (loss_p - loss_u).abs() <= TOLERANCE,
        "{what}: packed loss {loss_p} vs {loss_u}"
    );
    assert!(!grads_p.is_empty());
    for ((name, gp), (_, gu)) in grads_p.iter().zip(&grads_u) {
        let d = common::max_abs_diff(gp, gu);
        // Against gradients that are not all ~0: the check must be able to fail.
        assert!(
            common::max_abs(gu) > 1e-4,
            "{what}: {name} has no gradient to compare"
        );
        assert!(d <= TOLERANCE, "{what}: {name} differs by {d}");
    }
}

#[test]
fn packed_lora_gradients_equal_unpacked_in_every_family() {
    for family in ["gemma2", "gemma3", "qwen3", "llama"] {
        for kernels in [Kernels::Fused, Kernels::Reference] {
            check(family, kernels, false);
        }
    }
}

#[test]
fn packed_full_gradients_equal_unpacked() {
    for family in ["gemma2", "llama"] {
        for kernels in [Kernels::Fused, Kernels::Reference] {
            check(family, kernels, true);
        }
    }
}

/// The packing itself, against the rules: labels stay in their example, every example keeps
/// its BOS, and without keeping the examples apart the loss would change (so the checks above
/// are not vacuous).
#[test]
fn packed_batches_keep_examples_apart() {
    let ex = [
        (vec![2u32, 7, 8, 9], vec![IGNORE, 7, 8, 9]),
        (vec![2u32, 5, 6], vec![IGNORE, 5, 6]),
    ];
    let row: Vec<Seq> = ex
        .iter()
        .map(|(i, l)| (i.as_slice(), l.as_slice()))
        .collect();
    let b = Batch::packed(&[row], 0, 16, &Device::Cpu).unwrap();
    assert_eq!(
        b.input_ids.to_vec2::<u32>().unwrap(),
        vec![vec![2, 7, 8, 9, 2, 5, 6]]
    );
    // Position 3 (example 0's last token) predicts nothing: not example 1's BOS.
    assert_eq!(b.positions.to_vec1::<u32>().unwrap(), vec![0, 1, 2, 4, 5]);
    assert_eq!(b.targets, vec![7, 8, 9, 5, 6]);
    assert_eq!(
        b.packed.as_ref().unwrap().examples,
        vec![(0, 0, 4), (0, 4, 3)]
    );

    // Example 1 alone vs after example 0 in a row: the same loss with segments, another
    // without (the model then lets it see example 0).
    let dir = common::fixture();
    let m = load_with_kernels(
        &Source::Local(dir),
        DType::F32,
        &Device::Cpu,
        Kernels::Fused,
    )
    .unwrap();
    let alone = Batch::new(&[(&ex[1].0, &ex[1].1)], 0, 384, &Device::Cpu).unwrap();
    let mut both = Batch::packed(
        &[ex.iter()
            .map(|(i, l)| (i.as_slice(), l.as_slice()))
            .collect()],
        0,
        384,
        &Device::Cpu,
    )
    .unwrap();
    both.positions = Tensor::new(&[4u32, 5], &Device::Cpu).unwrap();
    both.targets = vec![5, 6];
    let loss = |b: &Batch| {
        loss_sum(&m, b, &mut Mode::eval())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let want = loss(&alone);
    assert!((loss(&both) - want).abs() <= TOLERANCE);
    both.packed = None;
    assert!((loss(&both) - want).abs() > 1e-3);
}
