//! Checkpoints: `checkpoints/step-N/` holding the adapter (PEFT format) or, for a
//! full-parameter run, every weight (`model.safetensors`), the optimizer moments and the loop
//! state. Each is written into a temporary folder and renamed into place, so a
//! crash mid-write never leaves a folder named `step-N` that is incomplete.

use super::adamw::AdamW;
use super::config::TrainConfig;
use super::TrainError;
use crate::fsutil::{sync_dir, write_json};
use crate::model::lora::LoraConfig;
use crate::model::{adapter, CausalLm};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const STATE: &str = "state.json";
const OPTIMIZER: &str = "optimizer.safetensors";
/// A full-parameter checkpoint's weights, by their Hub names.
pub const FULL_WEIGHTS: &str = "model.safetensors";

/// Where the loop stands after `step` optimizer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub step: usize,
    pub epoch: usize,
    /// Steps done within `epoch` (the data-order position).
    pub step_in_epoch: usize,
    /// Optimizer updates applied (bias-correction counter).
    pub optimizer_t: usize,
    /// The learning rate of the last step taken.
    pub lr: f64,
    pub tokens_trained: usize,
    pub supervised_trained: usize,
    pub elapsed_s: f64,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub evals_since_best: usize,
    pub last_val_loss: Option<f64>,
    pub seed: u64,
    pub config: TrainConfig,
    pub data_sha256: String,
}

/// Writes checkpoint `step` under `dir` atomically; returns its folder. `lora` is the
/// adapter's config, or None for a full-parameter run (the optimizer's parameters are saved).
pub fn save(
    dir: &Path,
    model: &CausalLm,
    lora: Option<&LoraConfig>,
    opt: &AdamW,
    state: &State,
) -> Result<PathBuf, TrainError> {
    let final_dir = dir.join(format!("step-{}", state.step));
    let tmp = dir.join(format!(".tmp-step-{}", state.step));
    let io = TrainError::io;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    match lora {
        Some(lora) => adapter::save(model, lora, Some(&state.config.model), &tmp)?,
        None => {
            let weights: HashMap<String, Tensor> = opt
                .params()
                .iter()
                .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
                .collect::<Result<_, candle_core::Error>>()?;
            candle_core::safetensors::save(&weights, tmp.join(FULL_WEIGHTS))?;
        }
    }
    let moments = opt.state_tensors()?;
    candle_core::safetensors::save(&moments, tmp.join(OPTIMIZER))?;
    std::fs::File::open(tmp.join(OPTIMIZER))
        .and_then(|f| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    write_json(&tmp.join(STATE), state)?;
    sync_dir(&tmp);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
    sync_dir(dir);
    Ok(final_dir)
}

/// Checks that a safetensors file is whole without reading its tensors: a readable header
/// whose tensors end exactly where the file does (a cut-off or overwritten file fails).
fn check_safetensors(path: &Path) -> Result<(), TrainError> {
    use std::io::Read;
    let bad = |m: String| TrainError::file(path, m);
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let len = f.metadata().map_err(|e| TrainError::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad(format!("damaged: only {len} bytes, no safetensors header")))?;
    let n = u64::from_le_bytes(n);
    if n > len - 8 {
        return Err(bad(format!(
            "damaged: the header claims {n} bytes, but the file has {len}"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| TrainError::io(path, e))?;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("damaged: unreadable safetensors header ({e})")))?;
    let mut end = 0u64;
    for (name, t) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = t["data_offsets"]
            .as_array()
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)));
        match offsets {
            Some((b, e)) if b <= e => end = end.max(e),
            _ => return Err(bad(format!("damaged: bad data_offsets for `{name}`"))),
        }
    }
    if 8 + n + end != len {
        return Err(bad(format!(
            "damaged: {len} bytes, but its header describes {} (cut off or overwritten)",
            8 + n + end
        )));
    }
    Ok(())
}

/// The step a checkpoint folder's name says (`step-N`).
fn folder_step(ckpt: &Path) -> Option<usize> {
    ckpt.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// Reads and checks a checkpoint folder without changing anything: every part must be there
/// and whole (weights, optimizer, state), and the state's step must be the folder's.
pub fn read_state(ckpt: &Path) -> Result<State, TrainError> {
    let p = ckpt.join(STATE);
    let text = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| TrainError::parse(&p, e))?;
    let weights = weights_file(&state);
    let mut needed = vec![OPTIMIZER, weights];
    if !state.config.full {
        needed.push(adapter::CONFIG_FILE);
    }
    for f in &needed {
        if !ckpt.join(f).is_file() {
            return Err(TrainError::file(&ckpt.join(f), "missing"));
        }
    }
    for f in [OPTIMIZER, weights] {
        check_safetensors(&ckpt.join(f))?;
    }
    if let Some(step) = folder_step(ckpt) {
        if state.step != step {
            return Err(TrainError::file(
                &p,
                format!(
                    "says step {}, but it is in the folder of step {step}",
                    state.step
                ),
            ));
        }
    }
    Ok(state)
}

/// The file holding a checkpoint's trained weights.
fn weights_file(state: &State) -> &'static str {
    if state.config.full {
        FULL_WEIGHTS
    } else {
        adapter::WEIGHTS_FILE
    }
}

/// Checkpoint folders under `dir`, newest first.
pub fn list(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort_by_key(|c| std::cmp::Reverse(c.0));
    v
}

/// The newest checkpoint that reads back whole, with the reasons the newer ones were skipped.
pub fn newest_valid(dir: &Path) -> (Option<(PathBuf, State)>, Vec<String>) {
    let mut skipped = Vec::new();
    for (_, path) in list(dir) {
        match read_state(&path) {
            Ok(s) => return (Some((path, s)), skipped),
            Err(e) => skipped.push(format!("skipping {}: {e}", path.display())),
        }
    }
    (None, skipped)
}

/// Loads a checkpoint's trained weights and optimizer state into the parameters `opt` holds.
pub fn restore(ckpt: &Path, opt: &mut AdamW, state: &State) -> Result<(), TrainError> {
    load_params(&ckpt.join(weights_file(state)), opt.params())?;
    let p = ckpt.join(OPTIMIZER);
    let moments: HashMap<String, Tensor> =
        candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| TrainError::parse(&p, e))?;
    opt.load_state(moments, state.optimizer_t)?;
    Ok(())
}

/// Sets each named variable from the safetensors file `path`; every one must be there, in its
/// shape.
pub fn load_params(path: &Path, params: &[(String, Var)]) -> Result<(), TrainError> {
    let saved = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| TrainError::parse(path, e))?;
    for (name, var) in params {
        let t: &Tensor = saved
            .get(name)
            .ok_or_else(|| TrainError::file(path, format!("has no `{name}`")))?;
        if t.dims() != var.dims() {
            return Err(TrainError::file(
                path,
                format!(
                    "`{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// Keeps the newest `keep` valid checkpoints and removes the rest: older ones, damaged ones,
/// and leftovers of interrupted writes.
pub fn prune(dir: &Path, keep: usize) -> Result<(), TrainError> {
    let mut kept = 0;
    for (_, path) in list(dir) {
        if kept < keep && read_state(&path).is_ok() {
            kept += 1;
            continue;
        }
        std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-step-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Writes an adapter folder (`adapter/`, `best/`) by building it aside and swapping it in.
pub fn write_adapter_dir(
    dest: &Path,
    model: &CausalLm,
    lora: &LoraConfig,
    base_model: &str,
) -> Result<(), TrainError> {
    write_dir(dest, |tmp| {
        adapter::save(model, lora, Some(base_model), tmp)?;
        Ok(())
    })
}

/// Writes a whole model (a full-parameter run's `model/`, `best/`) in the Hub layout, f32,
/// with `base`'s config and tokenizer files, by building it aside and swapping it in.
pub fn write_model_dir(
    dest: &Path,
    model: &CausalLm,
    base: &crate::model::Source,
) -> Result<(), TrainError> {
    write_dir(dest, |tmp| {
        crate::model::export::export(model, Some(base), tmp, candle_core::DType::F32, 4 << 30)?;
        Ok(())
    })
}

/// Builds folder `dest` aside with `fill` and swaps it in: a crash never leaves it half written.
fn write_dir(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}"));
    let old = parent.join(format!(".old-{name}"));
    let io = TrainError::io;
    for p in [&tmp, &old] {
        if p.exists() {
            std::fs::remove_dir_all(p).map_err(|e| io(p, e))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    fill(&tmp)?;
    if dest.exists() {
        std::fs::rename(dest, &old).map_err(|e| io(dest, e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| io(dest, e))?;
    sync_dir(parent);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoraConfig, ModelConfig};
    use crate::train::adamw::AdamWParams;

    #[test]
    fn a_half_written_or_damaged_checkpoint_is_never_taken_for_a_valid_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::preset("tiny").unwrap();
        let mut m = CausalLm::random(&cfg, 0, candle_core::DType::F32, &Device::Cpu).unwrap();
        let lora = LoraConfig::default();
        m.attach_lora(&lora, 0).unwrap();
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let opt = AdamW::new(m.lora_vars(), hp).unwrap();
        let state = |step| State {
            step,
            epoch: 0,
            step_in_epoch: step,
            optimizer_t: step,
            lr: 0.1,
            tokens_trained: 0,
            supervised_trained: 0,
            elapsed_s: 0.0,
            best_val_loss: None,
            best_step: None,
            evals_since_best: 0,
            last_val_loss: None,
            seed: 1,
            config: TrainConfig::default(),
            data_sha256: "x".into(),
        };
        save(dir.path(), &m, Some(&lora), &opt, &state(3)).unwrap();
        save(dir.path(), &m, Some(&lora), &opt, &state(4)).unwrap();
        // A crash while writing step 6 leaves only its temporary folder; step 5 lost a file.
        std::fs::create_dir_all(dir.path().join(".tmp-step-6")).unwrap();
        std::fs::write(dir.path().join(".tmp-step-6/state.json"), "{").unwrap();
        let five = save(dir.path(), &m, Some(&lora), &opt, &state(5)).unwrap();
        std::fs::remove_file(five.join(OPTIMIZER)).unwrap();
        let (found, skipped) = newest_valid(dir.path());
        assert_eq!(found.unwrap().1.step, 4);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].contains("step-5") && skipped[0].contains("optimizer.safetensors"),
            "{skipped:?}"
        );
        // Weights cut short, a damaged header, a state that is not its folder's step.
        let seven = save(dir.path(), &m, Some(&lora), &opt, &state(7)).unwrap();
        let w = seven.join(adapter::WEIGHTS_FILE);
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() - 10]).unwrap();
        let eight = save(dir.path(), &m, Some(&lora), &opt, &state(8)).unwrap();
        std::fs::write(eight.join(OPTIMIZER), b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
        let nine = save(dir.path(), &m, Some(&lora), &opt, &state(3000)).unwrap();
        std::fs::rename(&nine, dir.path().join("step-9")).unwrap();
        let (found, skipped) = newest_valid(dir.path());
        assert_eq!(found.unwrap().1.step, 4);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(
            skipped[0].contains("step-9/state.json: says step 3000"),
            "{skipped:?}"
        );
        assert!(
            skipped[1].contains("step-8/optimizer.safetensors: damaged: the header claims"),
            "{skipped:?}"
        );
        assert!(
            skipped[2].contains("step-7/adapter_model.safetensors: damaged")
                && skipped[2].contains("cut off"),
            "{skipped:?}"
        );
        prune(dir.path(), 1).unwrap();
        let left: Vec<usize> = list(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![4]);
        assert!(!dir.path().join(".tmp-step-6").exists());
    }
}
