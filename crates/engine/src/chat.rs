//! A conversation with a model: the chat template (the file's `tokenizer.chat_template`, else
//! ChatML) renders the messages, and each turn reuses the KV cache for the part of the
//! conversation already run, so a reply costs only its new tokens. The CLI's `--chat` and the
//! coming server both talk through this.

use minijinja::Environment;
use tritium_gguf::names::{DEFAULT_CHAT_TEMPLATE, END_OF_TURN, tokenizer};

use crate::forward::Session;
use crate::sample::Sampler;
use crate::tokenizer::Tokenizer;
use crate::{Error, Generation, generate_after};

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
        // What Hugging Face's template renderer offers templates beyond Jinja: Python's string
        // and dict methods, and `raise_exception` for the checks templates make.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<(), minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
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
    /// Templates see `bos_token` and `eos_token` as Hugging Face's renderer gives them; a BOS
    /// the template writes itself is dropped when `tok` adds one anyway (llama.cpp does the same),
    /// so the prompt never starts with two.
    pub fn render(&self, tok: &Tokenizer) -> Result<String, Error> {
        let msgs: Vec<minijinja::Value> = self
            .messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => r, content => c })
            .collect();
        let text = |id: Option<u32>| id.map(|i| tok.decode(&[i])).unwrap_or_default();
        let (bos, eos) = (text(tok.bos), text(tok.eos));
        let out = self
            .env
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => msgs,
                    add_generation_prompt => true,
                    bos_token => bos,
                    eos_token => eos,
                })
            })
            .map_err(|e| Error::Context(format!("chat template: {e}")))?;
        Ok(match out.strip_prefix(bos.as_str()) {
            Some(rest) if tok.add_bos && !bos.is_empty() => rest.to_string(),
            _ => out,
        })
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
        let tok = &sess.model.tokenizer;
        let ids = match self
            .render(tok)
            .and_then(|t| tok.encode(&t).map_err(Error::Tokenizer))
        {
            Ok(ids) => ids,
            Err(e) => {
                self.messages.pop(); // the conversation stays as it was
                return Err(e);
            }
        };
        // Reuse the cache for the part of the conversation already run (at least one token is
        // run again, for its logits).
        let common = common_prefix(&self.in_cache, &ids).min(ids.len().saturating_sub(1));
        sess.pos = common.min(sess.pos);
        let kept = sess.pos;
        let mut stops = stops.to_vec();
        stops.extend(END_OF_TURN.iter().map(|s| s.to_string()));
        let (earlier, prompt) = ids.split_at(sess.pos);
        let g = match generate_after(sess, sampler, earlier, prompt, n, &stops, on_text) {
            Ok(g) => g,
            Err(e) => {
                // A failed turn leaves the conversation as it was; past the reused prefix the
                // cache may hold what the failed turn wrote, so none of it is reused again.
                self.messages.pop();
                self.in_cache.truncate(kept);
                return Err(e);
            }
        };
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

    fn tokenizer() -> Tokenizer {
        let bytes = crate::synthetic::gguf(&Default::default());
        Tokenizer::from_gguf(&tritium_gguf::Gguf::parse(&bytes).unwrap(), 258).unwrap()
    }

    /// Templates as Hugging Face writes them: `bos_token`/`eos_token`, Python string methods,
    /// `raise_exception`; and a BOS the template writes is not doubled by the tokenizer's.
    #[test]
    fn hugging_face_templates_render() {
        let mut tok = tokenizer();
        let eos = tok.decode(&[tok.eos.unwrap()]);
        let t = "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'system'] %}\
                 {{ raise_exception('bad role') }}{% endif %}[{{ m['content'].strip() }}]\
                 {{ eos_token }}{% endfor %}";
        let mut c = Chat::new(Some(t), None).unwrap();
        c.messages.push(("user".into(), "  hi  ".into()));
        tok.add_bos = false;
        tok.bos = tok.eos;
        assert_eq!(c.render(&tok).unwrap(), format!("{eos}[hi]{eos}"));
        tok.add_bos = true;
        assert_eq!(c.render(&tok).unwrap(), format!("[hi]{eos}"));
        c.messages.push(("robot".into(), "x".into()));
        let e = c.render(&tok).unwrap_err().to_string();
        assert!(e.contains("bad role"), "{e}");
    }

    #[test]
    fn chatml_renders_the_conversation_and_opens_the_reply() {
        let mut c = Chat::new(None, Some("be brief")).unwrap();
        c.messages.push(("user".into(), "hi".into()));
        assert_eq!(
            c.render(&tokenizer()).unwrap(),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert!(Chat::new(Some("{% for %}"), None).is_err());
    }
}
