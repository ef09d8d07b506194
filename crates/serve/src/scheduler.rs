//! Continuous batching: one engine thread owns `--parallel` slots, each a session with its own KV
//! cache. Every step it admits waiting jobs into free slots, runs one batched forward over every
//! busy slot (a prompt chunk or the last sampled token each), samples each slot's next token and
//! sends it to the job's channel. A job whose receiver is gone (client disconnect, timeout) frees
//! its slot before the next step. A new job goes to the free slot whose cache shares the longest
//! prefix with its prompt, and runs only the rest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tritium_engine::chat::common_prefix;
use tritium_engine::forward::{Step, forward_batch};
use tritium_engine::sample::LogSoftmax;
use tritium_engine::{KvType, Logits, Lora, Model, Sampler, Session, TextStream};

use crate::api::Work;

/// Prompt tokens a slot runs per step: long prompts go in chunks so the other slots keep
/// decoding between them.
const PREFILL_CHUNK: usize = 256;

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` or the context.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    /// The prompt's tokens with their log-probabilities (the first has none): `echo` + `logprobs`.
    Prompt(Vec<Option<TokenLogprob>>),
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens taken from the slot's cache instead of run.
        cached_tokens: usize,
    },
    Error(String),
}

pub struct Job {
    pub work: Work,
    pub events: UnboundedSender<Event>,
}

/// Why a request's jobs were not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    /// More prompts than the slots and the queue together could ever hold.
    TooMany,
    ShuttingDown,
}

/// The queue between the HTTP handlers and the engine thread, and the figures metrics read.
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
    /// Jobs that may wait beyond those the free slots take at once.
    capacity: usize,
    slots: usize,
    draining: AtomicBool,
    stop: AtomicBool,
    pub busy_slots: AtomicUsize,
    pub depth: AtomicUsize,
    /// Jobs dropped because their client went away (disconnect, timeout).
    pub cancelled: AtomicUsize,
    /// The most slots ever busy at once.
    pub peak_busy: AtomicUsize,
}

impl Queue {
    pub fn new(capacity: usize, slots: usize) -> Queue {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            capacity,
            slots,
            draining: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            busy_slots: AtomicUsize::new(0),
            depth: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            peak_busy: AtomicUsize::new(0),
        }
    }

    /// Queues a request's jobs, all or none: none when, after the free slots take theirs, more
    /// than `capacity` would wait, or when the server is shutting down.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), Refused> {
        if jobs.len() > self.capacity + self.slots {
            return Err(Refused::TooMany);
        }
        let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: once `stop` has emptied the queue, nothing can be left in it.
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        // Jobs whose client has gone wait for nothing; they hold no place.
        let before = q.len();
        q.retain(|j| !j.events.is_closed());
        self.cancelled.fetch_add(before - q.len(), Ordering::SeqCst);
        let free = self
            .slots
            .saturating_sub(self.busy_slots.load(Ordering::SeqCst));
        if q.len() + jobs.len() > self.capacity + free {
            self.depth.store(q.len(), Ordering::SeqCst);
            return Err(Refused::Full);
        }
        q.extend(jobs);
        self.depth.store(q.len(), Ordering::SeqCst);
        self.wake.notify_one();
        Ok(())
    }

    /// Whether the engine thread has stopped (shutdown, or a failure that ended it).
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Takes no new jobs; the running ones go on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Ends the engine thread: running and waiting jobs get an error.
    pub fn stop(&self) {
        // Under the queue's lock, so a submit either sees the flags or lands before the engine
        // thread empties the queue.
        let _q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        self.drain();
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn is_idle(&self) -> bool {
        self.busy_slots.load(Ordering::SeqCst) == 0 && self.depth.load(Ordering::SeqCst) == 0
    }

    fn pop(&self) -> Option<Job> {
        let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let j = q.pop_front();
        self.depth.store(q.len(), Ordering::SeqCst);
        j
    }

    /// Waits (bounded) for a job or a stop.
    fn wait(&self) {
        let q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() && !self.stop.load(Ordering::SeqCst) {
            let _ = self.wake.wait_timeout(q, Duration::from_millis(200));
        }
    }
}

/// A job in a slot.
struct Active {
    job: Job,
    /// Prompt tokens already in the cache (taken from the slot's cache or run).
    done: usize,
    cached: usize,
    /// Prompt and generated tokens, for the repetition penalty.
    history: Vec<u32>,
    generated: usize,
    /// The token sampled last, run at the next step.
    next: Option<u32>,
    sampler: Sampler,
    text: TextStream,
    prompt_lp: Vec<Option<TokenLogprob>>,
}

struct Slot<'m> {
    sess: Session<'m>,
    /// The tokens the cache holds, from position 0, and the adapter they ran with.
    cached: Vec<u32>,
    cached_lora: Option<usize>,
    active: Option<Active>,
}

/// Runs jobs from `queue` until it is stopped. `loras[i]` is the adapter of `Work::lora == Some(i)`.
/// `ready` hears once every slot's cache is allocated and written.
pub fn run(
    model: &Model,
    loras: &[Lora],
    queue: &Queue,
    parallel: usize,
    ctx: usize,
    kv: KvType,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut slots: Vec<Slot> = Vec::with_capacity(parallel);
    for i in 0..parallel {
        match Session::with_kv(model, ctx, kv) {
            Ok(sess) => slots.push(Slot {
                sess,
                cached: Vec::new(),
                cached_lora: None,
                active: None,
            }),
            Err(e) => {
                queue.stop();
                let _ = ready.send(Err(format!("slot {i} of --parallel {parallel}: {e}")));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    // However this thread ends, the queue says so: submits are refused and `/health` fails,
    // instead of requests waiting for an engine that is gone.
    struct StopOnExit<'q>(&'q Queue);
    impl Drop for StopOnExit<'_> {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let _stop_on_exit = StopOnExit(queue);
    loop {
        if queue.stop.load(Ordering::SeqCst) {
            for s in slots.iter_mut().filter_map(|s| s.active.take()) {
                let _ = s
                    .job
                    .events
                    .send(Event::Error("the server is shutting down".into()));
            }
            while let Some(j) = queue.pop() {
                let _ = j
                    .events
                    .send(Event::Error("the server is shutting down".into()));
            }
            queue.busy_slots.store(0, Ordering::SeqCst);
            return;
        }
        // Jobs whose client has gone free their slots first.
        for s in &mut slots {
            if s.active.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                s.active = None;
                queue.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
        contained(&mut slots, |slots| admit(slots, queue, loras));
        let busy = slots.iter().filter(|s| s.active.is_some()).count();
        queue.busy_slots.store(busy, Ordering::SeqCst);
        queue.peak_busy.fetch_max(busy, Ordering::SeqCst);
        if busy == 0 {
            queue.wait();
            continue;
        }
        contained(&mut slots, step);
    }
}

/// Runs `f` over the slots; if it panics (a bug), the jobs in them get an error and the slots
/// start clean, so one bad request costs its batch, not the server.
fn contained<'m>(slots: &mut [Slot<'m>], f: impl FnOnce(&mut [Slot<'m>])) {
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *slots))).is_err();
    if panicked {
        for s in slots.iter_mut() {
            if let Some(a) = s.active.take() {
                let _ = a.job.events.send(Event::Error(
                    "internal error in the engine; the request was stopped".into(),
                ));
            }
            // Whatever the cache holds now is not known to match `cached`.
            s.cached.clear();
            s.cached_lora = None;
        }
    }
}

/// Fills free slots from the queue, each job into the free slot sharing most of its prompt.
fn admit<'m>(slots: &mut [Slot<'m>], queue: &Queue, loras: &'m [Lora]) {
    while slots.iter().any(|s| s.active.is_none()) {
        let Some(job) = queue.pop() else { return };
        if job.events.is_closed() {
            queue.cancelled.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let w = &job.work;
        // The prompt's log-probabilities need every position's logits, so such a job runs whole;
        // a cache computed with another adapter holds other keys and values.
        let reuse = |s: &Slot| {
            if w.prompt_logprobs || s.cached_lora != w.lora {
                0
            } else {
                common_prefix(&s.cached, &w.prompt).min(w.prompt.len() - 1)
            }
        };
        let slot = slots
            .iter_mut()
            .filter(|s| s.active.is_none())
            .max_by_key(|s| (reuse(s), std::cmp::Reverse(s.cached.len())))
            .expect("a free slot exists");
        let keep = reuse(slot);
        slot.cached.truncate(keep);
        slot.cached_lora = w.lora;
        slot.sess.pos = keep;
        slot.sess.lora = w.lora.map(|i| &loras[i]);
        let text = TextStream::new(&w.stops);
        slot.active = Some(Active {
            done: keep,
            cached: keep,
            history: w.prompt.clone(),
            generated: 0,
            next: None,
            sampler: Sampler::new(w.sampling.clone()),
            text,
            prompt_lp: if w.prompt_logprobs {
                vec![None]
            } else {
                Vec::new()
            },
            job,
        });
    }
}

/// One batched forward over every busy slot, then each slot's sampling and events.
fn step(slots: &mut [Slot]) {
    // What each busy slot runs: the next prompt chunk, or its last sampled token.
    let mut runs: Vec<(usize, Vec<u32>, Logits)> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        let Some(a) = &s.active else { continue };
        let p = &a.job.work.prompt;
        if a.done < p.len() {
            let end = (a.done + PREFILL_CHUNK).min(p.len());
            let which = if a.job.work.prompt_logprobs {
                Logits::All
            } else {
                Logits::Last
            };
            runs.push((i, p[a.done..end].to_vec(), which));
        } else if let Some(t) = a.next {
            runs.push((i, vec![t], Logits::Last));
        }
    }
    let result = {
        let mut by_slot: Vec<Option<&mut Slot>> = slots.iter_mut().map(Some).collect();
        let mut steps: Vec<Step> = runs
            .iter()
            .map(|(i, toks, which)| {
                let s = by_slot[*i].take().expect("one run per slot");
                Step {
                    sess: &mut s.sess,
                    tokens: toks,
                    logits: *which,
                }
            })
            .collect();
        forward_batch(&mut steps)
    };
    if let Err(e) = result {
        // Validation made this unreachable; fail the jobs rather than the server.
        for (i, _, _) in &runs {
            if let Some(a) = slots[*i].active.take() {
                let _ = a.job.events.send(Event::Error(format!("engine: {e}")));
            }
        }
        return;
    }
    for (i, toks, _) in runs {
        let slot = &mut slots[i];
        slot.cached.extend_from_slice(&toks);
        let v = slot.sess.model.cfg.vocab;
        let logits = &slot.sess.logits;
        let a = slot.active.as_mut().expect("busy");
        let w = &a.job.work;
        let prefill = a.done < w.prompt.len();
        if prefill {
            if w.prompt_logprobs {
                // Row r predicts prompt token done + r + 1.
                for (r, row) in logits.chunks_exact(v).enumerate() {
                    let at = a.done + r + 1;
                    if at < w.prompt.len() {
                        a.prompt_lp
                            .push(Some(logprob(row, w.prompt[at], w.top_logprobs)));
                    }
                }
            }
            a.done += toks.len();
            if a.done < w.prompt.len() {
                continue;
            }
            if w.prompt_logprobs {
                let lp = std::mem::take(&mut a.prompt_lp);
                let _ = a.job.events.send(Event::Prompt(lp));
            }
        }
        let last = &logits[logits.len() - v..];
        let finish = if a.generated >= w.max_tokens {
            Some(Finish::Length)
        } else {
            let tok = &slot.sess.model.tokenizer;
            let next = a.sampler.sample(last, &a.history);
            if tok.is_end(next) && !w.ignore_eos {
                // The end token is generated (and counted, with its log-probability) but adds no
                // text: a scorer asking for prompt + one token gets one entry more than the prompt.
                a.generated += 1;
                let _ = a.job.events.send(Event::Token {
                    id: next,
                    text: String::new(),
                    logprob: w.top_logprobs.map(|n| logprob(last, next, Some(n))),
                });
                Some(Finish::Stop)
            } else {
                a.generated += 1;
                a.history.push(next);
                let lp = w.top_logprobs.map(|n| logprob(last, next, Some(n)));
                let (text, stopped) = a.text.push(tok, next);
                let _ = a.job.events.send(Event::Token {
                    id: next,
                    text,
                    logprob: lp,
                });
                a.next = Some(next);
                if stopped {
                    Some(Finish::Stop)
                } else if a.generated >= w.max_tokens || slot.sess.pos >= slot.sess.ctx {
                    Some(Finish::Length)
                } else {
                    None
                }
            }
        };
        if let Some(finish) = finish {
            let rest = a.text.finish(&slot.sess.model.tokenizer);
            if !rest.is_empty() {
                let _ = a.job.events.send(Event::Token {
                    id: u32::MAX,
                    text: rest,
                    logprob: None,
                });
            }
            let _ = a.job.events.send(Event::Done {
                finish,
                prompt_tokens: w.prompt.len(),
                completion_tokens: a.generated,
                cached_tokens: a.cached,
            });
            slot.active = None;
        }
    }
}

/// `log softmax(logits)[id]` and the `top` most likely tokens with theirs, by the evaluator's
/// definition ([`LogSoftmax`]), so a harness scoring through the server gets `tritium eval`'s numbers.
fn logprob(logits: &[f32], id: u32, top: Option<usize>) -> TokenLogprob {
    let l = LogSoftmax::new(logits);
    let n = top.unwrap_or(0);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if best.len() < n || v > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= v);
                best.insert(at, (i as u32, v));
                best.truncate(n);
            }
        }
    }
    TokenLogprob {
        id,
        logprob: l.at(logits, id as usize),
        top: best
            .into_iter()
            .map(|(i, _)| (i, l.at(logits, i as usize)))
            .collect(),
    }
}

/// Starts the engine thread.
pub fn spawn(
    model: Arc<Model>,
    loras: Arc<Vec<Lora>>,
    queue: Arc<Queue>,
    parallel: usize,
    ctx: usize,
    kv: KvType,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready, slots_made) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("tritium-engine".into())
        .spawn(move || run(&model, &loras, &queue, parallel, ctx, kv, ready))
        .map_err(|e| format!("starting the engine thread: {e}"))?;
    // Ready means a request can start at once: the slots' caches (hundreds of MB at 16 slots)
    // are written before `/health` says so, not during the first request.
    match slots_made.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the engine thread ended while making its slots".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    fn job(prompt: Vec<u32>) -> (Job, UnboundedReceiver<Event>) {
        let (events, rx) = unbounded_channel();
        let work = Work {
            prompt,
            sampling: tritium_engine::SamplerConfig::default(),
            max_tokens: 4,
            stops: Vec::new(),
            lora: None,
            prompt_logprobs: false,
            top_logprobs: None,
            ignore_eos: false,
        };
        (Job { work, events }, rx)
    }

    /// `--queue N` counts requests waiting once the slots are taken; a request's prompts go in
    /// together or not at all; a client that left holds no place.
    #[test]
    fn the_queue_holds_what_the_free_slots_do_not() {
        let q = Queue::new(1, 2); // two slots, one place to wait
        let (a, _ra) = job(vec![1]);
        let (b, _rb) = job(vec![1]);
        let (c, rc) = job(vec![1]);
        // Idle: two prompts take the free slots, a third waits.
        q.submit(vec![a, b, c]).unwrap();
        assert_eq!(q.depth.load(Ordering::SeqCst), 3);
        let (d, _rd) = job(vec![1]);
        assert_eq!(q.submit(vec![d]), Err(Refused::Full));
        // More prompts than slots and queue together can never fit.
        let many = (0..4).map(|_| job(vec![1]).0).collect();
        assert_eq!(q.submit(many), Err(Refused::TooMany));
        // The slots take two; one waits; a client that goes away frees its place at once.
        q.pop().unwrap();
        q.pop().unwrap();
        q.busy_slots.store(2, Ordering::SeqCst);
        let (e, re) = job(vec![1]);
        assert_eq!(q.submit(vec![e]), Err(Refused::Full));
        drop(rc); // c's client goes away while c waits
        drop(re);
        let (f, _rf) = job(vec![1]);
        q.submit(vec![f]).unwrap();
        assert_eq!(q.depth.load(Ordering::SeqCst), 1);
        assert_eq!(q.cancelled.load(Ordering::SeqCst), 1);
        q.stop();
        let (g, _rg) = job(vec![1]);
        assert_eq!(q.submit(vec![g]), Err(Refused::ShuttingDown));
        assert!(q.is_stopped());
    }

    /// A panic while running the slots fails their jobs and leaves the slots clean and free.
    #[test]
    fn a_panic_in_a_step_costs_the_batch_not_the_server() {
        let bytes = tritium_engine::synthetic::gguf(&Default::default());
        let rt = tritium_engine::Runtime::new(1);
        let m = Model::from_bytes(std::path::Path::new("t.gguf"), bytes, &rt).unwrap();
        let (j, mut rx) = job(vec![1, 2]);
        let mut slots = vec![Slot {
            sess: Session::new(&m, 16).unwrap(),
            cached: vec![1, 2],
            cached_lora: None,
            active: None,
        }];
        let q = Queue::new(1, 1);
        q.submit(vec![j]).unwrap();
        admit(&mut slots, &q, &[]);
        assert!(slots[0].active.is_some());
        contained(&mut slots, |_| panic!("a bug"));
        assert!(slots[0].active.is_none() && slots[0].cached.is_empty());
        assert!(matches!(rx.try_recv(), Ok(Event::Error(m)) if m.contains("internal error")));
        // Without a panic nothing changes.
        contained(&mut slots, |s| s[0].cached.push(7));
        assert_eq!(slots[0].cached, vec![7]);
    }

    #[test]
    fn logprobs_are_log_softmax_with_the_best_alternatives() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        let lp = logprob(&l, 2, Some(2));
        assert!((lp.logprob - (2.0 - z.ln())).abs() < 1e-12);
        // Ties keep the lower id first, as argmax does.
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((lp.top[0].1 - (3.0 - z.ln())).abs() < 1e-12);
        assert!(logprob(&l, 0, None).top.is_empty());
    }
}
