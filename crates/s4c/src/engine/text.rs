//! Generated tokens become text as they arrive: complete characters only, and never any part of
//! a stop string — text that may be the start of one is held back until it is known not to be.

use s4c_models::{StreamDecoder, Tokenizer};

/// Text of a generation so far, cut at the first stop string.
pub(crate) struct TextStream {
    decoder: StreamDecoder,
    stops: Vec<String>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl TextStream {
    /// An empty stream that ends at the first of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            decoder: StreamDecoder::new(),
            stops: stops.to_vec(),
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds tokens; returns the text that can be shown now (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, ids: &[u32]) -> s4c_models::Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        let piece = self.decoder.push(tok, ids)?;
        self.push_text(&piece);
        Ok(self.take_ready())
    }

    /// Adds decoded text (the part of [`Self::push`] after decoding).
    fn push_text(&mut self, piece: &str) {
        // A stop string can only end in the new piece: search from where the longest one
        // could have started.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest.saturating_sub(1));
        self.text.push_str(piece);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
        }
    }

    /// The text past what was shown that cannot be part of a stop string.
    fn take_ready(&mut self) -> String {
        let mut end = self.text.len();
        if !self.stopped {
            // Hold back the longest tail that begins some stop string.
            let held = self
                .stops
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .filter(|&k| s.is_char_boundary(k))
                        .map(move |k| &s[..k])
                })
                .filter(|p| self.text.ends_with(p))
                .map(str::len)
                .max()
                .unwrap_or(0);
            end -= held;
            while !self.text.is_char_boundary(end) {
                end -= 1;
            }
        }
        let end = end.max(self.sent);
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// Whether a stop string was produced.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Ends the stream: the text held back (no stop string followed it, or an unfinished
    /// character) and the whole text.
    pub fn finish(mut self, tok: &Tokenizer) -> s4c_models::Result<(String, String)> {
        if !self.stopped {
            let piece = self.decoder.finish(tok)?;
            self.push_text(&piece);
        }
        Ok(self.finish_text())
    }

    /// [`Self::finish`] after the last decoded text.
    fn finish_text(mut self) -> (String, String) {
        self.stopped = true;
        let rest = self.take_ready();
        (rest, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (text shown while streaming + at the end, whole text, stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stops);
        let mut shown = String::new();
        for p in pieces {
            if s.stopped() {
                break;
            }
            s.push_text(p);
            shown += &s.take_ready();
        }
        let stopped = s.stopped();
        let (rest, all) = s.finish_text();
        (shown + &rest, all, stopped)
    }

    #[test]
    fn stop_strings_split_over_pieces_end_the_text_before_them() {
        let (shown, all, stopped) = run(&["END"], &["Hello E", "N", "D and more"]);
        assert_eq!(
            (shown.as_str(), all.as_str(), stopped),
            ("Hello ", "Hello ", true)
        );
        let (shown, _, stopped) = run(&["\n\n", "User:"], &["a\n", "b", "\nUs", "er: x"]);
        assert_eq!((shown.as_str(), stopped), ("a\nb\n", true));
    }

    #[test]
    fn held_back_text_that_turns_out_not_to_stop_is_shown() {
        let (shown, all, stopped) = run(&["END"], &["the EN", "d"]);
        assert_eq!(
            (shown.as_str(), all.as_str(), stopped),
            ("the ENd", "the ENd", false)
        );
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_text_is_cut_on_characters() {
        let (shown, _, stopped) = run(&["βγ", "é"], &["aβ", "γé"]);
        assert_eq!((shown.as_str(), stopped), ("a", true));
        let (shown, _, _) = run(&["é!"], &["caf", "é", " ok"]);
        assert_eq!(shown, "café ok");
    }

    #[test]
    fn stop_strings_match_like_a_search_over_the_whole_text() {
        // Brute force: the shown text is the whole text cut at the first occurrence of any stop.
        let texts = ["abcabcab", "xxENDyyEND", "aaaa", "ab\ncd\n\nef", "ENENDEND"];
        let stops: [&[&str]; 4] = [&["END"], &["\n\n", "b"], &["ca", "aa"], &["zz"]];
        for text in texts {
            for st in stops {
                let cut = st
                    .iter()
                    .filter_map(|s| text.find(s))
                    .min()
                    .unwrap_or(text.len());
                for size in 1..4 {
                    let pieces: Vec<&str> = text
                        .as_bytes()
                        .chunks(size)
                        .map(|c| std::str::from_utf8(c).unwrap())
                        .collect();
                    let (shown, all, stopped) = run(st, &pieces);
                    assert_eq!(shown, &text[..cut], "{text:?} {st:?} {size}");
                    assert_eq!(all, shown);
                    assert_eq!(stopped, cut < text.len());
                }
            }
        }
    }
}
