//! Rendering through the family's template ([`Specials::parts`]) into input ids and a loss
//! mask.
//!
//! Special tokens are placed by id; the text between two of them (a "run") is tokenized as one
//! string, which is exactly how a tokenizer splits the whole rendered string (it cuts at special
//! tokens first). Each distinct run is tokenized once, in parallel. A token is trained when it
//! reaches into a trained utterance's text (a token that straddles a header and the text counts
//! as text), and so is a reply's end-of-turn token; everything else is masked with -100. Labels
//! are aligned with the inputs as in Hugging Face (the trainer shifts).

use super::chat_format::{role_name, Layout, Part};
use super::{ChatTokenizer, DatasetError, Example, Result, Specials, Utterance};
use crate::corpus::Role;
use std::collections::{HashMap, HashSet};

/// The label of a position that is not trained.
pub const IGNORE: i64 = -100;

/// A rendered conversation between its special tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Special(u32, bool),
    /// Text between special tokens; trained from byte `trained` on, when set (trained text
    /// always ends its run).
    Run {
        text: String,
        trained: Option<usize>,
    },
}

fn pieces(parts: Vec<Part<'_>>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(parts.len());
    for part in parts {
        let (text, trained) = match part {
            Part::Special(id, t) => {
                out.push(Piece::Special(id, t));
                continue;
            }
            Part::Template(t) => (t, false),
            Part::Content(t, trained) => (t.into(), trained),
        };
        if !matches!(out.last(), Some(Piece::Run { .. })) {
            out.push(Piece::Run {
                text: String::new(),
                trained: None,
            });
        }
        let Some(Piece::Run {
            text: run,
            trained: from,
        }) = out.last_mut()
        else {
            unreachable!("a run was just pushed")
        };
        debug_assert!(from.is_none(), "trained text ends its run");
        if trained {
            *from = Some(run.len());
        }
        run.push_str(&text);
    }
    out
}

/// What the statistics count: each distinct utterance's text (prefix included) and each piece
/// of template text encoded once, alone and without special tokens.
pub struct TokenCounts {
    specials: Specials,
    texts: HashMap<String, usize>,
}

impl TokenCounts {
    pub fn build<'a>(
        tok: &ChatTokenizer,
        examples: impl IntoIterator<Item = (&'a Layout, &'a Example)>,
    ) -> Result<Self> {
        let sp = tok.specials;
        let mut seen: HashSet<&str> = HashSet::new();
        let mut owned: HashSet<String> = HashSet::new();
        for (layout, ex) in examples {
            for part in sp.parts(layout, &ex.turns, false) {
                match part {
                    Part::Special(..) => {}
                    Part::Content(t, _) => {
                        seen.insert(t);
                    }
                    Part::Template(std::borrow::Cow::Borrowed(t)) => {
                        seen.insert(t);
                    }
                    Part::Template(std::borrow::Cow::Owned(t)) => {
                        owned.insert(t);
                    }
                }
            }
        }
        let mut inputs: Vec<String> = seen.into_iter().map(String::from).collect();
        inputs.extend(owned);
        let encs = tok.encode_batch(inputs.clone())?;
        let texts = inputs
            .into_iter()
            .zip(encs)
            .map(|(t, e)| (t, e.len()))
            .collect();
        Ok(TokenCounts {
            specials: sp,
            texts,
        })
    }

    fn count(&self, text: &str) -> usize {
        *self
            .texts
            .get(text)
            .expect("TokenCounts::build saw every text it is asked about")
    }

    /// Tokens of an utterance's text (prefix included), without special tokens.
    pub fn content_tokens(&self, u: &Utterance) -> usize {
        self.count(&u.text)
    }

    /// Chat-template tokens of an example: its special tokens, and each piece of template
    /// text (role headers, separators, the system text) encoded on its own.
    pub fn template_tokens(&self, layout: &Layout, ex: &Example) -> usize {
        self.specials
            .parts(layout, &ex.turns, false)
            .iter()
            .map(|p| match p {
                Part::Special(..) => 1,
                Part::Template(t) => self.count(t),
                Part::Content(..) => 0,
            })
            .sum()
    }
}

/// A run as tokenized: ids, and the end byte of each token.
#[derive(Debug, Clone)]
struct Encoded {
    ids: Vec<u32>,
    ends: Vec<usize>,
}

/// Every distinct run of a set of examples, tokenized once (in parallel), ready to render.
pub struct Segments {
    runs: HashMap<String, Encoded>,
    specials: Specials,
}

impl Segments {
    pub fn build<'a>(
        tok: &ChatTokenizer,
        examples: impl IntoIterator<Item = (&'a Layout, &'a Example)>,
    ) -> Result<Self> {
        let sp = tok.specials;
        // Each distinct run, with the start of its trained text when it has one.
        let mut distinct: HashMap<String, Option<usize>> = HashMap::new();
        for (layout, ex) in examples {
            for piece in pieces(sp.parts(layout, &ex.turns, false)) {
                if let Piece::Run { text, trained } = piece {
                    let t = distinct.entry(text).or_insert(trained);
                    *t = t.or(trained);
                }
            }
        }
        let (texts, trained): (Vec<String>, Vec<Option<usize>>) = distinct.into_iter().unzip();
        let encs = tok.encode_batch(texts.clone())?;
        let mut runs = HashMap::with_capacity(texts.len());
        for ((text, from), e) in texts.into_iter().zip(trained).zip(encs) {
            let enc = Encoded {
                ids: e.get_ids().to_vec(),
                ends: e.get_offsets().iter().map(|o| o.1).collect(),
            };
            if let Some(from) = from {
                if !enc.ends.iter().any(|&end| end > from) {
                    return Err(DatasetError::tokenizer(
                        tok.path(),
                        format!("the utterance {:?} encodes to no tokens", &text[from..]),
                    ));
                }
            }
            runs.insert(text, enc);
        }
        Ok(Segments { runs, specials: sp })
    }
}

/// Input ids and labels of one example, the same length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Tokenized {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Positions that carry loss.
    pub fn trained(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }

    fn push(&mut self, id: u32, trained: bool) {
        self.input_ids.push(id);
        self.labels.push(if trained { id as i64 } else { IGNORE });
    }

    fn push_run(&mut self, enc: &Encoded, trained: Option<usize>) {
        for (&id, &end) in enc.ids.iter().zip(&enc.ends) {
            self.push(id, trained.is_some_and(|from| end > from));
        }
    }
}

/// Renders and masks an example in `layout`. Every run must have been in the segments'
/// examples.
pub fn render(ex: &Example, layout: &Layout, cache: &Segments) -> Tokenized {
    let mut t = Tokenized {
        input_ids: Vec::new(),
        labels: Vec::new(),
    };
    for piece in pieces(cache.specials.parts(layout, &ex.turns, false)) {
        match piece {
            Piece::Special(id, trained) => t.push(id, trained),
            Piece::Run { text, trained } => t.push_run(
                cache
                    .runs
                    .get(&text)
                    .expect("Segments::build saw every run it is asked about"),
                trained,
            ),
        }
    }
    t
}

/// The prompt for the model's next turn: a conversation (alternating user and model turns,
/// starting and ending with user) rendered as [`render`] renders a training example, then the
/// header of the model's turn (its last run tokenized alone: the reply that follows is not
/// known yet).
pub fn render_prompt(
    tok: &ChatTokenizer,
    layout: &Layout,
    turns: &[Utterance],
) -> Result<Vec<u32>> {
    for (i, u) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Model };
        if u.role != want {
            return Err(DatasetError::Invalid(format!(
                "turn {i} is a {} turn; a prompt alternates user and model turns, starting with user",
                role_name(u.role)
            )));
        }
    }
    if turns.len().is_multiple_of(2) {
        return Err(DatasetError::Invalid(
            "a prompt must end with a user turn".into(),
        ));
    }
    let mut ids = Vec::new();
    for piece in pieces(tok.specials.parts(layout, turns, true)) {
        match piece {
            Piece::Special(id, _) => ids.push(id),
            Piece::Run { text, .. } => ids.extend_from_slice(tok.encode(&text)?.get_ids()),
        }
    }
    Ok(ids)
}

/// The rendered text of a conversation, special tokens spelled out: what a tokenizer would
/// see as the whole conversation (with `prompt`, ending with the reply's header).
pub fn render_text(
    tok: &ChatTokenizer,
    layout: &Layout,
    turns: &[Utterance],
    prompt: bool,
) -> String {
    let mut s = String::new();
    for part in tok.specials.parts(layout, turns, prompt) {
        match part {
            Part::Special(id, _) => s.push_str(
                &tok.inner()
                    .id_to_token(id)
                    .expect("a special token's id is in the vocabulary"),
            ),
            Part::Template(t) => s.push_str(&t),
            Part::Content(t, _) => s.push_str(t),
        }
    }
    s
}

/// What to do with an example longer than the maximum length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Leave it out.
    #[default]
    Drop,
    /// Cut tokens from the left, keeping BOS first where the family has one (the end, with the
    /// last reply, stays).
    Truncate,
}

impl std::str::FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Overflow::Drop),
            "truncate" => Ok(Overflow::Truncate),
            _ => Err(format!(
                "`{s}` is not an overflow policy (drop or truncate)"
            )),
        }
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overflow::Drop => "drop",
            Overflow::Truncate => "truncate",
        })
    }
}

/// An example after the max-length policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Fits(Tokenized),
    Truncated(Tokenized),
    /// Too long under `drop`, or nothing left to train on after truncation.
    Dropped,
}

/// Applies the max-length policy (`max_len` ≥ 2, checked by the caller); `keep_first`: the
/// first token (BOS) stays when cutting.
pub fn fit(t: Tokenized, max_len: Option<usize>, policy: Overflow, keep_first: bool) -> Fit {
    let max = match max_len {
        Some(m) if t.len() > m => m,
        _ => return Fit::Fits(t),
    };
    if policy == Overflow::Drop {
        return Fit::Dropped;
    }
    let head = usize::from(keep_first);
    let cut = t.len() - (max - head);
    let mut input_ids = t.input_ids[..head].to_vec();
    input_ids.extend_from_slice(&t.input_ids[cut..]);
    let mut labels = t.labels[..head].to_vec();
    labels.extend_from_slice(&t.labels[cut..]);
    let out = Tokenized { input_ids, labels };
    if out.trained() == 0 {
        Fit::Dropped
    } else {
        Fit::Truncated(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::extract;
    use crate::dataset::extract::tests::{dialogue, shipped};
    use crate::dataset::tokenizer::tests::{small, TEXTS};
    use crate::dataset::tokenizer::train_small;

    const CHAT: &Layout = &Layout {
        format: crate::dataset::Format::Chat,
        system: None,
    };

    fn ex(turns: &[(Role, &str)]) -> Example {
        Example {
            id: "d1#p0".into(),
            dialogue: "d1".into(),
            pair: 0,
            turns: turns
                .iter()
                .map(|(role, t)| Utterance {
                    role: *role,
                    text: t.to_string(),
                })
                .collect(),
        }
    }

    /// The ids that carry loss, in order.
    fn trained_ids(t: &Tokenized) -> Vec<u32> {
        t.labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect()
    }

    fn two() -> Example {
        ex(&[
            (Role::User, "ソクラテスさん。正義とは何ですか？"),
            (Role::Model, "君はどう思うかね？"),
        ])
    }

    #[test]
    fn renders_the_gemma_chat_format() {
        assert_eq!(
            render_text(&small(), CHAT, &two().turns, false),
            "<bos><start_of_turn>user\nソクラテスさん。正義とは何ですか？<end_of_turn>\n<start_of_turn>model\n君はどう思うかね？<end_of_turn>\n"
        );
    }

    #[test]
    fn mask_trains_model_text_and_end_of_turn_only() {
        let tok = small();
        let e = two();
        let cache = Segments::build(&tok, [(CHAT, &e)]).unwrap();
        let t = render(&e, CHAT, &cache);
        let enc = |s: &str| tok.encode(s).unwrap().get_ids().to_vec();
        let (user, model, nl) = (
            enc("user\nソクラテスさん。正義とは何ですか？"),
            enc("model\n君はどう思うかね？"),
            enc("\n"),
        );
        let head = enc("model\n").len();
        let text = enc("君はどう思うかね？");
        assert_eq!(
            &model[head..],
            &text[..],
            "the header does not merge into the text here"
        );
        let mut want_ids = vec![2, 106];
        want_ids.extend(&user);
        want_ids.push(107);
        want_ids.extend(&nl);
        want_ids.push(106);
        want_ids.extend(&model);
        want_ids.push(107);
        want_ids.extend(&nl);
        assert_eq!(t.input_ids, want_ids);
        let mut want_labels = vec![IGNORE; 2 + user.len() + 1 + nl.len() + 1 + head];
        want_labels.extend(text.iter().map(|&i| i as i64));
        want_labels.push(107);
        want_labels.extend(vec![IGNORE; nl.len()]);
        assert_eq!(t.labels, want_labels);
        assert_eq!(
            t.input_ids.iter().filter(|&&i| i == 2).count(),
            1,
            "BOS exactly once"
        );
        assert_eq!(t.trained(), text.len() + 1);
        // The statistics' split of that length: template tokens plus the utterances' own.
        let counts = TokenCounts::build(&tok, [(CHAT, &e)]).unwrap();
        let content: usize = e.turns.iter().map(|u| counts.content_tokens(u)).sum();
        assert_eq!(
            content,
            enc("ソクラテスさん。正義とは何ですか？").len() + text.len()
        );
        assert_eq!(counts.template_tokens(CHAT, &e) + content, t.len());
    }

    #[test]
    fn equals_tokenizing_the_whole_rendered_string() {
        let tok = small();
        // A tokenizer that parses special tokens in text, as a plain `encode` of the whole string does.
        let plain = train_small(&TEXTS, 300).unwrap();
        let e = ex(&[
            (Role::User, "正義とは？"),
            (Role::Model, "\n君の考えを聞かせてくれたまえ。 "),
            (Role::User, "法に従うことです。\n\n"),
            (Role::Model, "では法が間違っていたら？"),
        ]);
        let cache = Segments::build(&tok, [(CHAT, &e)]).unwrap();
        let whole = plain
            .encode(render_text(&tok, CHAT, &e.turns, false), false)
            .unwrap();
        assert_eq!(render(&e, CHAT, &cache).input_ids, whole.get_ids());
    }

    #[test]
    fn a_prompt_is_the_rendered_conversation_then_the_model_header() {
        let tok = small();
        let plain = train_small(&TEXTS, 300).unwrap();
        let turns = ex(&[
            (Role::User, "ソクラテスさん。正義とは何ですか？"),
            (Role::Model, "君はどう思うかね？"),
            (Role::User, "法に従うことです。"),
        ])
        .turns;
        let ids = render_prompt(&tok, CHAT, &turns).unwrap();
        let text = render_text(&tok, CHAT, &turns, true);
        assert!(text.ends_with("法に従うことです。<end_of_turn>\n<start_of_turn>model\n"));
        assert_eq!(ids, plain.encode(text, false).unwrap().get_ids());
        // The same ids as a training example with the reply, up to the reply's text.
        let mut whole = turns.clone();
        whole.push(Utterance {
            role: Role::Model,
            text: "では法が間違っていたら？".into(),
        });
        let e = Example {
            turns: whole,
            ..ex(&[])
        };
        let t = render(&e, CHAT, &Segments::build(&tok, [(CHAT, &e)]).unwrap());
        assert_eq!(&t.input_ids[..ids.len()], &ids[..]);
        // The header is masked there; the reply's first token is the first trained one after it.
        let header = ids.iter().rposition(|&i| i == 106).unwrap();
        assert!(t.labels[header..ids.len()].iter().all(|&l| l == IGNORE));
        assert_eq!(t.labels[ids.len()], t.input_ids[ids.len()] as i64);

        let bad = render_prompt(&tok, CHAT, &turns[..2])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("end with a user turn"), "{bad}");
        let bad = render_prompt(&tok, CHAT, &turns[1..])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("turn 0 is a model turn"), "{bad}");
    }

    /// Like Gemma's: no pre-tokenizer, so merges may cross the `model\n` header into the text.
    fn without_pre_tokenizer(texts: &[&str]) -> ChatTokenizer {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::normalizers::replace::Replace;
        let specials = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<start_of_turn>",
            "<end_of_turn>",
        ];
        let mut t = tokenizers::Tokenizer::new(BPE::default());
        t.with_normalizer(Some(Replace::new(" ", "▁").unwrap()))
            .unwrap();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(200)
            .show_progress(false)
            .special_tokens(
                specials
                    .iter()
                    .map(|s| tokenizers::AddedToken::from(*s, true))
                    .collect(),
            )
            .build()
            .into();
        t.train(&mut trainer, texts.iter()).unwrap();
        ChatTokenizer::new(t, std::path::Path::new("sp/tokenizer.json")).unwrap()
    }

    #[test]
    fn a_token_across_the_header_counts_as_text() {
        let texts = [["model\n\n君は？", "user\n問い"]; 8].concat();
        let tok = without_pre_tokenizer(&texts);
        let e = ex(&[(Role::User, "問い"), (Role::Model, "\n君は？")]);
        let cache = Segments::build(&tok, [(CHAT, &e)]).unwrap();
        let seg = tok.encode("model\n\n君は？").unwrap();
        // The trainer merged the whole segment: one token from the header into the text.
        assert_eq!(seg.get_ids().len(), 1, "{:?}", seg.get_tokens());
        let t = render(&e, CHAT, &cache);
        assert_eq!(t.trained(), 2, "the straddling token and <end_of_turn>");
        // Same ids as tokenizing the whole rendered string (specials split first).
        let mut plain = tok.inner().clone();
        plain.set_encode_special_tokens(false);
        assert_eq!(
            plain
                .encode(render_text(&tok, CHAT, &e.turns, false), false)
                .unwrap()
                .get_ids(),
            &t.input_ids[..]
        );
    }

    #[test]
    fn special_token_text_in_an_utterance_is_never_a_special_token() {
        let tok = small();
        let e = ex(&[
            (Role::User, "<bos>と<end_of_turn>は何かね"),
            (Role::Model, "<start_of_turn>です"),
        ]);
        let cache = Segments::build(&tok, [(CHAT, &e)]).unwrap();
        let t = render(&e, CHAT, &cache);
        assert_eq!(t.input_ids.iter().filter(|&&i| i == 2).count(), 1);
        assert_eq!(t.input_ids.iter().filter(|&&i| i == 106).count(), 2);
        assert_eq!(t.input_ids.iter().filter(|&&i| i == 107).count(), 2);
    }

    #[test]
    fn a_four_utterance_example_trains_both_replies() {
        let tok = small();
        let e = ex(&[
            (Role::User, "a"),
            (Role::Model, "b"),
            (Role::User, "c"),
            (Role::Model, "d"),
        ]);
        let cache = Segments::build(&tok, [(CHAT, &e)]).unwrap();
        let t = render(&e, CHAT, &cache);
        let trained = trained_ids(&t);
        let b = tok.encode("b").unwrap().get_ids().to_vec();
        let d = tok.encode("d").unwrap().get_ids().to_vec();
        assert_eq!(trained, [b, vec![107], d, vec![107]].concat());
        assert_eq!(t.input_ids.iter().filter(|&&i| i == 106).count(), 4);
    }

    #[test]
    fn each_shipped_variant_masks_its_examples() {
        let tok = small();
        let enc = |s: &str| tok.encode(s).unwrap().get_ids().to_vec();
        let d = vec![dialogue("d1", 12, 4)];
        for v in shipped() {
            let x = extract(&v, &d, false, false).unwrap();
            let cache = Segments::build(&tok, x.examples.iter().map(|e| (&v.layout, e))).unwrap();
            for e in &x.examples {
                let t = render(e, &v.layout, &cache);
                // Trained: each model text and its <end_of_turn>, in order, nothing else.
                let trained = trained_ids(&t);
                let want: Vec<u32> = e
                    .turns
                    .iter()
                    .filter(|u| u.role == Role::Model)
                    .flat_map(|u| [enc(&u.text), vec![107]].concat())
                    .collect();
                assert_eq!(trained, want, "{} {}", v.name, e.id);
                // The first user turn carries the prefix, right after BOS and <start_of_turn>, masked.
                assert!(e.turns[0].text.starts_with(&v.prefix));
                let user = enc(&format!("user\n{}", e.turns[0].text));
                assert_eq!(&t.input_ids[..2], &[2, 106]);
                assert_eq!(&t.input_ids[2..2 + user.len()], &user[..], "{}", v.name);
                assert!(t.labels[..3 + user.len()].iter().all(|&l| l == IGNORE));
                assert_eq!(t.input_ids.iter().filter(|&&i| i == 2).count(), 1);
            }
        }
    }

    /// For every family and layout: the ids are those of tokenizing the whole rendered string,
    /// the trained tokens are each reply's own and its end-of-turn token, and the prompt for the
    /// last reply is the example up to that reply.
    #[test]
    fn every_family_and_layout_renders_as_the_whole_string_and_masks_replies() {
        use crate::dataset::tokenizer::tests::small_for;
        use crate::dataset::{ChatTemplate, Format};
        let e = ex(&[
            (Role::User, "ソクラテスさん。正義とは何ですか？"),
            (Role::Model, "君はどう思うかね？"),
            (Role::User, "法に従うことです。"),
            (Role::Model, "では法が間違っていたら？"),
        ]);
        for template in ChatTemplate::ALL {
            let tok = small_for(template);
            let mut plain = tok.inner().clone();
            plain.set_encode_special_tokens(false);
            let enc = |s: &str| tok.encode(s).unwrap().get_ids().to_vec();
            for (format, system) in [
                (Format::Chat, None),
                (Format::Chat, Some("あなたはソクラテスです。")),
                (Format::Alpaca, Some("あなたはソクラテスです。")),
                (Format::Alpaca, None),
            ] {
                let layout = Layout {
                    format,
                    system: system.map(String::from),
                };
                let what = format!("{template} {format:?} {system:?}");
                let t = render(
                    &e,
                    &layout,
                    &Segments::build(&tok, [(&layout, &e)]).unwrap(),
                );
                let whole = render_text(&tok, &layout, &e.turns, false);
                assert_eq!(
                    t.input_ids,
                    plain.encode(whole, false).unwrap().get_ids(),
                    "{what}"
                );
                let trained = trained_ids(&t);
                let end = tok.specials.end_of_turn;
                let want = [
                    enc("君はどう思うかね？"),
                    vec![end],
                    enc("では法が間違っていたら？"),
                    vec![end],
                ]
                .concat();
                assert_eq!(trained, want, "{what}");
                assert_eq!(
                    t.input_ids.first() == tok.specials.bos.as_ref(),
                    tok.specials.bos.is_some(),
                    "{what}: BOS first where the family has one"
                );
                let prompt = render_prompt(&tok, &layout, &e.turns[..3]).unwrap();
                let reply = t.len() - enc("では法が間違っていたら？").len() - 1;
                let tail = t.labels.iter().rev().take_while(|&&l| l == IGNORE).count();
                assert_eq!(prompt, t.input_ids[..reply - tail], "{what}");
                let counts = TokenCounts::build(&tok, [(&layout, &e)]).unwrap();
                let content: usize = e.turns.iter().map(|u| counts.content_tokens(u)).sum();
                assert_eq!(
                    counts.template_tokens(&layout, &e) + content,
                    t.len(),
                    "{what}: no merge across a header here"
                );
            }
        }
    }

    #[test]
    fn max_length_drops_or_truncates_from_the_left() {
        let t = Tokenized {
            input_ids: vec![2, 106, 10, 107, 9, 106, 11, 12, 107, 9],
            labels: vec![-100, -100, -100, -100, -100, -100, -100, 12, 107, -100],
        };
        assert_eq!(
            fit(t.clone(), None, Overflow::Drop, true),
            Fit::Fits(t.clone())
        );
        assert_eq!(
            fit(t.clone(), Some(10), Overflow::Drop, true),
            Fit::Fits(t.clone())
        );
        assert_eq!(fit(t.clone(), Some(9), Overflow::Drop, true), Fit::Dropped);
        assert_eq!(
            fit(t.clone(), Some(5), Overflow::Truncate, true),
            Fit::Truncated(Tokenized {
                input_ids: vec![2, 11, 12, 107, 9],
                labels: vec![-100, -100, 12, 107, -100]
            })
        );
        // Without a BOS to keep (Qwen3), the cut takes the first token too.
        assert_eq!(
            fit(t.clone(), Some(4), Overflow::Truncate, false),
            Fit::Truncated(Tokenized {
                input_ids: vec![11, 12, 107, 9],
                labels: vec![-100, 12, 107, -100]
            })
        );
        // Nothing left to train on after the cut: dropped.
        assert_eq!(fit(t, Some(2), Overflow::Truncate, true), Fit::Dropped);
        assert_eq!("truncate".parse::<Overflow>().unwrap(), Overflow::Truncate);
        assert!("cut"
            .parse::<Overflow>()
            .unwrap_err()
            .contains("drop or truncate"));
    }
}
