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
    system: Option<&str>,
    prefix: &str,
) -> Result<String> {
    for (what, text) in [
        ("the opening line", opening),
        ("the system text", system.unwrap_or("")),
        ("the prefix", prefix),
        ("the file name", gguf_file),
    ] {
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
         TEMPLATE \"\"\"{{{{- $prefix := {} }}}}\n{}\"\"\"\n\
         PARAMETER stop \"{}\"\n",
        // A JSON string is a Go string literal too (the escapes are Go's).
        serde_json::to_string(prefix).expect("a string serializes"),
        fam.ollama_template,
        fam.end_of_turn
    );
    // `socratune chat`'s sampling; Ollama has no "off" for top-p/top-k, so off is their
    // neutral value.
    m += &format!("PARAMETER temperature {}\n", sampling.temperature);
    m += &format!("PARAMETER top_p {}\n", sampling.top_p.unwrap_or(1.0));
    m += &format!("PARAMETER top_k {}\n", sampling.top_k.unwrap_or(0));
    m += &format!("PARAMETER repeat_penalty {}\n", sampling.repetition_penalty);
    m += &format!("PARAMETER repeat_last_n {}\n", sampling.repeat_last_n);
    m += &format!("PARAMETER num_predict {}\n", sampling.max_new_tokens);
    // The run's system text, as training rendered it (the TEMPLATE places it per family).
    if let Some(system) = system.map(str::trim).filter(|s| !s.is_empty()) {
        m += &format!("SYSTEM \"\"\"{system}\"\"\"\n");
    }
    m += &format!("MESSAGE assistant \"\"\"{}\"\"\"\n", opening.trim());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::family::{GEMMA2, LLAMA, QWEN3};

    #[test]
    fn modelfile_has_the_template_stop_sampling_and_opening() {
        let s = SamplingParams {
            top_k: None,
            ..SamplingParams::default()
        };
        let m = modelfile(
            "socrates.q8_0.gguf",
            &GEMMA2,
            &s,
            "正義とは何だろうか？\n",
            None,
            "",
        )
        .unwrap();
        assert!(m.contains("FROM ./socrates.q8_0.gguf\n"), "{m}");
        assert!(
            m.contains(&format!(
                "TEMPLATE \"\"\"{{{{- $prefix := \"\" }}}}\n{}\"\"\"\n",
                GEMMA2.ollama_template
            )),
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
        assert!(!m.contains("SYSTEM"), "{m}");
        let e = modelfile("x.gguf", &GEMMA2, &s, "a \"\"\" b", None, "").unwrap_err();
        assert!(e.to_string().contains("opening line"), "{e}");
    }

    #[test]
    fn modelfile_has_the_system_text_when_there_is_one() {
        let s = SamplingParams::default();
        let m = modelfile(
            "x.gguf",
            &GEMMA2,
            &s,
            "Q",
            Some(" あなたはソクラテスです。\n"),
            "",
        )
        .unwrap();
        assert!(
            m.contains("SYSTEM \"\"\"あなたはソクラテスです。\"\"\"\nMESSAGE assistant"),
            "{m}"
        );
        // Empty (an override that means none) writes no SYSTEM line.
        let m = modelfile("x.gguf", &GEMMA2, &s, "Q", Some("  "), "").unwrap();
        assert!(!m.contains("SYSTEM"), "{m}");
        let e = modelfile("x.gguf", &GEMMA2, &s, "Q", Some("a \"\"\" b"), "").unwrap_err();
        assert!(e.to_string().contains("system text"), "{e}");
    }

    #[test]
    fn modelfile_defines_the_prefix_as_a_go_string() {
        let s = SamplingParams::default();
        let m = modelfile("x.gguf", &GEMMA2, &s, "Q", None, "ソクラテスさん。\"\\").unwrap();
        assert!(
            m.contains(
                "TEMPLATE \"\"\"{{- $prefix := \"ソクラテスさん。\\\"\\\\\" }}\n{{- $system"
            ),
            "{m}"
        );
        let e = modelfile("x.gguf", &GEMMA2, &s, "Q", None, "\"\"\"").unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }

    // The templates render as training does (checked with Go's text/template, which Ollama
    // uses); these pin the parts that place the system text and the prefix.
    #[test]
    fn templates_place_the_system_text_as_training_does() {
        // Gemma: folded before the first user text, then a blank line.
        let g = GEMMA2.ollama_template;
        assert!(
            g.contains("<start_of_turn>user\n{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ $prefix }}{{ $prefix = \"\" }}{{ .Content }}"),
            "{g}"
        );
        assert!(
            !g.contains("(eq .Role \"system\") }}<start_of_turn>"),
            "{g}"
        );
        // Llama: the dated system header always, the system text inside it.
        let l = LLAMA.ollama_template;
        assert!(
            l.contains("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ $system }}<|eot_id|>"),
            "{l}"
        );
        assert!(l.contains("{{- if ne .Role \"system\" }}"), "{l}");
        // Qwen3: a system turn of its own; the think block only in the generation prompt.
        let q = QWEN3.ollama_template;
        assert_eq!(q.matches("<think>").count(), 1, "{q}");
        let user =
            "{{ if eq .Role \"user\" }}{{ $prefix }}{{ $prefix = \"\" }}{{ end }}{{ .Content }}";
        assert!(
            q.contains(&format!("<|im_start|>{{{{ .Role }}}}\n{user}<|im_end|>")),
            "{q}"
        );
        assert!(l.contains(&format!("{user}<|eot_id|>")), "{l}");
    }
}
