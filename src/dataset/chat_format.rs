//! Each model family's chat template, and the two layouts a variant can ask for, as one list of
//! parts per conversation. Dataset building, the token statistics, chat, serve and eval all
//! render through [`Specials::parts`], so they cannot disagree.
//!
//! The template is chosen from the tokenizer's special tokens (the tokenizer is what every
//! command has, `data build` included, which has no model); a command that also loads a model
//! checks that the model's family agrees ([`ChatTemplate::of_family`]). The formats, as each
//! family's official template renders them (checked against transformers' `apply_chat_template`
//! in `tests/interop/test_chat_templates.py`):
//!
//! - Gemma: `<bos><start_of_turn>user\n{u}<end_of_turn>\n<start_of_turn>model\n{m}<end_of_turn>\n`;
//!   no system role: a system text goes before the first user text, then a blank line (as
//!   Gemma-3's template does).
//! - Qwen3 (ChatML, thinking off): no BOS; `<|im_start|>system\n{s}<|im_end|>\n` when there is a
//!   system text, `<|im_start|>user\n{u}<|im_end|>\n`, `<|im_start|>assistant\n{m}<|im_end|>\n`,
//!   the model turn after the last user turn with the empty think block
//!   `<think>\n\n</think>\n\n` before its text, and the generation prompt with it too.
//! - Llama-3.1/3.2: `<|begin_of_text|>`, then always a system header
//!   `<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday
//!   Date: 26 Jul 2024\n\n{s}<|eot_id|>`, then `<|start_header_id|>{role}<|end_header_id|>\n\n
//!   {text}<|eot_id|>` per turn.
//!
//! Utterance texts are used as they are: the official templates trim Gemma's and Llama's
//! messages, which changes nothing for the corpus's texts (stripped when generated).

use super::{DatasetError, Result, Utterance};
use crate::corpus::Role;
use crate::model::Family;
use serde::Serialize;
use std::borrow::Cow;
use std::path::Path;
use tokenizers::Tokenizer;

/// The date Llama-3.1/3.2's template writes when it is given none (`date_string`'s default
/// there). The official template writes today's date; training data must not change with the
/// day it is built, so every rendering uses this one.
pub const LLAMA_DATE: &str = "26 Jul 2024";

/// A model family's chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTemplate {
    /// Gemma-2 and Gemma-3.
    Gemma,
    Qwen3,
    /// Llama-3.1 and 3.2.
    Llama3,
}

/// The names of a template's special tokens.
pub(crate) struct TokenNames {
    pub bos: Option<&'static str>,
    pub eos: &'static str,
    pub start_of_turn: &'static str,
    pub end_of_header: Option<&'static str>,
    pub end_of_turn: &'static str,
    /// Qwen3's `<think>` and `</think>` (added tokens, not special ones).
    pub think: Option<[&'static str; 2]>,
}

impl ChatTemplate {
    pub const ALL: [ChatTemplate; 3] = [
        ChatTemplate::Gemma,
        ChatTemplate::Qwen3,
        ChatTemplate::Llama3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ChatTemplate::Gemma => "gemma",
            ChatTemplate::Qwen3 => "qwen3",
            ChatTemplate::Llama3 => "llama3",
        }
    }

    /// The template a model family was instruction-tuned with.
    pub fn of_family(f: Family) -> Self {
        f.chat_template()
            .parse()
            .expect("every family names a known template")
    }

    pub(crate) fn names(self) -> TokenNames {
        match self {
            ChatTemplate::Gemma => TokenNames {
                bos: Some("<bos>"),
                eos: "<eos>",
                start_of_turn: "<start_of_turn>",
                end_of_header: None,
                end_of_turn: "<end_of_turn>",
                think: None,
            },
            ChatTemplate::Qwen3 => TokenNames {
                bos: None,
                eos: "<|endoftext|>",
                start_of_turn: "<|im_start|>",
                end_of_header: None,
                end_of_turn: "<|im_end|>",
                think: Some(["<think>", "</think>"]),
            },
            ChatTemplate::Llama3 => TokenNames {
                bos: Some("<|begin_of_text|>"),
                eos: "<|end_of_text|>",
                start_of_turn: "<|start_header_id|>",
                end_of_header: Some("<|end_header_id|>"),
                end_of_turn: "<|eot_id|>",
                think: None,
            },
        }
    }

    /// The template whose turn marker the tokenizer has.
    pub fn detect(tok: &Tokenizer, path: &Path) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| tok.token_to_id(t.names().start_of_turn).is_some())
            .ok_or_else(|| {
                DatasetError::tokenizer(
                    path,
                    "no known chat template: the tokenizer has none of `<start_of_turn>` (Gemma), `<|im_start|>` (Qwen3) and `<|start_header_id|>` (Llama-3)",
                )
            })
    }
}

impl std::fmt::Display for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ChatTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("`{s}` is not a chat template (gemma, qwen3 or llama3)"))
    }
}

/// How a variant lays out its examples (and chat its prompts): the family's chat turns, or
/// Alpaca's `### Instruction:` / `### Response:` blocks as plain text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Chat,
    /// Per pair `### Instruction:\n{user}\n\n### Response:\n{model}` and the family's end-of-turn
    /// token, then a blank line; after the family's BOS (if it has one) and the system text and
    /// a blank line (if there is one). Loss on the responses and their end-of-turn tokens.
    Alpaca,
}

impl Format {
    pub fn is_chat(&self) -> bool {
        *self == Format::Chat
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Chat => "chat",
            Format::Alpaca => "alpaca",
        }
    }
}

/// The layout of a conversation beyond its turns: format and system text (a variant's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Layout {
    #[serde(skip_serializing_if = "Format::is_chat")]
    pub format: Format,
    /// A system turn where the family has one (Qwen3, Llama-3), folded where it has not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

/// The ids of the special tokens a template places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Specials {
    pub template: ChatTemplate,
    /// Placed first (Qwen3 has none).
    pub bos: Option<u32>,
    /// The end of text: ends a reply too.
    pub eos: u32,
    /// Opens a turn: `<start_of_turn>`, `<|im_start|>`, `<|start_header_id|>`.
    pub start_of_turn: u32,
    /// Closes Llama's role header.
    pub end_of_header: Option<u32>,
    /// Ends a turn: `<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`; trained after a reply.
    pub end_of_turn: u32,
    /// Qwen3's `<think>` and `</think>`.
    pub think: Option<[u32; 2]>,
}

/// A piece of a rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<'a> {
    /// A special token, placed by id; trained or not.
    Special(u32, bool),
    /// The template's own text: role headers, separators, the system text.
    Template(Cow<'a, str>),
    /// An utterance's text (its prefix included); trained or not.
    Content(&'a str, bool),
}

impl Specials {
    /// Detects the template and finds each of its special tokens, naming a missing one.
    pub fn resolve(tok: &Tokenizer, path: &Path) -> Result<Self> {
        let template = ChatTemplate::detect(tok, path)?;
        let id = |name: &str| {
            tok.token_to_id(name).ok_or_else(|| {
                DatasetError::tokenizer(
                    path,
                    format!("special token `{name}` is not in the vocabulary"),
                )
            })
        };
        let n = template.names();
        Ok(Specials {
            template,
            bos: n.bos.map(id).transpose()?,
            eos: id(n.eos)?,
            start_of_turn: id(n.start_of_turn)?,
            end_of_header: n.end_of_header.map(id).transpose()?,
            end_of_turn: id(n.end_of_turn)?,
            think: match n.think {
                Some([open, close]) => Some([id(open)?, id(close)?]),
                None => None,
            },
        })
    }

    /// The parts of a conversation (alternating user and model turns, starting with user) in
    /// `layout`: with `prompt`, it ends with a user turn and the parts go on to the header of
    /// the model's reply. Every model turn is trained (its text and its end-of-turn token);
    /// trained text always ends right before a special token.
    pub fn parts<'a>(
        &self,
        layout: &'a Layout,
        turns: &'a [Utterance],
        prompt: bool,
    ) -> Vec<Part<'a>> {
        let mut p = Vec::with_capacity(4 * turns.len() + 8);
        if let Some(bos) = self.bos {
            p.push(Part::Special(bos, false));
        }
        let system = layout.system.as_deref();
        match layout.format {
            Format::Alpaca => self.alpaca(&mut p, system, turns),
            Format::Chat => match self.template {
                ChatTemplate::Gemma => self.gemma(&mut p, system, turns, prompt),
                ChatTemplate::Qwen3 => self.qwen3(&mut p, system, turns, prompt),
                ChatTemplate::Llama3 => self.llama3(&mut p, system, turns, prompt),
            },
        }
        p
    }

    fn gemma<'a>(
        &self,
        p: &mut Vec<Part<'a>>,
        system: Option<&'a str>,
        turns: &'a [Utterance],
        prompt: bool,
    ) {
        for (i, u) in turns.iter().enumerate() {
            let model = u.role == Role::Model;
            p.push(Part::Special(self.start_of_turn, false));
            p.push(Part::Template(
                if model { "model\n" } else { "user\n" }.into(),
            ));
            if let (0, Some(s)) = (i, system) {
                p.push(Part::Template(format!("{s}\n\n").into()));
            }
            p.push(Part::Content(&u.text, model));
            p.push(Part::Special(self.end_of_turn, model));
            p.push(Part::Template("\n".into()));
        }
        if prompt {
            p.push(Part::Special(self.start_of_turn, false));
            p.push(Part::Template("model\n".into()));
        }
    }

    // Trained turns follow the official template for the whole conversation (as TRL and
    // Unsloth render it): only a reply after the last user turn has the empty think block.
    // That makes the prompt chat renders for the last reply exactly the start of the training
    // example; the earlier replies of a multi-pair example are trained without the block, as
    // the template shows them in every later prompt.
    fn qwen3<'a>(
        &self,
        p: &mut Vec<Part<'a>>,
        system: Option<&'a str>,
        turns: &'a [Utterance],
        prompt: bool,
    ) {
        if let Some(s) = system {
            p.push(Part::Special(self.start_of_turn, false));
            p.push(Part::Template("system\n".into()));
            p.push(Part::Template(s.into()));
            p.push(Part::Special(self.end_of_turn, false));
            p.push(Part::Template("\n".into()));
        }
        let last_user = turns.iter().rposition(|u| u.role == Role::User);
        let think = |p: &mut Vec<Part<'a>>| {
            let [open, close] = self.think.expect("Qwen3's specials have the think tokens");
            p.push(Part::Special(open, false));
            p.push(Part::Template("\n\n".into()));
            p.push(Part::Special(close, false));
            p.push(Part::Template("\n\n".into()));
        };
        for (i, u) in turns.iter().enumerate() {
            let model = u.role == Role::Model;
            p.push(Part::Special(self.start_of_turn, false));
            p.push(Part::Template(
                if model { "assistant\n" } else { "user\n" }.into(),
            ));
            if model && last_user.is_some_and(|l| i > l) {
                think(p);
            }
            p.push(Part::Content(&u.text, model));
            p.push(Part::Special(self.end_of_turn, model));
            p.push(Part::Template("\n".into()));
        }
        if prompt {
            p.push(Part::Special(self.start_of_turn, false));
            p.push(Part::Template("assistant\n".into()));
            think(p);
        }
    }

    fn llama3<'a>(
        &self,
        p: &mut Vec<Part<'a>>,
        system: Option<&'a str>,
        turns: &'a [Utterance],
        prompt: bool,
    ) {
        let end_of_header = self
            .end_of_header
            .expect("Llama-3's specials have <|end_header_id|>");
        let header = |p: &mut Vec<Part<'a>>, role: &'static str| {
            p.push(Part::Special(self.start_of_turn, false));
            p.push(Part::Template(role.into()));
            p.push(Part::Special(end_of_header, false));
        };
        header(p, "system");
        p.push(Part::Template(
            format!("\n\nCutting Knowledge Date: December 2023\nToday Date: {LLAMA_DATE}\n\n")
                .into(),
        ));
        if let Some(s) = system {
            p.push(Part::Template(s.into()));
        }
        p.push(Part::Special(self.end_of_turn, false));
        for u in turns {
            let model = u.role == Role::Model;
            header(p, if model { "assistant" } else { "user" });
            p.push(Part::Template("\n\n".into()));
            p.push(Part::Content(&u.text, model));
            p.push(Part::Special(self.end_of_turn, model));
        }
        if prompt {
            header(p, "assistant");
            p.push(Part::Template("\n\n".into()));
        }
    }

    // The prompt needs nothing more: a user turn already ends with the response header.
    fn alpaca<'a>(&self, p: &mut Vec<Part<'a>>, system: Option<&'a str>, turns: &'a [Utterance]) {
        if let Some(s) = system {
            p.push(Part::Template(s.into()));
            p.push(Part::Template("\n\n".into()));
        }
        for u in turns {
            match u.role {
                Role::User => {
                    p.push(Part::Template("### Instruction:\n".into()));
                    p.push(Part::Content(&u.text, false));
                    p.push(Part::Template("\n\n### Response:\n".into()));
                }
                Role::Model => {
                    p.push(Part::Content(&u.text, true));
                    p.push(Part::Special(self.end_of_turn, true));
                    p.push(Part::Template("\n\n".into()));
                }
            }
        }
    }
}

/// The name of a role in messages.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::User => "user",
        Role::Model => "model",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::template::render_text;
    use crate::dataset::tokenizer::tests::small_for;

    fn turns(texts: &[&str]) -> Vec<Utterance> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Utterance {
                role: if i % 2 == 0 { Role::User } else { Role::Model },
                text: t.to_string(),
            })
            .collect()
    }

    fn layout(format: Format, system: Option<&str>) -> Layout {
        Layout {
            format,
            system: system.map(String::from),
        }
    }

    fn text(t: ChatTemplate, l: &Layout, texts: &[&str], prompt: bool) -> String {
        render_text(&small_for(t), l, &turns(texts), prompt)
    }

    const LLAMA_SYSTEM: &str = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

    #[test]
    fn each_family_renders_its_own_turns() {
        use ChatTemplate::*;
        let chat = layout(Format::Chat, None);
        let sys = layout(Format::Chat, Some("S"));
        let two = ["u1", "m1", "u2", "m2"];
        assert_eq!(
            text(Gemma, &sys, &two, false),
            "<bos><start_of_turn>user\nS\n\nu1<end_of_turn>\n<start_of_turn>model\nm1<end_of_turn>\n<start_of_turn>user\nu2<end_of_turn>\n<start_of_turn>model\nm2<end_of_turn>\n"
        );
        assert_eq!(
            text(Gemma, &chat, &["u1"], true),
            "<bos><start_of_turn>user\nu1<end_of_turn>\n<start_of_turn>model\n"
        );
        // Only the reply after the last user turn has the empty think block.
        assert_eq!(
            text(Qwen3, &sys, &two, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\nm1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nm2<|im_end|>\n"
        );
        assert_eq!(
            text(Qwen3, &chat, &two[..3], true),
            "<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\nm1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        assert_eq!(
            text(Llama3, &sys, &two[..2], false),
            format!("{LLAMA_SYSTEM}S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nu1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nm1<|eot_id|>")
        );
        assert_eq!(
            text(Llama3, &chat, &["u1"], true),
            format!("{LLAMA_SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nu1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        );
    }

    #[test]
    fn alpaca_is_plain_text_with_the_familys_bos_and_end_of_turn() {
        use ChatTemplate::*;
        let sys = layout(Format::Alpaca, Some("S"));
        let plain = layout(Format::Alpaca, None);
        let two = ["u1", "m1", "u2", "m2"];
        let body = "### Instruction:\nu1\n\n### Response:\nm1{END}\n\n### Instruction:\nu2\n\n### Response:\nm2{END}\n\n";
        assert_eq!(
            text(Gemma, &sys, &two, false),
            format!("<bos>S\n\n{}", body.replace("{END}", "<end_of_turn>"))
        );
        assert_eq!(
            text(Qwen3, &plain, &two, false),
            body.replace("{END}", "<|im_end|>")
        );
        assert_eq!(
            text(Llama3, &plain, &two, false),
            format!("<|begin_of_text|>{}", body.replace("{END}", "<|eot_id|>"))
        );
        // The prompt is the conversation so far: it already ends with the response header.
        assert_eq!(
            text(Qwen3, &sys, &two[..3], true),
            "S\n\n### Instruction:\nu1\n\n### Response:\nm1<|im_end|>\n\n### Instruction:\nu2\n\n### Response:\n"
        );
    }

    #[test]
    fn the_template_follows_the_family_and_parses() {
        for f in Family::ALL {
            assert_eq!(ChatTemplate::of_family(f).name(), f.chat_template());
        }
        for t in ChatTemplate::ALL {
            assert_eq!(t.name().parse::<ChatTemplate>(), Ok(t));
        }
        assert!("chatml"
            .parse::<ChatTemplate>()
            .unwrap_err()
            .contains("gemma, qwen3 or llama3"));
    }
}
