//! A conversation with a model: the chat template (the file's `tokenizer.chat_template`, else
//! ChatML) renders the messages, and each turn reuses the KV cache for the part of the
//! conversation already run, so a reply costs only its new tokens. The CLI's `--chat` and the
//! coming server both talk through this.

use minijinja::Environment;
use tritium_gguf::names::{DEFAULT_CHAT_TEMPLATE, END_OF_TURN, tokenizer};

use crate::forward::Session;
use crate::sample::Sampler;
use crate::{Error, Generation, generate};

pub struct Chat {
    env: Environment<'static>,
    /// (role, content), oldest first.
    pub messages: Vec<(String, String)>,
    /// The token ids the session's cache holds, from position 0.
    in_cache: Vec<u32>,
}

impl Chat {
    /// A conversation rendered by `template` (None: ChatML), opened by an optional system message.
    pub fn new(template: Option<&str>, system: Option<&str>) -> Result<Chat, Error> {
        let mut env = Environment::new();
        env.add_template_owned(
            "chat",
            template.unwrap_or(DEFAULT_CHAT_TEMPLATE).to_string(),
        )
        .map_err(|e| {
            Error::Context(format!(
                "the chat template ({}) does not parse: {e}",
                tokenizer::CHAT_TEMPLATE
            ))
        })?;
        let messages = system
            .map(|s| vec![("system".to_string(), s.to_string())])
            .unwrap_or_default();
        Ok(Chat {
            env,
            messages,
            in_cache: Vec::new(),
        })
    }

    /// The prompt text for the conversation so far, ending with the assistant's turn opening.
    pub fn render(&self) -> Result<String, Error> {
        let msgs: Vec<minijinja::Value> = self
            .messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => r, content => c })
            .collect();
        self.env
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! { messages => msgs, add_generation_prompt => true })
            })
            .map_err(|e| Error::Context(format!("chat template: {e}")))
    }

    /// Adds the user's message, generates the reply (streamed to `on_text`, up to `n` tokens,
    /// stopping at the end-of-turn marker or any of `stops`) and adds it to the conversation.
    pub fn reply(
        &mut self,
        sess: &mut Session,
        sampler: &mut Sampler,
        user: &str,
        n: usize,
        stops: &[String],
        on_text: impl FnMut(&str),
    ) -> Result<Generation, Error> {
        self.messages.push(("user".into(), user.to_string()));
        let ids = sess
            .model
            .tokenizer
            .encode(&self.render()?)
            .map_err(Error::Tokenizer)?;
        // Reuse the cache for the part of the conversation already run (at least one token is
        // run again, for its logits).
        let common = common_prefix(&self.in_cache, &ids).min(ids.len().saturating_sub(1));
        sess.pos = common.min(sess.pos);
        let mut stops = stops.to_vec();
        stops.extend(END_OF_TURN.iter().map(|s| s.to_string()));
        let g = generate(sess, sampler, &ids[sess.pos..], n, &stops, on_text)?;
        self.in_cache = ids;
        self.in_cache.extend(&g.tokens);
        self.messages.push(("assistant".into(), g.text.clone()));
        Ok(g)
    }
}

/// How many leading tokens two sequences share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_the_conversation_and_opens_the_reply() {
        let mut c = Chat::new(None, Some("be brief")).unwrap();
        c.messages.push(("user".into(), "hi".into()));
        assert_eq!(
            c.render().unwrap(),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert!(Chat::new(Some("{% for %}"), None).is_err());
    }
}
