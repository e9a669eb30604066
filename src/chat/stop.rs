//! Stop strings on streamed text: a piece is handed out only once no stop string can start in
//! it, so that streamed and whole answers are cut at the same place.

/// Watches streamed text for any of a set of strings.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text that might be the start of a stop string.
    held: String,
    done: bool,
}

impl StopStrings {
    /// Empty strings are ignored (the caller rejects them).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            done: false,
        }
    }

    /// Adds a piece; returns the text that is safe to hand out, and whether a stop string
    /// was found (the text before it is what is returned; nothing after it ever is).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.done {
            return (String::new(), true);
        }
        self.held.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            self.done = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that some stop string starts with.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        (out, false)
    }

    /// What was held back, when the text ended without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopStrings::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out.push(t);
            if hit {
                return (out, true, String::new());
            }
        }
        (out, false, m.finish())
    }

    #[test]
    fn cuts_at_a_stop_string_split_across_pieces() {
        let (out, hit, _) = run(&["かね？"], &["君は", "どう思うか", "ね？それで"]);
        assert!(hit);
        assert_eq!(out, ["君は", "どう思う", ""]);
        assert_eq!(out.concat(), "君はどう思う");
    }

    #[test]
    fn holds_back_only_what_could_start_a_stop_string() {
        let (out, hit, rest) = run(&["END", "\n\n"], &["abc E", "N", "x\n", "y"]);
        assert!(!hit);
        assert_eq!(out, ["abc ", "", "ENx", "\ny"]);
        assert_eq!(rest, "");
        let (out, hit, rest) = run(&["END"], &["abc EN"]);
        assert!(!hit);
        assert_eq!((out.concat(), rest.as_str()), ("abc ".into(), "EN"));
    }

    #[test]
    fn the_earliest_stop_string_wins_and_nothing_follows() {
        let stops = vec!["b".to_string(), "a".to_string()];
        let mut m = StopStrings::new(&stops);
        assert_eq!(m.push("xxab"), ("xx".to_string(), true));
        assert_eq!(m.push("more"), (String::new(), true));
        let mut none = StopStrings::new(&[]);
        assert_eq!(none.push("text"), ("text".to_string(), false));
    }
}
