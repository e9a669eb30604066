//! The Gemma chat template and its loss mask:
//! `<bos><start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n{text}<end_of_turn>\n…`
//!
//! Special tokens are placed by id; the text between them is tokenized one segment at a time
//! (`user\n{text}`, `model\n{text}`, `\n`), which is exactly how a tokenizer splits the whole
//! rendered string (it cuts at special tokens first). Loss is on each model turn's text and its
//! `<end_of_turn>`; everything else is masked with -100. Labels are aligned with the inputs as
//! in Hugging Face (the trainer shifts).

use super::tokenizer::{BOS, END_OF_TURN, START_OF_TURN};
use super::{ChatTokenizer, DatasetError, Example, Result, Specials, Utterance};
use crate::corpus::Role;
use std::collections::{HashMap, HashSet};

/// The label of a position that is not trained.
pub const IGNORE: i64 = -100;

fn header(role: Role) -> &'static str {
    match role {
        Role::User => "user\n",
        Role::Model => "model\n",
    }
}

/// Each distinct `(role, text)` of some examples once: the same text is a different segment
/// under each header.
fn distinct<'a>(examples: impl IntoIterator<Item = &'a Example>) -> Vec<(Role, &'a str)> {
    let mut seen: HashSet<(bool, &str)> = HashSet::new();
    for ex in examples {
        for u in &ex.turns {
            seen.insert((u.role == Role::Model, u.text.as_str()));
        }
    }
    seen.into_iter()
        .map(|(m, t)| (if m { Role::Model } else { Role::User }, t))
        .collect()
}

fn by_role<'a, T>(
    role: Role,
    user: &'a HashMap<String, T>,
    model: &'a HashMap<String, T>,
) -> &'a HashMap<String, T> {
    match role {
        Role::User => user,
        Role::Model => model,
    }
}

/// What the statistics count: each distinct utterance's text (prefix included) encoded once,
/// alone and without special tokens, plus the template's own tokens.
pub struct TokenCounts {
    user: HashMap<String, usize>,
    model: HashMap<String, usize>,
    /// Template tokens around a user turn and around a model turn: `<start_of_turn>`, the
    /// role header, `<end_of_turn>` and the newline, the header and newline encoded alone.
    turn_template: [usize; 2],
}

impl TokenCounts {
    pub fn build<'a>(
        tok: &ChatTokenizer,
        examples: impl IntoIterator<Item = &'a Example>,
    ) -> Result<Self> {
        let distinct = distinct(examples);
        let mut inputs: Vec<String> = distinct.iter().map(|(_, t)| t.to_string()).collect();
        inputs.extend([
            header(Role::User).into(),
            header(Role::Model).into(),
            "\n".into(),
        ]);
        let encs = tok.encode_batch(inputs)?;
        let n = distinct.len();
        let newline = encs[n + 2].len();
        let turn_template = [2 + encs[n].len() + newline, 2 + encs[n + 1].len() + newline];
        let (mut user, mut model) = (HashMap::new(), HashMap::new());
        for ((role, text), e) in distinct.into_iter().zip(encs) {
            match role {
                Role::User => user.insert(text.to_string(), e.len()),
                Role::Model => model.insert(text.to_string(), e.len()),
            };
        }
        Ok(TokenCounts {
            user,
            model,
            turn_template,
        })
    }

    /// Tokens of an utterance's text (prefix included), without special tokens.
    pub fn content_tokens(&self, u: &Utterance) -> usize {
        *by_role(u.role, &self.user, &self.model)
            .get(&u.text)
            .expect("TokenCounts::build saw every utterance it is asked about")
    }

    /// Chat-template tokens of an example: BOS, and the template around each turn.
    pub fn template_tokens(&self, ex: &Example) -> usize {
        1 + ex
            .turns
            .iter()
            .map(|u| self.turn_template[(u.role == Role::Model) as usize])
            .sum::<usize>()
    }
}

/// One turn's text as tokenized inside the template.
#[derive(Debug, Clone)]
struct Segment {
    /// Tokens of `header + text`.
    ids: Vec<u32>,
    /// Leading tokens that lie wholly in the header (masked even in a model turn). A token
    /// that straddles the header and the text counts as text.
    header: usize,
}

/// Every distinct utterance of a set of examples as a template segment, tokenized once (in
/// parallel), ready to render.
pub struct Segments {
    user: HashMap<String, Segment>,
    model: HashMap<String, Segment>,
    newline: Vec<u32>,
    specials: Specials,
}

impl Segments {
    pub fn build<'a>(
        tok: &ChatTokenizer,
        examples: impl IntoIterator<Item = &'a Example>,
    ) -> Result<Self> {
        let distinct = distinct(examples);
        let mut inputs: Vec<String> = distinct
            .iter()
            .map(|(r, t)| format!("{}{t}", header(*r)))
            .collect();
        inputs.push("\n".into());
        let mut encs = tok.encode_batch(inputs)?;
        let newline = encs.pop().expect("newline encoded").get_ids().to_vec();
        let (mut user, mut model) = (HashMap::new(), HashMap::new());
        for ((role, text), e) in distinct.into_iter().zip(encs) {
            let head = header(role).len();
            let seg = Segment {
                ids: e.get_ids().to_vec(),
                header: e.get_offsets().iter().take_while(|o| o.1 <= head).count(),
            };
            if seg.ids.len() <= seg.header {
                return Err(DatasetError::tokenizer(
                    tok.path(),
                    format!("the utterance {text:?} encodes to no tokens"),
                ));
            }
            match role {
                Role::User => user.insert(text.to_string(), seg),
                Role::Model => model.insert(text.to_string(), seg),
            };
        }
        Ok(Segments {
            user,
            model,
            newline,
            specials: tok.specials,
        })
    }

    fn segment(&self, u: &Utterance) -> &Segment {
        by_role(u.role, &self.user, &self.model)
            .get(&u.text)
            .expect("Segments::build saw every utterance it is asked about")
    }

    /// Length of the rendered example: BOS, then per turn `<start_of_turn>`, the segment,
    /// `<end_of_turn>` and the newline.
    pub fn rendered_len(&self, ex: &Example) -> usize {
        1 + ex
            .turns
            .iter()
            .map(|u| 2 + self.segment(u).ids.len() + self.newline.len())
            .sum::<usize>()
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
}

/// Renders and masks an example. Every utterance must have been in the segments' examples.
pub fn render(ex: &Example, cache: &Segments) -> Tokenized {
    let sp = cache.specials;
    let n = cache.rendered_len(ex);
    let mut t = Tokenized {
        input_ids: Vec::with_capacity(n),
        labels: Vec::with_capacity(n),
    };
    let mut push = |id: u32, trained: bool| {
        t.input_ids.push(id);
        t.labels.push(if trained { id as i64 } else { IGNORE });
    };
    push(sp.bos, false);
    for u in &ex.turns {
        let model = u.role == Role::Model;
        let seg = cache.segment(u);
        push(sp.start_of_turn, false);
        for (i, &id) in seg.ids.iter().enumerate() {
            push(id, model && i >= seg.header);
        }
        push(sp.end_of_turn, model);
        for &id in &cache.newline {
            push(id, false);
        }
    }
    t
}

/// The prompt for the model's next turn: a conversation (alternating user and model turns,
/// starting and ending with user) rendered as [`render`] renders a training example, then
/// `<start_of_turn>` and the `model\n` header (tokenized alone: the reply that follows is not
/// known yet).
pub fn render_prompt(tok: &ChatTokenizer, turns: &[Utterance]) -> Result<Vec<u32>> {
    for (i, u) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Model };
        if u.role != want {
            return Err(DatasetError::Invalid(format!(
                "turn {i} is a {} turn; a prompt alternates user and model turns, starting with user",
                header(u.role).trim_end()
            )));
        }
    }
    if turns.len() % 2 == 0 {
        return Err(DatasetError::Invalid(
            "a prompt must end with a user turn".into(),
        ));
    }
    let ex = Example {
        id: String::new(),
        dialogue: String::new(),
        pair: 0,
        turns: turns.to_vec(),
    };
    let segments = Segments::build(tok, [&ex])?;
    let mut ids = render(&ex, &segments).input_ids;
    ids.push(tok.specials.start_of_turn);
    ids.extend_from_slice(tok.encode(header(Role::Model))?.get_ids());
    Ok(ids)
}

/// The rendered text of an example, as a tokenizer would see the whole conversation.
pub fn render_text(ex: &Example) -> String {
    let mut s = String::from(BOS);
    for u in &ex.turns {
        s.push_str(START_OF_TURN);
        s.push_str(header(u.role));
        s.push_str(&u.text);
        s.push_str(END_OF_TURN);
        s.push('\n');
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
    /// Cut tokens from the left, keeping BOS first (the end, with the last reply, stays).
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

/// Applies the max-length policy (`max_len` ≥ 2, checked by the caller).
pub fn fit(t: Tokenized, max_len: Option<usize>, policy: Overflow) -> Fit {
    let max = match max_len {
        Some(m) if t.len() > m => m,
        _ => return Fit::Fits(t),
    };
    if policy == Overflow::Drop {
        return Fit::Dropped;
    }
    let cut = t.len() - (max - 1);
    let mut input_ids = vec![t.input_ids[0]];
    input_ids.extend_from_slice(&t.input_ids[cut..]);
    let mut labels = vec![t.labels[0]];
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

    fn two() -> Example {
        ex(&[
            (Role::User, "ソクラテスさん。正義とは何ですか？"),
            (Role::Model, "君はどう思うかね？"),
        ])
    }

    #[test]
    fn renders_the_gemma_chat_format() {
        assert_eq!(
            render_text(&two()),
            "<bos><start_of_turn>user\nソクラテスさん。正義とは何ですか？<end_of_turn>\n<start_of_turn>model\n君はどう思うかね？<end_of_turn>\n"
        );
    }

    #[test]
    fn mask_trains_model_text_and_end_of_turn_only() {
        let tok = small();
        let e = two();
        let cache = Segments::build(&tok, [&e]).unwrap();
        let t = render(&e, &cache);
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
        assert_eq!(cache.rendered_len(&e), t.len());
        // The statistics' split of that length: template tokens plus the utterances' own.
        let counts = TokenCounts::build(&tok, [&e]).unwrap();
        let content: usize = e.turns.iter().map(|u| counts.content_tokens(u)).sum();
        assert_eq!(
            content,
            enc("ソクラテスさん。正義とは何ですか？").len() + text.len()
        );
        assert_eq!(counts.template_tokens(&e) + content, t.len());
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
        let cache = Segments::build(&tok, [&e]).unwrap();
        let whole = plain.encode(render_text(&e), false).unwrap();
        assert_eq!(render(&e, &cache).input_ids, whole.get_ids());
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
        let ids = render_prompt(&tok, &turns).unwrap();
        let text = render_text(&ex(&[
            (Role::User, "ソクラテスさん。正義とは何ですか？"),
            (Role::Model, "君はどう思うかね？"),
            (Role::User, "法に従うことです。"),
        ])) + "<start_of_turn>model\n";
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
        let t = render(&e, &Segments::build(&tok, [&e]).unwrap());
        assert_eq!(&t.input_ids[..ids.len()], &ids[..]);
        // The header is masked there; the reply's first token is the first trained one after it.
        let header = ids.iter().rposition(|&i| i == 106).unwrap();
        assert!(t.labels[header..ids.len()].iter().all(|&l| l == IGNORE));
        assert_eq!(t.labels[ids.len()], t.input_ids[ids.len()] as i64);

        let bad = render_prompt(&tok, &turns[..2]).unwrap_err().to_string();
        assert!(bad.contains("end with a user turn"), "{bad}");
        let bad = render_prompt(&tok, &turns[1..]).unwrap_err().to_string();
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
        let cache = Segments::build(&tok, [&e]).unwrap();
        let seg = tok.encode("model\n\n君は？").unwrap();
        // The trainer merged the whole segment: one token from the header into the text.
        assert_eq!(seg.get_ids().len(), 1, "{:?}", seg.get_tokens());
        let t = render(&e, &cache);
        assert_eq!(t.trained(), 2, "the straddling token and <end_of_turn>");
        // Same ids as tokenizing the whole rendered string (specials split first).
        let mut plain = tok.inner().clone();
        plain.set_encode_special_tokens(false);
        assert_eq!(
            plain.encode(render_text(&e), false).unwrap().get_ids(),
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
        let cache = Segments::build(&tok, [&e]).unwrap();
        let t = render(&e, &cache);
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
        let cache = Segments::build(&tok, [&e]).unwrap();
        let t = render(&e, &cache);
        let trained: Vec<u32> = t
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
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
            let cache = Segments::build(&tok, &x.examples).unwrap();
            for e in &x.examples {
                let t = render(e, &cache);
                // Trained: each model text and its <end_of_turn>, in order, nothing else.
                let trained: Vec<u32> = t
                    .labels
                    .iter()
                    .filter(|&&l| l != IGNORE)
                    .map(|&l| l as u32)
                    .collect();
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

    #[test]
    fn max_length_drops_or_truncates_from_the_left() {
        let t = Tokenized {
            input_ids: vec![2, 106, 10, 107, 9, 106, 11, 12, 107, 9],
            labels: vec![-100, -100, -100, -100, -100, -100, -100, 12, 107, -100],
        };
        assert_eq!(fit(t.clone(), None, Overflow::Drop), Fit::Fits(t.clone()));
        assert_eq!(
            fit(t.clone(), Some(10), Overflow::Drop),
            Fit::Fits(t.clone())
        );
        assert_eq!(fit(t.clone(), Some(9), Overflow::Drop), Fit::Dropped);
        assert_eq!(
            fit(t.clone(), Some(5), Overflow::Truncate),
            Fit::Truncated(Tokenized {
                input_ids: vec![2, 11, 12, 107, 9],
                labels: vec![-100, -100, 12, 107, -100]
            })
        );
        // Nothing left to train on after the cut: dropped.
        assert_eq!(fit(t, Some(2), Overflow::Truncate), Fit::Dropped);
        assert_eq!("truncate".parse::<Overflow>().unwrap(), Overflow::Truncate);
        assert!("cut"
            .parse::<Overflow>()
            .unwrap_err()
            .contains("drop or truncate"));
    }
}
