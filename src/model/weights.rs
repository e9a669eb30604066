//! Base-model weights from safetensors: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped, checked name by name and shape by shape.

use super::{hub::Source, ModelError, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Weights {
    store: Store,
    /// Which file holds each tensor (for error messages).
    owner: HashMap<String, PathBuf>,
}

enum Store {
    Mmap(MmapedSafetensors),
    Memory(HashMap<String, Tensor>),
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

impl Weights {
    /// Opens the weights of a model folder or Hub repo (downloading shards as needed).
    pub fn open(src: &Source) -> Result<Self> {
        if let Some(index) = src.optional_file(INDEX)? {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| ModelError::file(&index, e.to_string()))?;
            let map = parse_index(&text).map_err(|m| ModelError::file(&index, m))?;
            let mut shards: Vec<&String> = map.values().collect();
            shards.sort();
            shards.dedup();
            let mut paths = HashMap::new();
            for s in shards {
                paths.insert(s.clone(), src.file(s)?);
            }
            let owner = map
                .into_iter()
                .map(|(k, f)| (k, paths[&f].clone()))
                .collect();
            let files: Vec<&PathBuf> = paths.values().collect();
            Self::mmap(&files, owner)
        } else {
            let path = src.file(SINGLE)?;
            Self::from_files(&[path])
        }
    }

    /// Opens explicit safetensors files.
    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        let mut owner = HashMap::new();
        for f in files {
            for name in header_names(f)? {
                owner.insert(name, f.clone());
            }
        }
        Self::mmap(&files.iter().collect::<Vec<_>>(), owner)
    }

    fn mmap(files: &[&PathBuf], owner: HashMap<String, PathBuf>) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every safetensors reader we rely on
        // them not being truncated while the model is loaded.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
            ModelError::file(
                files
                    .first()
                    .map(|p| p.as_path())
                    .unwrap_or(Path::new(SINGLE)),
                e.to_string(),
            )
        })?;
        Ok(Self {
            store: Store::Mmap(st),
            owner,
        })
    }

    /// Tensors already in memory (random models, tests).
    pub fn from_tensors(tensors: Vec<(String, Tensor)>) -> Self {
        let owner = tensors
            .iter()
            .map(|(k, _)| (k.clone(), PathBuf::from("<memory>")))
            .collect();
        Self {
            store: Store::Memory(tensors.into_iter().collect()),
            owner,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }

    /// Loads `name`, checks its shape and converts it to `dtype` on `device`.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let Some(file) = self.owner.get(name) else {
            let files: Vec<String> = {
                let mut f: Vec<String> = self
                    .owner
                    .values()
                    .map(|p| p.display().to_string())
                    .collect();
                f.sort();
                f.dedup();
                f
            };
            return Err(ModelError::Invalid(format!(
                "tensor `{name}` is missing from {}",
                files.join(", ")
            )));
        };
        let found: Vec<usize> = match &self.store {
            Store::Mmap(st) => st
                .get(name)
                .map_err(|e| ModelError::file(file, e.to_string()))?
                .shape()
                .to_vec(),
            Store::Memory(m) => m[name].dims().to_vec(),
        };
        if found != shape {
            return Err(ModelError::file(
                file,
                format!("tensor `{name}` has shape {found:?}, expected {shape:?} from config.json"),
            ));
        }
        let t = match &self.store {
            Store::Mmap(st) => st
                .load(name, device)
                .map_err(|e| ModelError::file(file, e.to_string()))?,
            Store::Memory(m) => m[name].to_device(device)?,
        };
        Ok(t.to_dtype(dtype)?)
    }
}

fn parse_index(text: &str) -> std::result::Result<HashMap<String, String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("malformed index: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no `weight_map` object")?;
    map.iter()
        .map(|(k, f)| {
            f.as_str()
                .map(|f| (k.clone(), f.to_string()))
                .ok_or_else(|| format!("weight_map[`{k}`] is not a file name"))
        })
        .collect()
}

/// The tensor names in a safetensors file's header.
fn header_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let err = |m: String| ModelError::file(path, m);
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len) as usize;
    if len > 100_000_000 {
        return Err(err("not a safetensors file: header too large".into()));
    }
    let mut header = vec![0u8; len];
    f.read_exact(&mut header)
        .map_err(|e| err(format!("truncated safetensors header: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| err(format!("malformed safetensors header: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| err("malformed safetensors header".into()))?;
    Ok(obj
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_parsing_names_the_problem() {
        assert!(parse_index("{}").unwrap_err().contains("weight_map"));
        assert!(parse_index(r#"{"weight_map":{"a":3}}"#)
            .unwrap_err()
            .contains("weight_map[`a`]"));
        let m = parse_index(r#"{"weight_map":{"a":"x.safetensors"}}"#).unwrap();
        assert_eq!(m["a"], "x.safetensors");
    }
}
