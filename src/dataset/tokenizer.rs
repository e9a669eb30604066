//! The tokenizer as the chat template needs it (its family's special tokens resolved, utterance
//! text never parsed for special tokens), and a small byte-level BPE trained on a corpus for
//! tests and the offline demo, with any family's special tokens.

use super::chat_format::{ChatTemplate, Specials};
use super::{DatasetError, Result};
use crate::model::Source;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Encoding, Tokenizer};

pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const PAD: &str = "<pad>";
pub const START_OF_TURN: &str = "<start_of_turn>";
pub const END_OF_TURN: &str = "<end_of_turn>";

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
        let specials = Specials::resolve(&inner, path)?;
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
/// Llama-3's pre-tokenizer pattern (Qwen3's differs only in splitting digits one by one).
const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// 256 byte tokens plus the six specials.
pub const MIN_SMALL_VOCAB: usize = 256 + 6;

/// The special tokens of a small tokenizer, from id 0 on: end of text (or Gemma's pad) at 0,
/// the token that ends a reply at 1 and the BOS (where the family has one) at 2, so that the
/// parity fixtures' `pad 0, eos 1, bos 2` mean the same in every family. Gemma's turn markers
/// go to 106 and 107 instead.
fn small_specials(t: ChatTemplate) -> &'static [&'static str] {
    match t {
        ChatTemplate::Gemma => &[PAD, EOS, BOS, "<unk>"],
        ChatTemplate::Qwen3 => &[
            "<|endoftext|>",
            "<|im_end|>",
            "<|im_start|>",
            "<think>",
            "</think>",
        ],
        ChatTemplate::Llama3 => &[
            "<|finetune_right_pad_id|>",
            "<|eot_id|>",
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
        ],
    }
}

/// [`train_small_for`] with Gemma's special tokens.
pub fn train_small<S: AsRef<str>>(texts: &[S], vocab_size: usize) -> Result<Tokenizer> {
    train_small_for(ChatTemplate::Gemma, texts, vocab_size)
}

/// Trains a small byte-level BPE on `texts` (deterministic for the same texts): every byte has
/// a token, so any text, Japanese included, encodes without unknowns. It has the special tokens
/// of `template`'s family (see `small_specials`): Gemma's at Gemma's ids (`<pad>` 0, `<eos>` 1,
/// `<bos>` 2, `<unk>` 3, `<start_of_turn>` 106, `<end_of_turn>` 107); encoding with special
/// tokens adds the family's BOS as its own tokenizer does; Qwen3's `<think>` and `</think>` are
/// added tokens but not special ones, as in Qwen3's. `vocab_size` is an upper bound.
pub fn train_small_for<S: AsRef<str>>(
    template: ChatTemplate,
    texts: &[S],
    vocab_size: usize,
) -> Result<Tokenizer> {
    if vocab_size < MIN_SMALL_VOCAB {
        return Err(DatasetError::Invalid(format!(
            "vocabulary size {vocab_size} is too small: a byte-level tokenizer needs at least {MIN_SMALL_VOCAB}"
        )));
    }
    let fail =
        |e: tokenizers::Error| DatasetError::Invalid(format!("tokenizer training failed: {e}"));
    let gemma = template == ChatTemplate::Gemma;
    let mut tok = Tokenizer::new(BPE::default());
    if gemma {
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    } else {
        // Qwen3's and Llama-3's own pre-tokenizer: their split pattern (which keeps a run of
        // newlines together), then bytes.
        let split = Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(fail)?;
        tok.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])));
    }
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - if gemma { 2 } else { 0 })
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            small_specials(template)
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let texts: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
    tok.train(&mut trainer, texts.into_iter()).map_err(fail)?;

    // The model's vocabulary and the added tokens' flags are only reachable through the
    // serialized form.
    let mut json: serde_json::Value =
        serde_json::from_str(&tok.to_string(false).map_err(fail)?).map_err(|e| fail(e.into()))?;
    if let Some([open, close]) = template.names().think {
        for t in json["added_tokens"].as_array_mut().into_iter().flatten() {
            if t["content"] == open || t["content"] == close {
                t["special"] = false.into();
            }
        }
    }
    if gemma {
        // Make room for the turn markers at 106 and 107 by moving every later id up by two.
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
    }
    let mut tok: Tokenizer = json.to_string().parse().map_err(fail)?;
    if gemma {
        tok.add_special_tokens([
            AddedToken::from(START_OF_TURN, true),
            AddedToken::from(END_OF_TURN, true),
        ])
        .map_err(fail)?;
    }
    if let Some(bos) = template.names().bos {
        let id = tok
            .token_to_id(bos)
            .expect("the BOS is one of the trainer's special tokens");
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| DatasetError::Invalid(format!("tokenizer template: {e}")))?
            .special_tokens(vec![(bos, id)])
            .build()
            .map_err(|e| DatasetError::Invalid(format!("tokenizer template: {e}")))?;
        tok.with_post_processor(Some(post));
    }
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
        small_for(ChatTemplate::Gemma)
    }

    /// A small tokenizer with the special tokens of `t`'s family.
    pub fn small_for(t: ChatTemplate) -> ChatTokenizer {
        ChatTokenizer::new(
            train_small_for(t, &TEXTS, 300).unwrap(),
            Path::new("small/tokenizer.json"),
        )
        .unwrap()
    }

    #[test]
    fn small_tokenizers_have_each_familys_specials() {
        let q = small_for(ChatTemplate::Qwen3);
        assert_eq!(
            q.specials,
            Specials {
                template: ChatTemplate::Qwen3,
                bos: None,
                eos: 0,
                start_of_turn: 2,
                end_of_header: None,
                end_of_turn: 1,
                think: Some([3, 4]),
            }
        );
        // No BOS added; <think> is an added token that text still spells (as in Qwen3's).
        let enc = q.inner().encode("<think>正義", true).unwrap();
        assert_eq!(enc.get_ids()[0], 3, "{:?}", enc.get_tokens());
        let l = small_for(ChatTemplate::Llama3);
        assert_eq!(
            (l.specials.bos, l.specials.eos, l.specials.end_of_turn),
            (Some(2), 3, 1)
        );
        assert_eq!(
            (l.specials.start_of_turn, l.specials.end_of_header),
            (4, Some(5))
        );
        assert_eq!(l.inner().encode("正義", true).unwrap().get_ids()[0], 2);
        // A tokenizer with no family's turn marker is named.
        let mut json: serde_json::Value =
            serde_json::from_str(&l.inner().to_string(false).unwrap()).unwrap();
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["content"] != "<|start_header_id|>");
        json["model"]["vocab"]
            .as_object_mut()
            .unwrap()
            .remove("<|start_header_id|>");
        let t: Tokenizer = json.to_string().parse().unwrap();
        let e = ChatTokenizer::new(t, Path::new("x/tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x/tokenizer.json: no known chat template") && e.contains("<|im_start|>"),
            "{e}"
        );
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
                template: ChatTemplate::Gemma,
                bos: Some(2),
                eos: 1,
                start_of_turn: 106,
                end_of_header: None,
                end_of_turn: 107,
                think: None,
            }
        );
        // A folder holding tokenizer.json works too.
        assert_eq!(
            ChatTokenizer::resolve(dir.path().to_str().unwrap())
                .unwrap()
                .specials
                .bos,
            Some(2)
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
