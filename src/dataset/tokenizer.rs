//! The tokenizer as the chat template needs it (Gemma's special tokens resolved, utterance text
//! never parsed for special tokens), and a small byte-level BPE trained on a corpus for tests
//! and the offline demo.

use super::{DatasetError, Result};
use crate::model::Source;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Encoding, Tokenizer};

pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const PAD: &str = "<pad>";
pub const START_OF_TURN: &str = "<start_of_turn>";
pub const END_OF_TURN: &str = "<end_of_turn>";

/// The ids of the special tokens the chat template uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Specials {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub start_of_turn: u32,
    pub end_of_turn: u32,
}

pub struct ChatTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub specials: Specials,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("path", &self.path)
            .field("specials", &self.specials)
            .finish()
    }
}

impl ChatTokenizer {
    /// A `tokenizer.json` path, a folder holding one, or a Hub repo id.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Source::parse(spec, None)?.file("tokenizer.json")?;
        Self::from_file(&path)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let t = Tokenizer::from_file(path).map_err(|e| {
            DatasetError::tokenizer(path, format!("cannot load the tokenizer: {e}"))
        })?;
        Self::new(t, path)
    }

    /// Wraps a tokenizer; `path` names it in messages.
    pub fn new(mut inner: Tokenizer, path: &Path) -> Result<Self> {
        let id = |name: &str| {
            inner.token_to_id(name).ok_or_else(|| {
                DatasetError::tokenizer(
                    path,
                    format!("special token `{name}` is not in the vocabulary"),
                )
            })
        };
        let specials = Specials {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(PAD)?,
            start_of_turn: id(START_OF_TURN)?,
            end_of_turn: id(END_OF_TURN)?,
        };
        // Text such as "<bos>" inside an utterance must stay text: special tokens are only ever
        // placed by the template, by id.
        inner.set_encode_special_tokens(true);
        // A tokenizer.json may carry padding or truncation, which would change counts.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| {
            DatasetError::tokenizer(path, format!("cannot disable truncation: {e}"))
        })?;
        Ok(ChatTokenizer {
            inner,
            path: path.to_path_buf(),
            specials,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Encodes texts in parallel, without special tokens; offsets are byte offsets.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Encoding>> {
        self.inner
            .encode_batch(texts, false)
            .map_err(|e| DatasetError::tokenizer(&self.path, format!("encoding failed: {e}")))
    }

    pub fn encode(&self, text: &str) -> Result<Encoding> {
        self.inner
            .encode(text, false)
            .map_err(|e| DatasetError::tokenizer(&self.path, format!("encoding failed: {e}")))
    }
}

/// Gemma's ids for the turn markers; the small tokenizer uses them too, so that a tiny Gemma-2
/// config with `eos_token_id: [1, 107]` stops on `<end_of_turn>` as the real one does.
const START_OF_TURN_ID: u32 = 106;
const END_OF_TURN_ID: u32 = 107;
/// `<pad>`, `<eos>`, `<bos>`, `<unk>` at 0–3 (Gemma's order), then the two turn markers.
const SMALL_SPECIALS: [&str; 4] = [PAD, EOS, BOS, "<unk>"];
/// 256 byte tokens plus the six specials.
pub const MIN_SMALL_VOCAB: usize = 256 + 6;

/// Trains a small byte-level BPE on `texts` (deterministic for the same texts): every byte has
/// a token, so any text, Japanese included, encodes without unknowns. Specials sit at Gemma's
/// ids: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<start_of_turn>` 106, `<end_of_turn>` 107;
/// encoding with special tokens adds `<bos>` as Gemma's does. `vocab_size` is an upper bound.
pub fn train_small<S: AsRef<str>>(texts: &[S], vocab_size: usize) -> Result<Tokenizer> {
    if vocab_size < MIN_SMALL_VOCAB {
        return Err(DatasetError::Invalid(format!(
            "vocabulary size {vocab_size} is too small: a byte-level tokenizer needs at least {MIN_SMALL_VOCAB}"
        )));
    }
    let fail =
        |e: tokenizers::Error| DatasetError::Invalid(format!("tokenizer training failed: {e}"));
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - 2)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SMALL_SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let texts: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
    tok.train(&mut trainer, texts.into_iter()).map_err(fail)?;

    // Make room for the turn markers at 106 and 107 by moving every later id up by two. The
    // model's vocabulary is only reachable through its serialized form.
    let mut json: serde_json::Value =
        serde_json::from_str(&tok.to_string(false).map_err(fail)?).map_err(|e| fail(e.into()))?;
    let vocab = json["model"]["vocab"]
        .as_object_mut()
        .ok_or_else(|| DatasetError::Invalid("tokenizer training gave no vocabulary".into()))?;
    for id in vocab.values_mut() {
        let n = id.as_u64().unwrap_or(0);
        if n >= START_OF_TURN_ID as u64 {
            *id = (n + 2).into();
        }
    }
    vocab.insert(START_OF_TURN.into(), START_OF_TURN_ID.into());
    vocab.insert(END_OF_TURN.into(), END_OF_TURN_ID.into());
    let mut tok: Tokenizer = json.to_string().parse().map_err(fail)?;
    tok.add_special_tokens([
        AddedToken::from(START_OF_TURN, true),
        AddedToken::from(END_OF_TURN, true),
    ])
    .map_err(fail)?;
    let bos = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .and_then(|b| b.try_pair(format!("{BOS} $A {BOS} $B")))
        .map_err(|e| DatasetError::Invalid(format!("tokenizer template: {e}")))?
        .special_tokens(vec![(BOS, 2)])
        .build()
        .map_err(|e| DatasetError::Invalid(format!("tokenizer template: {e}")))?;
    tok.with_post_processor(Some(bos));
    Ok(tok)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const TEXTS: [&str; 4] = [
        "正義とは何だと思うかね？君の考えを聞かせてくれたまえ。",
        "ソクラテスさん。正義とは法に従うことだと思います。",
        "では法が間違っていたら、どうするのかね？",
        "<bos> is only text here; 正義 and 勇気 and 知恵.",
    ];

    pub fn small() -> ChatTokenizer {
        ChatTokenizer::new(
            train_small(&TEXTS, 300).unwrap(),
            Path::new("small/tokenizer.json"),
        )
        .unwrap()
    }

    #[test]
    fn small_tokenizer_has_gemma_specials_and_round_trips_japanese() {
        let t = train_small(&TEXTS, 300).unwrap();
        let ids: Vec<_> = [PAD, EOS, BOS, "<unk>", START_OF_TURN, END_OF_TURN]
            .iter()
            .map(|s| t.token_to_id(s))
            .collect();
        assert_eq!(
            ids,
            [Some(0), Some(1), Some(2), Some(3), Some(106), Some(107)]
        );
        assert!(t.get_vocab_size(true) <= 300);
        // Ids are dense: every id below the size names a token.
        for id in 0..t.get_vocab_size(true) as u32 {
            assert!(t.id_to_token(id).is_some(), "hole at {id}");
        }
        let text = "知らない漢字「鬱」も🙂も大丈夫かね？";
        let enc = t.encode(text, true).unwrap();
        assert_eq!(enc.get_ids()[0], 2, "Gemma's post-processor adds <bos>");
        assert_eq!(t.decode(&enc.get_ids()[1..], false).unwrap(), text);
    }

    #[test]
    fn small_tokenizer_is_deterministic_and_saves() {
        let a = train_small(&TEXTS, 300).unwrap().to_string(false).unwrap();
        let b = train_small(&TEXTS, 300).unwrap().to_string(false).unwrap();
        assert_eq!(a, b);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, &a).unwrap();
        let t = ChatTokenizer::from_file(&p).unwrap();
        assert_eq!(
            t.specials,
            Specials {
                bos: 2,
                eos: 1,
                pad: 0,
                start_of_turn: 106,
                end_of_turn: 107
            }
        );
        // A folder holding tokenizer.json works too.
        assert_eq!(
            ChatTokenizer::resolve(dir.path().to_str().unwrap())
                .unwrap()
                .specials
                .bos,
            2
        );
    }

    #[test]
    fn special_token_text_in_an_utterance_stays_text() {
        let t = small();
        let ids = t.encode("<bos><start_of_turn>").unwrap().get_ids().to_vec();
        assert!(!ids.contains(&2) && !ids.contains(&106), "{ids:?}");
        assert!(ids.len() > 2);
    }

    #[test]
    fn bad_tokenizers_are_named() {
        assert!(train_small(&TEXTS, 100)
            .unwrap_err()
            .to_string()
            .contains("at least 262"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = ChatTokenizer::from_file(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot load the tokenizer", p.display())),
            "{e}"
        );
        // Remove <end_of_turn> from a trained tokenizer: the message names it.
        let mut json: serde_json::Value =
            serde_json::from_str(&train_small(&TEXTS, 300).unwrap().to_string(false).unwrap())
                .unwrap();
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["content"] != END_OF_TURN);
        json["model"]["vocab"]
            .as_object_mut()
            .unwrap()
            .remove(END_OF_TURN);
        std::fs::write(&p, json.to_string()).unwrap();
        let e = ChatTokenizer::from_file(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: special token `<end_of_turn>` is not in the vocabulary",
                p.display()
            )
        );
        let e = ChatTokenizer::resolve(dir.path().join("nope").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("neither an existing path nor a Hub repo id"),
            "{e}"
        );
    }
}
