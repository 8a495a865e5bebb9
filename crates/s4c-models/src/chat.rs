//! Chat templates: ChatML (SmolLM2), Vicuna v1.1, Llama-2-chat and Llama-3.

use std::str::FromStr;

use crate::error::{ModelError, Result};

/// A message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The chat formats s4c knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen…).
    ChatMl,
    /// `SYSTEM USER: … ASSISTANT: …</s>` (Vicuna v1.1).
    Vicuna,
    /// `[INST] <<SYS>>…<</SYS>> … [/INST]` (Llama-2-chat, TinyLlama-chat v0.x).
    Llama2,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
}

impl FromStr for TemplateKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "chatml" => Ok(TemplateKind::ChatMl),
            "vicuna" | "vicuna-v1.1" => Ok(TemplateKind::Vicuna),
            "llama2" | "llama-2" | "llama2-chat" => Ok(TemplateKind::Llama2),
            "llama3" | "llama-3" => Ok(TemplateKind::Llama3),
            other => Err(format!(
                "unknown chat template {other:?}; use chatml, vicuna, llama2 or llama3"
            )),
        }
    }
}

const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// A chat template: the model's own Jinja template (GGUF `tokenizer.chat_template`, HF
/// `tokenizer_config.json`), rendered as HF transformers' `apply_chat_template` does, or a
/// built-in format as a fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The format's family, when recognised: its end-of-turn tokens, and the built-in rendering
    /// of templates without Jinja source.
    pub kind: Option<TemplateKind>,
    /// System prompt the built-in rendering uses when the conversation has none.
    pub default_system: Option<String>,
    jinja: Option<Jinja>,
}

/// A Jinja template's source and the special-token strings it may print.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Jinja {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The built-in template of `kind`, with that format's usual default system prompt.
    pub fn new(kind: TemplateKind) -> Self {
        let default_system = match kind {
            TemplateKind::Vicuna => Some(VICUNA_SYSTEM.to_string()),
            _ => None,
        };
        ChatTemplate {
            kind: Some(kind),
            default_system,
            jinja: None,
        }
    }

    /// The model's Jinja template; `bos_token` and `eos_token` are the strings the template
    /// sees under those names. Fails when the source does not compile.
    pub fn from_jinja(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let jinja = Jinja {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        };
        environment()
            .template_from_str(source)
            .map_err(template_error)?;
        Ok(ChatTemplate {
            kind: family(source),
            default_system: None,
            jinja: Some(jinja),
        })
    }

    /// The Jinja source, if the template has one.
    pub fn jinja_source(&self) -> Option<&str> {
        self.jinja.as_ref().map(|j| j.source.as_str())
    }

    /// A short description: the family and whether the model's own Jinja renders it.
    pub fn describe(&self) -> String {
        let family = self
            .kind
            .map_or("unknown family".to_string(), |k| format!("{k:?}"));
        match self.jinja {
            Some(_) => format!("{family} (the model's Jinja template)"),
            None => format!("{family} (built in)"),
        }
    }

    /// Whether a BOS token must be put before the rendered text: built-in Vicuna and Llama-2
    /// formats (a Jinja template prints its own `bos_token`, as `apply_chat_template` expects).
    pub fn needs_bos(&self) -> bool {
        self.jinja.is_none()
            && matches!(self.kind, Some(TemplateKind::Vicuna | TemplateKind::Llama2))
    }

    /// Token strings that end an assistant turn, besides the model's EOS.
    pub fn stop_strings(&self) -> &'static [&'static str] {
        match self.kind {
            Some(TemplateKind::ChatMl) => &["<|im_end|>"],
            Some(TemplateKind::Llama3) => &["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
            Some(TemplateKind::Vicuna | TemplateKind::Llama2) => &["</s>"],
            None => &[],
        }
    }

    /// The text that opens a conversation's first user turn (after the default system prompt),
    /// for templates whose user turn ends with a special token (ChatML, Llama 3): what a model
    /// continues to write a user's message itself. `None` for formats whose user turn ends in
    /// plain text (Vicuna, Llama 2).
    pub fn user_turn_opening(&self) -> Option<String> {
        if !matches!(self.kind, Some(TemplateKind::ChatMl | TemplateKind::Llama3)) {
            return None;
        }
        const MARK: &str = "\u{1}";
        let text = self.render(&[Message::new("user", MARK)]).ok()?;
        text.find(MARK).map(|i| text[..i].to_string())
    }

    /// Renders a conversation, ending with the opening of the assistant's turn
    /// (`add_generation_prompt`). Fails when the template refuses the conversation (e.g. roles
    /// that do not alternate).
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.render_with(messages, &[])
    }

    /// [`Self::render`] with more variables for a Jinja template (e.g. `date_string`).
    pub fn render_with(&self, messages: &[Message], extra: &[(&str, &str)]) -> Result<String> {
        let Some(j) = &self.jinja else {
            return Ok(self.render_builtin(messages));
        };
        let env = environment();
        let t = env.template_from_str(&j.source).map_err(template_error)?;
        let mut ctx: std::collections::BTreeMap<&str, minijinja::Value> = extra
            .iter()
            .map(|(k, v)| (*k, minijinja::Value::from(*v)))
            .collect();
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| {
                minijinja::Value::from_iter([
                    ("role", minijinja::Value::from(m.role.as_str())),
                    ("content", minijinja::Value::from(m.content.as_str())),
                ])
            })
            .collect();
        ctx.insert("messages", minijinja::Value::from(msgs));
        ctx.insert("add_generation_prompt", true.into());
        ctx.insert("bos_token", j.bos_token.as_str().into());
        ctx.insert("eos_token", j.eos_token.as_str().into());
        t.render(ctx).map_err(template_error)
    }

    fn render_builtin(&self, messages: &[Message]) -> String {
        let mut msgs: Vec<Message> = messages.to_vec();
        if msgs.first().is_none_or(|m| m.role != "system") {
            if let Some(sys) = &self.default_system {
                msgs.insert(0, Message::new("system", sys));
            }
        }
        let mut out = String::new();
        let Some(kind) = self.kind else {
            return String::new();
        };
        match kind {
            TemplateKind::ChatMl => {
                for m in &msgs {
                    out += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
                }
                out += "<|im_start|>assistant\n";
            }
            TemplateKind::Llama3 => {
                out += "<|begin_of_text|>";
                for m in &msgs {
                    out += &format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    );
                }
                out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            }
            TemplateKind::Vicuna => {
                // FastChat's "vicuna_v1.1": system, " ", then "USER: q " / "ASSISTANT: a</s>".
                let mut sys = String::new();
                for m in &msgs {
                    match m.role.as_str() {
                        "system" => sys = m.content.clone(),
                        "user" => out += &format!("USER: {} ", m.content),
                        _ => out += &format!("ASSISTANT: {}</s>", m.content),
                    }
                }
                out = format!("{sys} {out}ASSISTANT:");
            }
            TemplateKind::Llama2 => {
                let mut sys = None;
                let mut turn = 0;
                for m in &msgs {
                    match m.role.as_str() {
                        "system" => sys = Some(m.content.clone()),
                        "user" => {
                            if turn > 0 {
                                out += "<s>";
                            }
                            let content = match sys.take() {
                                Some(s) => {
                                    format!("<<SYS>>\n{s}\n<</SYS>>\n\n{}", m.content.trim())
                                }
                                None => m.content.trim().to_string(),
                            };
                            out += &format!("[INST] {content} [/INST]");
                            turn += 1;
                        }
                        _ => out += &format!(" {} </s>", m.content.trim()),
                    }
                }
            }
        }
        out
    }
}

/// The family of a Jinja template, from the special strings it prints.
fn family(jinja: &str) -> Option<TemplateKind> {
    if jinja.contains("<|im_start|>") {
        Some(TemplateKind::ChatMl)
    } else if jinja.contains("<|start_header_id|>") {
        Some(TemplateKind::Llama3)
    } else if jinja.contains("[INST]") {
        Some(TemplateKind::Llama2)
    } else if jinja.contains("USER:") || jinja.contains("ASSISTANT:") {
        Some(TemplateKind::Vicuna)
    } else {
        None
    }
}

fn template_error(e: minijinja::Error) -> ModelError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason += &format!(": {s}");
        source = s.source();
    }
    ModelError::Template { reason }
}

/// A Jinja environment as HF transformers renders chat templates: blocks trimmed, Python
/// string and dict methods, `raise_exception` and `strftime_now`.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<minijinja::Value, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    env.add_function("strftime_now", |format: String| strftime_now(&format));
    env
}

/// The current UTC date and time in `format` (`%d %b %Y`, `%Y-%m-%d`, `%B`, `%H:%M:%S`, …).
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(format, secs)
}

/// `secs` since the Unix epoch formatted with the common strftime codes.
fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let name = MONTHS[(month - 1) as usize];
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('B') => out += name,
            Some('b') => out += &name[..3],
            Some('H') => out += &format!("{:02}", rem / 3600),
            Some('M') => out += &format!("{:02}", rem / 60 % 60),
            Some('S') => out += &format!("{:02}", rem % 60),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_jinja_with_its_default_system_prompt() {
        let jinja = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::from_jinja(jinja, "", "").unwrap();
        assert_eq!(t.kind, Some(TemplateKind::ChatMl));
        assert!(!t.needs_bos());
        assert_eq!(
            t.render(&[Message::new("user", "hi")]).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn vicuna_llama2_llama3_formats() {
        let conv = [
            Message::new("user", "Q1"),
            Message::new("assistant", "A1"),
            Message::new("user", "Q2"),
        ];
        let v = ChatTemplate::new(TemplateKind::Vicuna)
            .render(&conv)
            .unwrap();
        assert_eq!(
            v,
            format!("{VICUNA_SYSTEM} USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:")
        );
        let mut sys = vec![Message::new("system", "S")];
        sys.extend(conv.iter().cloned());
        let l2 = ChatTemplate::new(TemplateKind::Llama2)
            .render(&sys)
            .unwrap();
        assert_eq!(
            l2,
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
        );
        let l3 = ChatTemplate::new(TemplateKind::Llama3)
            .render(&conv[..1])
            .unwrap();
        assert_eq!(l3, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        assert!("nope".parse::<TemplateKind>().is_err());
    }

    #[test]
    fn user_turn_openings_prefix_the_rendered_turn() {
        let mut chatml = ChatTemplate::new(TemplateKind::ChatMl);
        chatml.default_system = Some("S".into());
        assert_eq!(
            chatml.user_turn_opening().as_deref(),
            Some("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n")
        );
        let l3 = ChatTemplate::new(TemplateKind::Llama3);
        assert_eq!(
            l3.user_turn_opening().as_deref(),
            Some("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
        );
        for t in [chatml, l3] {
            let opening = t.user_turn_opening().unwrap();
            assert!(t
                .render(&[Message::new("user", "Q")])
                .unwrap()
                .starts_with(&(opening + "Q")));
        }
        for kind in [TemplateKind::Vicuna, TemplateKind::Llama2] {
            assert_eq!(ChatTemplate::new(kind).user_turn_opening(), None);
        }
    }

    #[test]
    fn bad_templates_and_refused_conversations_are_errors() {
        assert!(matches!(
            ChatTemplate::from_jinja("{% for m in messages %}", "", ""),
            Err(ModelError::Template { .. })
        ));
        let strict = ChatTemplate::from_jinja(
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}x",
            "",
            "",
        )
        .unwrap();
        match strict.render(&[Message::new("system", "S")]) {
            Err(ModelError::Template { reason }) => assert!(reason.contains("no system role")),
            other => panic!("{other:?}"),
        }
        assert_eq!(strict.render(&[Message::new("user", "Q")]).unwrap(), "x");
    }

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-07-26 13:05:09 UTC and 2000-02-29 00:00:00 UTC.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S", 1_721_999_109),
            "26 Jul 2024 13:05:09"
        );
        assert_eq!(
            strftime("%Y-%m-%d %B %y %%", 951_782_400),
            "2000-02-29 February 00 %"
        );
    }
}
