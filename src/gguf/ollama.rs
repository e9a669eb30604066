//! An Ollama `Modelfile` beside the GGUF file, so that `ollama create` gives a model that
//! chats in the trained format, stops at the end of its turn, samples as `socratune chat`
//! does, and opens with the persona's fixed question.

use super::family::Family;
use super::{GgufError, Result};
use crate::model::generate::SamplingParams;

/// The Modelfile text for `gguf_file` (a name in the same folder).
pub fn modelfile(
    gguf_file: &str,
    fam: &Family,
    sampling: &SamplingParams,
    opening: &str,
) -> Result<String> {
    for (what, text) in [("the opening line", opening), ("the file name", gguf_file)] {
        if text.contains("\"\"\"") {
            return Err(GgufError::Invalid(format!(
                "{what} contains \"\"\", which a Modelfile cannot quote"
            )));
        }
    }
    let mut m = format!(
        "# Made by `socratune export --format gguf --ollama`.\n\
         # ollama create socrates -f Modelfile && ollama run socrates\n\
         FROM ./{gguf_file}\n\
         TEMPLATE \"\"\"{}\"\"\"\n\
         PARAMETER stop \"{}\"\n",
        fam.ollama_template, fam.end_of_turn
    );
    // `socratune chat`'s sampling; Ollama has no "off" for top-p/top-k, so off is their
    // neutral value.
    m += &format!("PARAMETER temperature {}\n", sampling.temperature);
    m += &format!("PARAMETER top_p {}\n", sampling.top_p.unwrap_or(1.0));
    m += &format!("PARAMETER top_k {}\n", sampling.top_k.unwrap_or(0));
    m += &format!("PARAMETER repeat_penalty {}\n", sampling.repetition_penalty);
    m += &format!("PARAMETER repeat_last_n {}\n", sampling.repeat_last_n);
    m += &format!("PARAMETER num_predict {}\n", sampling.max_new_tokens);
    m += &format!("MESSAGE assistant \"\"\"{}\"\"\"\n", opening.trim());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::family::GEMMA2;

    #[test]
    fn modelfile_has_the_template_stop_sampling_and_opening() {
        let s = SamplingParams {
            top_k: None,
            ..SamplingParams::default()
        };
        let m = modelfile("socrates.q8_0.gguf", &GEMMA2, &s, "正義とは何だろうか？\n").unwrap();
        assert!(m.contains("FROM ./socrates.q8_0.gguf\n"), "{m}");
        assert!(
            m.contains("TEMPLATE \"\"\"{{- range $i, $_ := .Messages }}"),
            "{m}"
        );
        assert!(m.contains("PARAMETER stop \"<end_of_turn>\"\n"));
        assert!(m.contains("PARAMETER temperature 0.7\n"));
        assert!(m.contains("PARAMETER top_p 0.95\n"));
        assert!(m.contains("PARAMETER top_k 0\n"));
        assert!(m.contains("PARAMETER num_predict 256\n"));
        assert!(
            m.ends_with("MESSAGE assistant \"\"\"正義とは何だろうか？\"\"\"\n"),
            "{m}"
        );
        let e = modelfile("x.gguf", &GEMMA2, &s, "a \"\"\" b").unwrap_err();
        assert!(e.to_string().contains("opening line"), "{e}");
    }
}
