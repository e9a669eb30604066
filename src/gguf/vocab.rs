//! The tokenizer as llama.cpp reads it from `tokenizer.ggml.*`: a SentencePiece model
//! (`tokenizer.model`, Gemma's own) becomes the `llama` vocabulary with scores and token
//! types; a byte-level BPE `tokenizer.json` (the demo's) becomes `gpt2` with merges and the
//! GPT-2 pre-tokenizer. Both as llama.cpp's `convert_hf_to_gguf.py` writes them.

use super::{GgufError, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use std::path::Path;

// gguf-py's `TokenType`.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The vocabulary in GGUF's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    /// `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub model: &'static str,
    /// `tokenizer.ggml.pre`.
    pub pre: &'static str,
    pub tokens: Vec<String>,
    /// SentencePiece only.
    pub scores: Option<Vec<f32>>,
    pub types: Vec<i32>,
    /// BPE only, `a b` per merge.
    pub merges: Option<Vec<String>>,
}

impl Vocab {
    /// The `tokenizer.ggml.*` keys for the vocabulary itself.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let mut m = vec![
            (
                "tokenizer.ggml.model".into(),
                Value::String(self.model.into()),
            ),
            ("tokenizer.ggml.pre".into(), Value::String(self.pre.into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(self.tokens.iter().cloned().map(Value::String).collect()),
            ),
        ];
        if let Some(s) = &self.scores {
            m.push((
                "tokenizer.ggml.scores".into(),
                Value::Array(s.iter().copied().map(Value::F32).collect()),
            ));
        }
        m.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(self.types.iter().copied().map(Value::I32).collect()),
        ));
        if let Some(merges) = &self.merges {
            m.push((
                "tokenizer.ggml.merges".into(),
                Value::Array(merges.iter().cloned().map(Value::String).collect()),
            ));
        }
        if self.model == "llama" {
            // Gemma's SentencePiece model adds no space before the first word.
            m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
        }
        m
    }

    /// The id of a token, by its text.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }
}

/// Reads a SentencePiece `tokenizer.model`, padded to `vocab_size` as the converter does;
/// `added` are `tokenizer_config.json`'s `added_tokens_decoder` entries (id, text, special).
pub fn from_sentencepiece(
    path: &Path,
    vocab_size: usize,
    added: &[(usize, String, bool)],
) -> Result<Vocab> {
    let bytes = std::fs::read(path).map_err(|e| GgufError::file(path, e.to_string()))?;
    let pieces = sentencepiece_pieces(&bytes).map_err(|m| GgufError::file(path, m))?;
    if pieces.len() > vocab_size {
        return Err(GgufError::file(
            path,
            format!(
                "{} pieces do not fit the model's vocab_size {vocab_size}",
                pieces.len()
            ),
        ));
    }
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (i, (piece, score, kind)) in pieces.into_iter().enumerate() {
        tokens[i] = piece;
        scores[i] = score;
        // SentencePiece's types are gguf's, except that anything unknown counts as normal.
        types[i] = match kind {
            UNKNOWN | CONTROL | USER_DEFINED | UNUSED | BYTE => kind,
            _ => NORMAL,
        };
    }
    apply_added(&mut tokens, &mut types, Some(&mut scores), added, path)?;
    Ok(Vocab {
        model: "llama",
        pre: "default",
        tokens,
        scores: Some(scores),
        types,
        merges: None,
    })
}

/// `added_tokens_decoder` entries override the pieces: special ones are control tokens,
/// others user-defined with SentencePiece's `▁` as a space.
fn apply_added(
    tokens: &mut [String],
    types: &mut [i32],
    mut scores: Option<&mut Vec<f32>>,
    added: &[(usize, String, bool)],
    path: &Path,
) -> Result<()> {
    for (id, text, special) in added {
        if *id >= tokens.len() {
            return Err(GgufError::file(
                path,
                format!(
                    "added token {text:?} has id {id}, beyond the model's vocabulary of {}",
                    tokens.len()
                ),
            ));
        }
        if *special || looks_special(text) {
            types[*id] = CONTROL;
            tokens[*id] = text.clone();
        } else {
            types[*id] = USER_DEFINED;
            tokens[*id] = text.replace('\u{2581}', " ");
        }
        if let Some(s) = scores.as_deref_mut() {
            s[*id] = -1000.0;
        }
    }
    Ok(())
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    (t.starts_with('<') && t.ends_with('>') && t.len() > 2 && !t.starts_with("<0x"))
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
}

/// The split regexes of Llama-3's and Qwen2's (Qwen3's) `tokenizer.json`, as llama.cpp's
/// `llama-vocab.cpp` quotes them; they differ in digits: up to three at once, or one.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE pre-tokenizer: GPT-2's own, or
/// Llama-3's / Qwen2's regex split before a byte-level step without its own regex.
fn bpe_pre_tokenizer(pre: &Json) -> Option<&'static str> {
    let byte_level = |p: &Json, own_regex: bool| {
        p["type"] == "ByteLevel"
            && p["add_prefix_space"] != true
            && (p["use_regex"] != false) == own_regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let steps = pre["pretokenizers"].as_array()?;
    let [split, bytes] = steps.as_slice() else {
        return None;
    };
    if pre["type"] != "Sequence"
        || split["type"] != "Split"
        || split["behavior"] != "Isolated"
        || split["invert"] == true
        || !byte_level(bytes, false)
    {
        return None;
    }
    match split["pattern"]["Regex"].as_str()? {
        LLAMA3_SPLIT => Some("llama-bpe"),
        QWEN2_SPLIT => Some("qwen2"),
        _ => None,
    }
}

/// A byte-level BPE `tokenizer.json` (as `socratune data tokenizer` and the demo make), padded
/// to `vocab_size`. Anything llama.cpp could not reproduce is refused.
pub fn from_tokenizer_json(path: &Path, vocab_size: usize) -> Result<Vocab> {
    let text = std::fs::read_to_string(path).map_err(|e| GgufError::file(path, e.to_string()))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| GgufError::file(path, format!("malformed tokenizer.json: {e}")))?;
    let bad = |m: String| GgufError::file(path, m);
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "model.type is {}; GGUF export maps byte-level BPE tokenizers (and SentencePiece through tokenizer.model)",
            model["type"]
        )));
    }
    if model["byte_fallback"] == true {
        return Err(bad(
            "a SentencePiece-style BPE (byte_fallback) needs its tokenizer.model beside it for GGUF export".into(),
        ));
    }
    let pre_name = bpe_pre_tokenizer(&json["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "pre_tokenizer {} is neither GPT-2's byte-level one nor Llama-3's or Qwen2's split + byte-level, the BPE pre-tokenizers the export maps",
            json["pre_tokenizer"]
        ))
    })?;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut place = |t: &str, id: &Json| -> Result<usize> {
        let id =
            id.as_u64()
                .ok_or_else(|| bad(format!("token {t:?} has no integer id")))? as usize;
        if id >= vocab_size {
            return Err(bad(format!(
                "token {t:?} has id {id}, beyond the model's vocab_size {vocab_size}"
            )));
        }
        tokens[id] = Some(t.to_string());
        Ok(id)
    };
    for (t, id) in vocab {
        place(t, id)?;
    }
    let mut added = Vec::new();
    for a in json["added_tokens"].as_array().into_iter().flatten() {
        let content = a["content"].as_str().unwrap_or_default();
        let id = place(content, &a["id"])?;
        added.push((id, content.to_string(), a["special"] == true));
    }
    let mut types: Vec<i32> = tokens
        .iter()
        .map(|t| if t.is_some() { NORMAL } else { UNUSED })
        .collect();
    let mut tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    apply_added(&mut tokens, &mut types, None, &added, path)?;
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is missing".into()))?
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            _ => Err(bad(format!(
                "model.merges[{i}] is neither \"a b\" nor [a, b]"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Vocab {
        model: "gpt2",
        pre: pre_name,
        tokens,
        scores: None,
        types,
        merges: Some(merges),
    })
}

/// The pieces of a SentencePiece `ModelProto` (field 1: piece = 1, score = 2, type = 3),
/// read with the few protobuf wire rules they use.
fn sentencepiece_pieces(buf: &[u8]) -> std::result::Result<Vec<(String, f32, i32)>, String> {
    let mut out = Vec::new();
    let mut r = Reader { buf, pos: 0 };
    while r.pos < buf.len() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            let msg = r.bytes()?;
            let mut p = Reader { buf: msg, pos: 0 };
            let (mut piece, mut score, mut kind) = (String::new(), 0.0f32, NORMAL);
            while p.pos < msg.len() {
                match p.key()? {
                    (1, 2) => {
                        piece = String::from_utf8(p.bytes()?.to_vec())
                            .map_err(|_| format!("piece {} is not UTF-8", out.len()))?
                    }
                    (2, 5) => score = f32::from_le_bytes(p.fixed32()?),
                    (3, 0) => kind = p.varint()? as i32,
                    (_, w) => p.skip(w)?,
                }
            }
            out.push((piece, score, kind));
        } else {
            r.skip(wire)?;
        }
    }
    if out.is_empty() {
        return Err("not a SentencePiece model: no pieces".into());
    }
    Ok(out)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("not a SentencePiece model: truncated")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("not a SentencePiece model: bad varint".into())
    }
    fn key(&mut self) -> std::result::Result<(u64, u64), String> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("not a SentencePiece model: truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        self.take(n)
    }
    fn fixed32(&mut self) -> std::result::Result<[u8; 4], String> {
        Ok(self.take(4)?.try_into().expect("4 bytes"))
    }
    fn skip(&mut self, wire: u64) -> std::result::Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            w => Err(format!("not a SentencePiece model: wire type {w}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpe_pre_tokenizers_map_to_llama_cpp_names() {
        let split = |regex: &str, trim: bool| {
            serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim, "use_regex": false}
            ]})
        };
        // The regex as meta-llama/Llama-3.2-1B-Instruct's tokenizer.json spells it (JSON).
        let llama3: String = serde_json::from_str(
            r#""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+""#,
        )
        .unwrap();
        assert_eq!(bpe_pre_tokenizer(&split(&llama3, true)), Some("llama-bpe"));
        assert_eq!(bpe_pre_tokenizer(&split(QWEN2_SPLIT, false)), Some("qwen2"));
        assert_eq!(bpe_pre_tokenizer(&split(r"\s+", false)), None);
        let gpt2 = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
        assert_eq!(bpe_pre_tokenizer(&gpt2), Some("gpt-2"));
        let no_regex = serde_json::json!({"type": "ByteLevel", "use_regex": false});
        assert_eq!(bpe_pre_tokenizer(&no_regex), None);
    }

    fn piece(text: &str, score: f32, kind: u8) -> Vec<u8> {
        let mut m = vec![0x0a, text.len() as u8];
        m.extend(text.as_bytes());
        m.push(0x15);
        m.extend(score.to_le_bytes());
        m.extend([0x18, kind]);
        let mut out = vec![0x0a, m.len() as u8];
        out.extend(m);
        out
    }

    #[test]
    fn sentencepiece_pieces_types_and_added_tokens_map_as_the_converter_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.model");
        let mut bytes = Vec::new();
        for (t, s, k) in [
            ("<pad>", 0.0, 3),
            ("<eos>", 0.0, 3),
            ("<bos>", 0.0, 3),
            ("<unk>", 0.0, 2),
            ("<0x41>", 0.0, 6),
            ("\u{2581}the", -1.5, 1),
            ("x\u{2581}y", -2.0, 4),
        ] {
            bytes.extend(piece(t, s, k));
        }
        // An unrelated field (trainer spec) is skipped.
        bytes.extend([0x12, 0x02, 0x08, 0x01]);
        std::fs::write(&path, &bytes).unwrap();
        let v = from_sentencepiece(&path, 9, &[(6, "<start_of_turn>".into(), true)]).unwrap();
        assert_eq!(v.model, "llama");
        assert_eq!(
            v.tokens,
            [
                "<pad>",
                "<eos>",
                "<bos>",
                "<unk>",
                "<0x41>",
                "\u{2581}the",
                "<start_of_turn>",
                "[PAD7]",
                "[PAD8]"
            ]
        );
        assert_eq!(v.types, [3, 3, 3, 2, 6, 1, 3, 5, 5]);
        assert_eq!(
            v.scores.as_deref().unwrap(),
            [0.0, 0.0, 0.0, 0.0, 0.0, -1.5, -1000.0, -10000.0, -10000.0]
        );
        let e = from_sentencepiece(&path, 3, &[]).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("vocab_size 3"),
            "{e}"
        );
        std::fs::write(&path, b"\x0a\xff").unwrap();
        let e = from_sentencepiece(&path, 9, &[]).unwrap_err().to_string();
        assert!(e.contains("not a SentencePiece model"), "{e}");
    }

    #[test]
    fn the_demo_tokenizer_maps_to_gpt2_with_merges_and_specials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let tok = crate::dataset::tokenizer::train_small(
            &["正義とは何だと思うかね？", "the theory of the thing"],
            300,
        )
        .unwrap();
        tok.save(&path, false).unwrap();
        let v = from_tokenizer_json(&path, 320).unwrap();
        assert_eq!((v.model, v.pre), ("gpt2", "gpt-2"));
        assert_eq!(v.tokens.len(), 320);
        assert_eq!(v.id("<bos>"), Some(2));
        assert_eq!(v.id("<end_of_turn>"), Some(107));
        assert_eq!(v.types[107], CONTROL);
        assert_eq!(v.types[319], UNUSED);
        assert_eq!(v.tokens[319], "[PAD319]");
        let merges = v.merges.as_ref().unwrap();
        assert!(!merges.is_empty() && merges.iter().all(|m| m.split(' ').count() == 2));
        // Every merge's result is a token.
        for m in merges {
            assert!(v.id(&m.replace(' ', "")).is_some(), "{m}");
        }
        let e = from_tokenizer_json(&path, 100).unwrap_err().to_string();
        assert!(e.contains("beyond the model's vocab_size 100"), "{e}");
    }

    #[test]
    fn unmappable_tokenizers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        for (json, want) in [
            (r#"{"model":{"type":"Unigram"}}"#, "model.type"),
            (
                r#"{"model":{"type":"BPE","byte_fallback":true}}"#,
                "tokenizer.model",
            ),
            (
                r#"{"model":{"type":"BPE"},"pre_tokenizer":{"type":"Metaspace"}}"#,
                "pre_tokenizer",
            ),
            ("{", "malformed tokenizer.json"),
        ] {
            std::fs::write(&path, json).unwrap();
            let e = from_tokenizer_json(&path, 10).unwrap_err().to_string();
            assert!(e.contains("tokenizer.json") && e.contains(want), "{e}");
        }
    }
}
