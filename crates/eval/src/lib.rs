//! `tritium eval`: perplexity and zero-shot multiple choice by log-likelihood, for a Burn
//! checkpoint and for a GGUF run by the engine alike. Both answer the same question through
//! [`Scorer`] — the log-probability of each continuation token given a context — and everything
//! else (tokenization, truncation, metrics) is shared, so the two give comparable numbers.

pub mod scorers;
pub mod tasks;

use serde::Serialize;

pub use tasks::{Item, TASKS, TaskError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Input(String),
}

/// Per continuation token: its log-probability and whether it was the argmax.
pub type TokenScores = Vec<(f64, bool)>;

/// Continuations to score after one shared context.
#[derive(Debug, Clone)]
pub struct Request {
    pub ctx: Vec<u32>,
    pub conts: Vec<Vec<u32>>,
}

/// A model that scores continuations.
pub trait Scorer {
    /// Longest sequence (context + continuation) the model takes.
    fn max_len(&self) -> usize;
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError>;
    /// The token that starts a document (end-of-text), used when a context is empty.
    fn bos(&self) -> u32;
    /// The BOS the model puts before every text (Llama-3's `<|begin_of_text|>`), if it has one:
    /// every context starts with it, as the engine's prompts and training's documents do.
    fn prefix(&self) -> Option<u32>;
    /// Scores of every token of each continuation after the shared `context` (non-empty; callers
    /// keep `context.len() + cont.len() ≤ max_len()`).
    fn score(&mut self, context: &[u32], conts: &[Vec<u32>])
    -> Result<Vec<TokenScores>, EvalError>;
    /// Several requests at once (a backend may batch them); one result list per request.
    fn score_batch(&mut self, reqs: &[Request]) -> Result<Vec<Vec<TokenScores>>, EvalError> {
        reqs.iter().map(|r| self.score(&r.ctx, &r.conts)).collect()
    }
}

/// `log_softmax(row)[target]` and whether `target` is the (first) argmax, in f64.
pub fn token_score(row: &[f32], target: u32) -> (f64, bool) {
    let l = tritium_engine::sample::LogSoftmax::new(row);
    (l.at(row, target as usize), l.argmax() == target as usize)
}

// ---------------------------------------------------------------------------------------------
// Perplexity

#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    pub tokens: usize,
    pub bytes: usize,
    pub windows: usize,
    pub nll_sum: f64,
    pub nats_per_token: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

/// Token perplexity of `text` with a sliding window of `ctx` tokens moving `stride` tokens at a
/// time (Hugging Face's recipe: each token is scored once, with up to `ctx − stride` tokens of
/// earlier context). The text starts after an end-of-text token, as training documents do.
pub fn perplexity(
    s: &mut dyn Scorer,
    text: &str,
    ctx: usize,
    stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity, EvalError> {
    let ctx = ctx.min(s.max_len());
    if ctx < 2 || stride == 0 || stride > ctx - 1 {
        return Err(EvalError::Input(format!(
            "window {ctx} and stride {stride}: need 1 ≤ stride < window"
        )));
    }
    let mut toks = vec![s.bos()];
    toks.extend(s.encode(text)?);
    if toks.len() < 2 {
        return Err(EvalError::Input(
            "the text is empty: nothing to score".into(),
        ));
    }
    let n = toks.len();
    let (mut nll, mut scored, mut windows) = (0f64, 1usize, 0usize); // token 0 is the BOS
    while scored < n {
        let end = (scored + stride).min(n);
        let begin = end.saturating_sub(ctx);
        let (context, cont) = (&toks[begin..scored], toks[scored..end].to_vec());
        let r = s.score(context, &[cont])?;
        nll -= r[0].iter().map(|t| t.0).sum::<f64>();
        scored = end;
        windows += 1;
        progress(scored - 1, n - 1);
    }
    let tokens = n - 1;
    let bytes = text.len();
    Ok(Perplexity {
        tokens,
        bytes,
        windows,
        nll_sum: nll,
        nats_per_token: nll / tokens as f64,
        perplexity: (nll / tokens as f64).exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes as f64,
    })
}

// ---------------------------------------------------------------------------------------------
// Zero-shot tasks

/// Per-item outcome, kept so two models can be compared item by item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemResult {
    /// Choice with the highest summed log-likelihood (for LAMBADA: 1 if every token was greedy).
    pub pred: usize,
    /// Choice with the highest log-likelihood per character of the choice.
    pub pred_norm: usize,
    pub gold: usize,
    /// Log-likelihood of each option.
    pub lls: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    /// Not for LAMBADA (one continuation).
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
    /// LAMBADA: exp(−mean log-likelihood of the target), as lm-evaluation-harness reports it.
    pub perplexity: Option<f64>,
    pub chance: f64,
    /// Items whose context was cut from the left to fit the model.
    pub truncated: usize,
    pub items: Vec<ItemResult>,
}

/// Sample standard error of a mean of 0/1 outcomes (lm-evaluation-harness's `mean_stderr`).
pub fn stderr(p: f64, n: usize) -> f64 {
    if n < 2 {
        0.0
    } else {
        (p * (1.0 - p) / (n - 1) as f64).sqrt()
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// lm-evaluation-harness's split: encode context and context + continuation, the continuation's
/// tokens are what the whole has beyond the context (so merges across the boundary are honoured).
fn split(
    s: &dyn Scorer,
    context: &str,
    cont: &str,
    what: &str,
) -> Result<(Vec<u32>, Vec<u32>), EvalError> {
    let c = s.encode(context)?;
    let whole = s.encode(&format!("{context}{cont}"))?;
    let n = c.iter().zip(&whole).take_while(|(a, b)| a == b).count();
    let tail = whole[n..].to_vec();
    if tail.is_empty() {
        return Err(EvalError::Input(format!(
            "{what}: {cont:?} tokenizes to nothing"
        )));
    }
    Ok((whole[..n].to_vec(), tail))
}

/// The requests that score one item (the context cut from the left to fit the model).
fn requests(
    s: &dyn Scorer,
    item: &Item,
    truncated: &mut usize,
    what: &str,
) -> Result<Vec<Request>, EvalError> {
    let max = s.max_len();
    let prefix = s.prefix();
    let mut fit = |mut ctx: Vec<u32>, mut conts: Vec<Vec<u32>>| -> Request {
        conts.iter_mut().for_each(|c| c.truncate(max - 1));
        let longest = conts.iter().map(Vec::len).max().unwrap_or(0);
        // The BOS takes a place of the window too.
        let room = max.saturating_sub(longest).max(1) - usize::from(prefix.is_some());
        if ctx.len() > room {
            ctx.drain(..ctx.len() - room);
            *truncated += 1;
        }
        match prefix {
            Some(p) => ctx.insert(0, p),
            None if ctx.is_empty() => ctx.push(s.bos()),
            None => {}
        }
        Request { ctx, conts }
    };
    Ok(match item {
        Item::Choice { query, choices, .. } => {
            let mut split_choices = Vec::new();
            for (i, c) in choices.iter().enumerate() {
                split_choices.push(split(
                    s,
                    query,
                    &format!(" {c}"),
                    &format!("{what} choice {i}"),
                )?);
            }
            if split_choices
                .iter()
                .all(|(cx, _)| *cx == split_choices[0].0)
            {
                // One context shared by every choice: a backend can run it once.
                let ctx = split_choices[0].0.clone();
                vec![fit(
                    ctx,
                    split_choices.into_iter().map(|(_, t)| t).collect(),
                )]
            } else {
                // A tokenizer that merges the query's end with some choices and not others:
                // each choice is scored after its own context, none of it counted twice.
                split_choices
                    .into_iter()
                    .map(|(cx, tail)| fit(cx, vec![tail]))
                    .collect()
            }
        }
        Item::Context {
            contexts,
            continuation,
            ..
        } => {
            let mut out = Vec::new();
            for (i, c) in contexts.iter().enumerate() {
                let (cx, tail) = split(
                    s,
                    c,
                    &format!(" {continuation}"),
                    &format!("{what} option {i}"),
                )?;
                out.push(fit(cx, vec![tail]));
            }
            out
        }
        Item::Cloze {
            context,
            continuation,
        } => {
            let (cx, tail) = split(s, context, &format!(" {continuation}"), what)?;
            vec![fit(cx, vec![tail])]
        }
    })
}

/// Log-likelihood of each option and whether all its tokens were greedy, from the results of
/// [`requests`].
fn combine(results: Vec<Vec<TokenScores>>) -> (Vec<f64>, Vec<bool>) {
    let all: Vec<TokenScores> = results.into_iter().flatten().collect();
    (
        all.iter().map(|t| t.iter().map(|x| x.0).sum()).collect(),
        all.iter().map(|t| t.iter().all(|x| x.1)).collect(),
    )
}

/// Items scored per batch of requests.
const ITEMS_PER_BATCH: usize = 8;

/// Runs one task's items through the scorer.
pub fn run_task(
    s: &mut dyn Scorer,
    task: &str,
    items: &[Item],
    mut progress: impl FnMut(),
) -> Result<TaskResult, EvalError> {
    let mut results = Vec::with_capacity(items.len());
    let mut truncated = 0;
    let (mut chance, mut ll_sum) = (0.0, 0.0);
    let cloze = matches!(items.first(), Some(Item::Cloze { .. }));
    let mut scored: Vec<(Vec<f64>, Vec<bool>)> = Vec::with_capacity(items.len());
    for (c, chunk) in items.chunks(ITEMS_PER_BATCH).enumerate() {
        let mut reqs = Vec::new();
        let mut counts = Vec::new();
        for (k, item) in chunk.iter().enumerate() {
            let what = format!("{task} item {}", c * ITEMS_PER_BATCH + k + 1);
            let r = requests(s, item, &mut truncated, &what)?;
            counts.push(r.len());
            reqs.extend(r);
        }
        let mut results = s.score_batch(&reqs)?.into_iter();
        for n in counts {
            scored.push(combine(results.by_ref().take(n).collect()));
        }
    }
    for (item, (lls, greedy)) in items.iter().zip(scored) {
        let r = match item {
            Item::Choice { choices, gold, .. } => {
                chance += 1.0 / choices.len() as f64;
                let norm: Vec<f64> = lls
                    .iter()
                    .zip(choices)
                    .map(|(ll, c)| ll / c.chars().count().max(1) as f64)
                    .collect();
                ItemResult {
                    pred: argmax(&lls),
                    pred_norm: argmax(&norm),
                    gold: *gold,
                    lls,
                }
            }
            Item::Context { contexts, gold, .. } => {
                chance += 1.0 / contexts.len() as f64;
                let p = argmax(&lls);
                ItemResult {
                    pred: p,
                    pred_norm: p,
                    gold: *gold,
                    lls,
                }
            }
            Item::Cloze { .. } => {
                ll_sum += lls[0];
                let p = usize::from(greedy[0]);
                ItemResult {
                    pred: p,
                    pred_norm: p,
                    gold: 1,
                    lls,
                }
            }
        };
        results.push(r);
        progress();
    }
    let n = results.len();
    let acc = results.iter().filter(|r| r.pred == r.gold).count() as f64 / n as f64;
    let acc_norm = results.iter().filter(|r| r.pred_norm == r.gold).count() as f64 / n as f64;
    Ok(TaskResult {
        task: task.to_string(),
        n,
        acc,
        acc_stderr: stderr(acc, n),
        acc_norm: (!cloze).then_some(acc_norm),
        acc_norm_stderr: (!cloze).then(|| stderr(acc_norm, n)),
        perplexity: cloze.then(|| (-ll_sum / n as f64).exp()),
        chance: chance / n as f64,
        truncated,
        items: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model over single-character tokens ('a' = 1, …) with hand-set probabilities: the
    /// next token is `1 + (previous + 1) % 4` with probability 1/2 and each of the other three
    /// with 1/6; token 0 is the start token.
    struct Fake {
        calls: usize,
    }

    fn p(prev: u32, next: u32) -> f64 {
        if next == 1 + (prev + 1) % 4 {
            0.5
        } else {
            1.0 / 6.0
        }
    }

    impl Scorer for Fake {
        fn max_len(&self) -> usize {
            6
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
            Ok(text
                .bytes()
                .filter(|b| *b != b' ')
                .map(|b| (b - b'a' + 1) as u32)
                .collect())
        }
        fn bos(&self) -> u32 {
            0
        }
        fn prefix(&self) -> Option<u32> {
            None
        }
        fn score(
            &mut self,
            ctx: &[u32],
            conts: &[Vec<u32>],
        ) -> Result<Vec<TokenScores>, EvalError> {
            self.calls += 1;
            assert!(
                conts.iter().all(|c| ctx.len() + c.len() <= 6),
                "window respected"
            );
            Ok(conts
                .iter()
                .map(|c| {
                    let mut prev = *ctx.last().unwrap();
                    c.iter()
                        .map(|&t| {
                            let r = (p(prev, t).ln(), p(prev, t) == 0.5);
                            prev = t;
                            r
                        })
                        .collect()
                })
                .collect())
        }
    }

    #[test]
    fn perplexity_and_bits_per_byte_by_hand() {
        // "abcd" → tokens [0(bos), 1, 2, 3, 4]. Likely successor of t is 1 + (t+1)%4: of 0 → 2,
        // of 1 → 3, of 2 → 4, of 3 → 1. So p(1|0) = 1/6, p(2|1) = 1/6, p(3|2) = 1/6, p(4|3) = 1/6.
        let mut f = Fake { calls: 0 };
        let r = perplexity(&mut f, "abcd", 3, 2, |_, _| {}).unwrap();
        let nll = 4.0 * 6f64.ln();
        assert_eq!(r.tokens, 4);
        assert!((r.nll_sum - nll).abs() < 1e-12);
        assert!((r.perplexity - 6.0).abs() < 1e-9);
        assert!((r.bits_per_byte - nll / 2f64.ln() / 4.0).abs() < 1e-12);
        assert_eq!(r.windows, 2);
        // "acac": p(1|0)=1/6, p(3|1)=1/2, p(1|3)=1/2, p(3|1)=1/2 → nll = ln 6 + 3 ln 2.
        let r = perplexity(&mut f, "acac", 3, 1, |_, _| {}).unwrap();
        assert!((r.nll_sum - (6f64.ln() + 3.0 * 2f64.ln())).abs() < 1e-12);
        assert!(
            perplexity(&mut f, "", 3, 1, |_, _| {}).is_err(),
            "empty text"
        );
        assert!(
            perplexity(&mut f, "ab", 3, 3, |_, _| {}).is_err(),
            "stride ≥ window"
        );
    }

    #[test]
    fn acc_and_acc_norm_by_hand() {
        let mut f = Fake { calls: 0 };
        // Context "c" (3): likely next is 1 ("a"). Choice "a": ll = ln ½. Choice "bb": ln(1/6) +
        // ln p(2|2) = ln(1/6) + ln(1/6). Choice "ac": ln ½ + ln p(3|1) = 2 ln ½.
        // acc: argmax(ln ½ = −0.69, −3.58, −1.39) = 0. acc_norm per char: −0.69, −1.79, −0.69 → tie,
        // first wins → 0.
        // Item 2, context "a" (1): likely next 3 ("c"). Choices "c" (ln ½ = −0.69) and "cac"
        // (3 ln ½ = −2.08, per char −0.69 vs −0.69 again, tie → 0); gold 1 → both wrong.
        // Item 3, context "b" (2): likely 4 ("d"). "a": ln(1/6) = −1.79; "dab": ln ½ + ln p(1|4)
        // (likely of 4 is 1+(5%4)=2, so 1/6) + ln p(2|1) (1/6) = −0.69 −1.79 −1.79 = −4.28, per
        // char −1.43 > −1.79; gold 1 → acc wrong, acc_norm right.
        let items = vec![
            Item::Choice {
                query: "c".into(),
                choices: vec!["a".into(), "bb".into(), "ac".into()],
                gold: 0,
            },
            Item::Choice {
                query: "a".into(),
                choices: vec!["c".into(), "cac".into()],
                gold: 1,
            },
            Item::Choice {
                query: "b".into(),
                choices: vec!["a".into(), "dab".into()],
                gold: 1,
            },
        ];
        let r = run_task(&mut f, "copa", &items, || {}).unwrap();
        assert_eq!(f.calls, 3, "one call per item: the context is shared");
        let preds: Vec<(usize, usize)> = r.items.iter().map(|i| (i.pred, i.pred_norm)).collect();
        assert_eq!(preds, vec![(0, 0), (0, 0), (0, 1)]);
        assert!((r.acc - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.acc_norm.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.acc_stderr - (1.0f64 / 3.0 * 2.0 / 3.0 / 2.0).sqrt()).abs() < 1e-12);
        assert!((r.chance - (1.0 / 3.0 + 0.5 + 0.5) / 3.0).abs() < 1e-12);
        assert!((r.items[2].lls[1] - (0.5f64.ln() + 2.0 * (1.0f64 / 6.0).ln())).abs() < 1e-12);
    }

    #[test]
    fn cloze_accuracy_perplexity_and_winogrande_by_hand() {
        let mut f = Fake { calls: 0 };
        // "ab" + "d": context [1, 2], likely next of 2 is 4 → greedy, ll ln ½.
        // "ab" + "dc": then p(3|4) = 1/6 (likely is 2) → not greedy, ll ln ½ + ln(1/6).
        let items = vec![
            Item::Cloze {
                context: "ab".into(),
                continuation: "d".into(),
            },
            Item::Cloze {
                context: "ab".into(),
                continuation: "dc".into(),
            },
        ];
        let r = run_task(&mut f, "lambada_openai", &items, || {}).unwrap();
        assert!((r.acc - 0.5).abs() < 1e-12);
        let mean_ll = (2.0 * 0.5f64.ln() + (1.0f64 / 6.0).ln()) / 2.0;
        assert!((r.perplexity.unwrap() - (-mean_ll).exp()).abs() < 1e-9);
        assert!(r.acc_norm.is_none());
        // WinoGrande: continuation "a" after contexts ending in 3 (likely 1) or 4 (likely 2).
        let items = vec![Item::Context {
            contexts: vec!["bd".into(), "bc".into()],
            continuation: "a".into(),
            gold: 1,
        }];
        let r = run_task(&mut f, "winogrande", &items, || {}).unwrap();
        assert_eq!(r.items[0].pred, 1);
        assert_eq!(r.acc, 1.0);
        // Long contexts are cut from the left to fit max_len = 6.
        let items = vec![Item::Cloze {
            context: "abcdabcdab".into(),
            continuation: "d".into(),
        }];
        let r = run_task(&mut f, "lambada_openai", &items, || {}).unwrap();
        assert_eq!(r.truncated, 1);
    }

    /// [`Fake`] with a tokenizer that merges "c" then "d" into one token (2).
    struct Merging(Fake);

    impl Scorer for Merging {
        fn max_len(&self) -> usize {
            self.0.max_len()
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
            let mut out: Vec<u32> = Vec::new();
            for t in self.0.encode(text)? {
                if t == 4 && out.last() == Some(&3) {
                    *out.last_mut().unwrap() = 2;
                } else {
                    out.push(t);
                }
            }
            Ok(out)
        }
        fn bos(&self) -> u32 {
            self.0.bos()
        }
        fn prefix(&self) -> Option<u32> {
            self.0.prefix()
        }
        fn score(
            &mut self,
            ctx: &[u32],
            conts: &[Vec<u32>],
        ) -> Result<Vec<TokenScores>, EvalError> {
            self.0.score(ctx, conts)
        }
    }

    /// Where the query's last token merges with one choice and not another, each choice is
    /// scored after its own context: "c" + " d" is the one token 2 after the start token
    /// (ln p(2|0) = ln ½), not token 2 after a context that still holds the "c" (ln p(2|3) = ln ⅙).
    #[test]
    fn a_choice_that_merges_with_the_query_gets_its_own_context() {
        let mut f = Merging(Fake { calls: 0 });
        let items = vec![Item::Choice {
            query: "c".into(),
            choices: vec!["a".into(), "d".into()],
            gold: 1,
        }];
        let r = run_task(&mut f, "copa", &items, || {}).unwrap();
        assert_eq!(f.0.calls, 2, "one request per context");
        assert!((r.items[0].lls[0] - 0.5f64.ln()).abs() < 1e-12); // p(1|3): likely
        assert!((r.items[0].lls[1] - 0.5f64.ln()).abs() < 1e-12); // p(2|0): likely
    }

    #[test]
    fn choices_that_tokenize_to_nothing_are_errors() {
        let mut f = Fake { calls: 0 };
        let items = vec![Item::Choice {
            query: "a".into(),
            choices: vec!["b".into(), " ".into()],
            gold: 0,
        }];
        let e = run_task(&mut f, "piqa", &items, || {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("piqa item 1 choice 1") && e.contains("tokenizes to nothing"),
            "{e}"
        );
    }

    /// [`Fake`] for a model that puts a BOS (0) before every text, recording each context.
    struct Prefixed(Fake, Vec<Vec<u32>>);

    impl Scorer for Prefixed {
        fn max_len(&self) -> usize {
            self.0.max_len()
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
            self.0.encode(text)
        }
        fn bos(&self) -> u32 {
            0
        }
        fn prefix(&self) -> Option<u32> {
            Some(0)
        }
        fn score(
            &mut self,
            ctx: &[u32],
            conts: &[Vec<u32>],
        ) -> Result<Vec<TokenScores>, EvalError> {
            self.1.push(ctx.to_vec());
            self.0.score(ctx, conts)
        }
    }

    /// A model that starts every text with a BOS gets it before each context, and the window
    /// (6 here) still holds it with the context's end and the longest choice: the 6-token query
    /// keeps its last 4 tokens. Choices are scored after the context as before ("a" after "c",
    /// ln ½, beats "bb", 2 ln ⅙).
    #[test]
    fn contexts_start_with_the_bos_the_model_adds() {
        let mut f = Prefixed(Fake { calls: 0 }, Vec::new());
        let items = vec![
            Item::Choice {
                query: "c".into(),
                choices: vec!["a".into(), "bb".into()],
                gold: 0,
            },
            Item::Choice {
                query: "a b c d a b".into(),
                choices: vec!["c".into()],
                gold: 0,
            },
        ];
        let r = run_task(&mut f, "arc_easy", &items, || {}).unwrap();
        assert_eq!(f.1, vec![vec![0, 3], vec![0, 3, 4, 1, 2]]);
        assert_eq!(r.truncated, 1, "the 6-token query cut to 4 beside the BOS");
        assert_eq!(r.acc, 1.0);
    }
}
