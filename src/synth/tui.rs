//! The terminal side of the review queue: draws the current dialogue and turns key presses
//! into [`Key`]s. All decisions are made by [`Queue`]; this only shows them.

use super::review::{Effect, Key, Mode, Queue, Reason, Session};
use super::SynthError;
use crate::corpus::{Decision, Dialogue, Role};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Print, SetAttribute};
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute, queue};
use std::collections::HashMap;
use std::io::Write;

/// What the screen needs besides the queue.
pub struct View<'a> {
    pub dialogues: &'a [Dialogue],
    /// Persona id → name, when the personas file was readable.
    pub persona_names: &'a HashMap<String, String>,
    pub user_label: &'a str,
    pub model_label: &'a str,
}

/// Display columns of a character: 2 for East Asian wide and fullwidth forms.
fn char_width(c: char) -> usize {
    let u = c as u32;
    let wide = matches!(u,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F | 0x1F900..=0x1F9FF | 0x20000..=0x3FFFD);
    if wide {
        2
    } else {
        1
    }
}

/// Wraps text to `width` display columns, continuation lines indented by `indent` spaces.
pub fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 4);
    let mut out = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        let mut w = 0;
        for c in para.chars().filter(|c| !c.is_control()) {
            let cw = char_width(c);
            if w + cw > width {
                out.push(std::mem::take(&mut line));
                line.push_str(&" ".repeat(indent));
                w = indent;
            }
            line.push(c);
            w += cw;
        }
        out.push(line);
    }
    out
}

/// The whole screen as lines (no terminal needed): header, judge, dialogue (scrolled), footer.
pub fn screen(q: &Queue, v: &View, width: usize, height: usize) -> Vec<String> {
    let mut head = Vec::new();
    let decided = q.decided();
    let Some(item) = q.current() else {
        head.push(format!(
            "All {} dialogues in the queue visited; {decided} decided.",
            q.items.len()
        ));
        head.push(String::new());
        head.push(
            "b back · q quit (the reviewed file and the calibration report are written on quit)"
                .into(),
        );
        return head;
    };
    let d = &v.dialogues[item.index];
    let reason = if item.reason == Reason::Flagged {
        "flagged (score ≤ 2)"
    } else {
        "audit sample"
    };
    let persona = v
        .persona_names
        .get(&d.persona)
        .map_or(d.persona.clone(), |n| format!("{} {n}", d.persona));
    head.extend(wrap(
        &format!(
            "[{}/{}] {} · {reason} · {persona} · t={}",
            q.pos + 1,
            q.items.len(),
            d.id,
            d.user_temperature
        ),
        width,
        2,
    ));
    if let Some(j) = &d.judge {
        head.extend(wrap(
            &format!(
                "judge: socratic {} · coherence {}  — {}",
                j.socratic, j.coherence, j.comment
            ),
            width,
            2,
        ));
    }
    let h = q.decision(&item.id).cloned().unwrap_or_default();
    let mut yours = vec![match h.decision {
        Some(Decision::Keep) => "you: KEEP".to_string(),
        Some(Decision::Drop) => "you: DROP".to_string(),
        None => "you: undecided".to_string(),
    }];
    if let (Some(s), Some(c)) = (h.socratic, h.coherence) {
        yours.push(format!("scores {s}/{c}"));
    }
    if let Some(n) = &h.note {
        yours.push(format!("note: {n}"));
    }
    head.extend(wrap(&yours.join(" · "), width, 2));
    head.push("─".repeat(width.min(80)));

    let footer = match &q.mode {
        Mode::Note(t) => format!("note: {t}_   (Enter save · Esc cancel)"),
        Mode::Scores(s) => format!("human scores: socratic {s}, coherence _   (0–4 · Esc cancel)"),
        Mode::Browse => format!(
            "k keep · d drop · n note · two digits 0–4 scores · b back · s skip · u undo · ↑↓ PgUp PgDn scroll · q quit   [{decided}/{} decided]",
            q.items.len()
        ),
    };
    let footer = wrap(&footer, width, 2);

    let mut body = Vec::new();
    for (i, t) in d.turns.iter().enumerate() {
        let label = if t.role == Role::User {
            v.user_label
        } else {
            v.model_label
        };
        body.extend(wrap(&format!("{i:>2} {label}: {}", t.text), width, 3));
        body.push(String::new());
    }
    let room = height.saturating_sub(head.len() + footer.len() + 1).max(1);
    let start = q.scroll.min(body.len().saturating_sub(room));
    let mut lines = head;
    lines.extend(body.into_iter().skip(start).take(room));
    while lines.len() + footer.len() + 1 < height {
        lines.push(String::new());
    }
    lines.push("─".repeat(width.min(80)));
    lines.extend(footer);
    lines
}

/// Restores the terminal however the review ends (quit, error or panic).
struct Guard;

impl Guard {
    fn enter() -> Result<Self, SynthError> {
        let err = SynthError::Terminal;
        terminal::enable_raw_mode().map_err(err)?;
        let g = Guard;
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide).map_err(err)?;
        Ok(g)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

fn map_key(k: KeyEvent) -> Option<Key> {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Key::Interrupt);
    }
    Some(match k.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Esc => Key::Esc,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        _ => return None,
    })
}

/// Runs the review on the terminal until the reviewer quits; the session saves itself after
/// every change.
pub fn run(session: &mut Session, v: &View) -> Result<(), SynthError> {
    let err = SynthError::Terminal;
    let _guard = Guard::enter()?;
    let mut out = std::io::stdout();
    loop {
        let (w, h) = terminal::size().map_err(err)?;
        let lines = screen(&session.queue, v, w as usize, h as usize);
        queue!(out, Clear(ClearType::All)).map_err(err)?;
        for (row, line) in lines.iter().enumerate().take(h as usize) {
            queue!(out, cursor::MoveTo(0, row as u16)).map_err(err)?;
            if row == 0 {
                queue!(
                    out,
                    SetAttribute(Attribute::Bold),
                    Print(line),
                    SetAttribute(Attribute::Reset)
                )
                .map_err(err)?;
            } else {
                queue!(out, Print(line)).map_err(err)?;
            }
        }
        out.flush().map_err(err)?;
        let key = match event::read().map_err(err)? {
            Event::Key(k) if k.kind != KeyEventKind::Release => map_key(k),
            _ => None,
        };
        let Some(key) = key else { continue };
        if session.key(key)? == Effect::Quit {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::review::Item;
    use std::collections::BTreeMap;

    #[test]
    fn wraps_by_display_width() {
        assert_eq!(wrap("あいうえお", 6, 0), vec!["あいう", "えお"]);
        assert_eq!(wrap("abcdefgh", 5, 1), vec!["abcde", " fgh"]);
        assert_eq!(wrap("a\nb", 10, 0), vec!["a", "b"]);
    }

    #[test]
    fn screen_shows_scores_comment_and_turns() {
        let d: Dialogue = serde_json::from_str(
            r#"{"id":"d-p1-q1-t03","persona":"p1","question":"q1","user_temperature":0.3,
                "turns":[{"role":"user","text":"正義とは？"},{"role":"model","text":"きみはどう思う？"}],
                "judge":{"socratic":2,"coherence":4,"comment":"説明が長い"}}"#,
        )
        .unwrap();
        let ds = vec![d];
        let names = HashMap::from([("p1".to_string(), "孔子".to_string())]);
        let v = View {
            dialogues: &ds,
            persona_names: &names,
            user_label: "U",
            model_label: "S",
        };
        let mut q = Queue::new(
            vec![Item {
                index: 0,
                id: "d-p1-q1-t03".into(),
                reason: Reason::Flagged,
            }],
            BTreeMap::new(),
            None,
        );
        let s = screen(&q, &v, 100, 20).join("\n");
        assert!(s.contains("[1/1] d-p1-q1-t03 · flagged"), "{s}");
        assert!(s.contains("p1 孔子"), "{s}");
        assert!(
            s.contains("judge: socratic 2 · coherence 4  — 説明が長い"),
            "{s}"
        );
        assert!(
            s.contains(" 0 U: 正義とは？") && s.contains(" 1 S: きみはどう思う？"),
            "{s}"
        );
        assert_eq!(screen(&q, &v, 100, 20).len(), 20);
        q.handle(Key::Char('k'));
        assert!(screen(&q, &v, 100, 20)[0].contains("1 decided"));
    }
}
