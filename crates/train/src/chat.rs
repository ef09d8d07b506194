//! Chat templates (Jinja, rendered by minijinja, as Hugging Face and llama.cpp store them in
//! `tokenizer.chat_template`) and the tokenization of a conversation with its loss mask: only the
//! assistant turns (with their end marker) are trained on.

use crate::instruct::{Example, Message, Role};
use crate::tokenizer::Tokenizer;

pub struct Template {
    env: minijinja::Environment<'static>,
    pub source: String,
    /// What templates see as `bos_token` and `eos_token`, as Hugging Face's renderer and the
    /// engine's chat give them: a template that writes them renders the same text in both.
    bos: String,
    eos: String,
}

impl Template {
    pub fn new(source: &str) -> Result<Template, String> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("chat template: {e}"))?;
        Ok(Template {
            env,
            source: source.to_string(),
            bos: String::new(),
            eos: String::new(),
        })
    }

    /// `tok`'s document start and end-of-text token as `bos_token` and `eos_token`: what the
    /// engine's chat gives them for this tokenizer's GGUF export.
    pub fn with_tokens(mut self, tok: &Tokenizer) -> Template {
        self.bos = tok.decode(&[tok.doc_start()]);
        self.eos = tok.decode(&[tok.eot_id]);
        self
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| format!("chat template: {e}"))
    }

    /// The rendered conversation cut into pieces, each marked trainable (an assistant turn as the
    /// template renders it after its generation prompt) or not.
    pub fn pieces(&self, messages: &[Message]) -> Result<Vec<(String, bool)>, String> {
        let mut out = Vec::new();
        let mut done = String::new();
        for k in 0..messages.len() {
            if messages[k].role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..k], true)?;
            let after = self.render(&messages[..=k], false)?;
            if !before.starts_with(&done) || !after.starts_with(&before) {
                return Err("the chat template does not render conversations as growing prefixes; cannot find the assistant turns".into());
            }
            out.push((before[done.len()..].to_string(), false));
            out.push((after[before.len()..].to_string(), true));
            done = after;
        }
        let all = self.render(messages, false)?;
        if all.len() > done.len() {
            out.push((all[done.len()..].to_string(), false));
        }
        Ok(out)
    }
}

/// Token ids of a conversation and, per token, whether the loss counts it.
pub fn tokenize(
    tok: &Tokenizer,
    tpl: &Template,
    ex: &Example,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (text, train) in tpl
        .pieces(&ex.messages)
        .map_err(|e| format!("{}: {e}", ex.origin))?
    {
        let t = tok
            .encode(&text)
            .map_err(|e| format!("{}: {e}", ex.origin))?;
        mask.extend(std::iter::repeat_n(train, t.len()));
        ids.extend(t);
    }
    Ok((ids, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, c: &str) -> Message {
        Message {
            role,
            content: c.into(),
        }
    }

    #[test]
    fn chatml_pieces_mark_only_assistant_turns() {
        let t = Template::new(tritium_gguf::names::DEFAULT_CHAT_TEMPLATE).unwrap();
        let msgs = vec![
            m(Role::System, "Be brief."),
            m(Role::User, "Hi"),
            m(Role::Assistant, "Hello."),
            m(Role::User, "Bye"),
            m(Role::Assistant, "Bye!"),
        ];
        let p = t.pieces(&msgs).unwrap();
        let trained: Vec<&str> = p.iter().filter(|x| x.1).map(|x| x.0.as_str()).collect();
        assert_eq!(trained, vec!["Hello.<|im_end|>\n", "Bye!<|im_end|>\n"]);
        let all: String = p.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(all, t.render(&msgs, false).unwrap());
        assert!(p[0].0.ends_with("<|im_start|>assistant\n") && !p[0].1);
        assert!(Template::new("{% for m in messages %}").is_err());
    }
}
