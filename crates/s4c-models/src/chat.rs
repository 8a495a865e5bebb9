//! Chat templates: ChatML (SmolLM2), Vicuna v1.1, Llama-2-chat and Llama-3.

use std::str::FromStr;

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
    fn from_str(s: &str) -> Result<Self, String> {
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

/// A chat template with its default system prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The format.
    pub kind: TemplateKind,
    /// System prompt used when the conversation has none.
    pub default_system: Option<String>,
}

impl ChatTemplate {
    /// A template of `kind` with that format's usual default system prompt.
    pub fn new(kind: TemplateKind) -> Self {
        let default_system = match kind {
            TemplateKind::Vicuna => Some(VICUNA_SYSTEM.to_string()),
            _ => None,
        };
        ChatTemplate {
            kind,
            default_system,
        }
    }

    /// Recognises a Jinja chat template (from GGUF metadata or `tokenizer_config.json`), including
    /// a default system prompt written into it (as SmolLM2's is).
    pub fn detect(jinja: &str) -> Option<Self> {
        let kind = if jinja.contains("<|im_start|>") {
            TemplateKind::ChatMl
        } else if jinja.contains("<|start_header_id|>") {
            TemplateKind::Llama3
        } else if jinja.contains("[INST]") {
            TemplateKind::Llama2
        } else if jinja.contains("USER:") || jinja.contains("ASSISTANT:") {
            TemplateKind::Vicuna
        } else {
            return None;
        };
        let mut t = ChatTemplate::new(kind);
        if kind == TemplateKind::ChatMl {
            let marker = "<|im_start|>system\n";
            if let Some(start) = jinja.find(marker) {
                let rest = &jinja[start + marker.len()..];
                if let Some(end) = rest.find("<|im_end|>") {
                    let text = &rest[..end];
                    if !text.contains("{{") && !text.contains("{%") && !text.contains('\'') {
                        t.default_system = Some(text.to_string());
                    }
                }
            }
        }
        Some(t)
    }

    /// Whether a BOS token must be put before the rendered text (the text itself has none).
    pub fn needs_bos(&self) -> bool {
        matches!(self.kind, TemplateKind::Vicuna | TemplateKind::Llama2)
    }

    /// Token strings that end an assistant turn, besides the model's EOS.
    pub fn stop_strings(&self) -> &'static [&'static str] {
        match self.kind {
            TemplateKind::ChatMl => &["<|im_end|>"],
            TemplateKind::Llama3 => &["<|eot_id|>", "<|end_of_text|>"],
            TemplateKind::Vicuna | TemplateKind::Llama2 => &["</s>"],
        }
    }

    /// The text that opens a conversation's first user turn (after the default system prompt),
    /// for templates whose user turn ends with a special token (ChatML, Llama 3): what a model
    /// continues to write a user's message itself. `None` for formats whose user turn ends in
    /// plain text (Vicuna, Llama 2).
    pub fn user_turn_opening(&self) -> Option<String> {
        if !matches!(self.kind, TemplateKind::ChatMl | TemplateKind::Llama3) {
            return None;
        }
        const MARK: &str = "\u{1}";
        let text = self.render(&[Message::new("user", MARK)]);
        text.find(MARK).map(|i| text[..i].to_string())
    }

    /// Renders a conversation, ending with the opening of the assistant's turn.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut msgs: Vec<Message> = messages.to_vec();
        if msgs.first().is_none_or(|m| m.role != "system") {
            if let Some(sys) = &self.default_system {
                msgs.insert(0, Message::new("system", sys));
            }
        }
        let mut out = String::new();
        match self.kind {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_default_system_from_jinja() {
        let jinja = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        let t = ChatTemplate::detect(jinja).unwrap();
        assert_eq!(t.kind, TemplateKind::ChatMl);
        assert_eq!(
            t.render(&[Message::new("user", "hi")]),
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
        let v = ChatTemplate::new(TemplateKind::Vicuna).render(&conv);
        assert_eq!(
            v,
            format!("{VICUNA_SYSTEM} USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:")
        );
        let mut sys = vec![Message::new("system", "S")];
        sys.extend(conv.iter().cloned());
        let l2 = ChatTemplate::new(TemplateKind::Llama2).render(&sys);
        assert_eq!(
            l2,
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
        );
        let l3 = ChatTemplate::new(TemplateKind::Llama3).render(&conv[..1]);
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
                .starts_with(&(opening + "Q")));
        }
        for kind in [TemplateKind::Vicuna, TemplateKind::Llama2] {
            assert_eq!(ChatTemplate::new(kind).user_turn_opening(), None);
        }
    }
}
