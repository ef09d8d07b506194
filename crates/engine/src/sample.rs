//! Choosing the next token from logits, in llama.cpp's default order: repetition penalty →
//! top-k → top-p → min-p → temperature → draw. Top-p and min-p cut on the probabilities at
//! temperature 1, as llama.cpp's do (its temperature comes after them), so the temperature
//! shapes the draw among the survivors but not which survive. Temperature 0 is greedy
//! (argmax). A NaN logit is never chosen.

/// Sampling settings (llama.cpp's names and defaults where it has them).
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// A sampling setting, spelled as `tritium run`'s flag or as the server's JSON field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    Temperature,
    TopP,
    MinP,
    RepeatPenalty,
}

impl Knob {
    pub fn flag(self) -> &'static str {
        match self {
            Knob::Temperature => "--temp",
            Knob::TopP => "--top-p",
            Knob::MinP => "--min-p",
            Knob::RepeatPenalty => "--repeat-penalty",
        }
    }

    pub fn field(self) -> &'static str {
        match self {
            Knob::Temperature => "temperature",
            Knob::TopP => "top_p",
            Knob::MinP => "min_p",
            Knob::RepeatPenalty => "repeat_penalty",
        }
    }
}

/// A setting out of its range: which, its value and what it must be.
#[derive(Debug, Clone, Copy)]
pub struct BadKnob {
    pub knob: Knob,
    pub value: f32,
    pub want: &'static str,
}

impl SamplerConfig {
    /// Checks every knob (the one home of their ranges, for the CLI and the server alike).
    pub fn check(&self) -> Result<(), BadKnob> {
        let bad = |knob, value, want| Err(BadKnob { knob, value, want });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                Knob::Temperature,
                self.temperature,
                "a finite number ≥ 0 (0 is greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(Knob::TopP, self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(Knob::MinP, self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                Knob::RepeatPenalty,
                self.repeat_penalty,
                "a finite number > 0 (1 is off)",
            );
        }
        Ok(())
    }

    /// [`Self::check`], naming the knob by its `tritium run` flag.
    pub fn validate(&self) -> Result<(), String> {
        self.check()
            .map_err(|b| format!("{} {}: must be {}", b.knob.flag(), b.value, b.want))
    }
}

pub struct Sampler {
    pub cfg: SamplerConfig,
    state: u64,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let state = cfg.seed ^ 0x9E37_79B9_7F4A_7C15;
        Sampler { cfg, state }
    }

    /// splitmix64 → a uniform f64 in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token given `logits` and the tokens so far (`history`, for the penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.cfg;
        if c.temperature <= 0.0 && c.repeat_penalty == 1.0 {
            // Plain greedy: the first largest logit, as `argmax` picks it, without the copy.
            return crate::kernels::rows::argmax(logits) as u32;
        }
        let mut l: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, if v.is_nan() { f32::NEG_INFINITY } else { v }))
            .collect();
        if c.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if seen.insert(t)
                    && let Some(e) = l.get_mut(t as usize)
                {
                    e.1 = if e.1 > 0.0 {
                        e.1 / c.repeat_penalty
                    } else {
                        e.1 * c.repeat_penalty
                    };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(&l);
        }
        // Sorted descending (NaN logits were made −∞ above).
        l.sort_by(|a, b| b.1.total_cmp(&a.1));
        if c.top_k > 0 && c.top_k < l.len() {
            l.truncate(c.top_k);
        }
        let mx = l[0].1;
        if mx.is_infinite() {
            return l[0].0; // a certain token, or nothing to choose between
        }
        // Probabilities at temperature 1, for the cuts.
        let mut p: Vec<f64> = l.iter().map(|(_, v)| ((v - mx) as f64).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= z);
        let mut keep = p.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, v) in p.iter().enumerate() {
                cum += v;
                if cum >= c.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = p[0] * c.min_p as f64;
            keep = keep.min(p.iter().take_while(|&&v| v >= floor).count().max(1));
        }
        // The draw, among the survivors, at the temperature.
        let w: Vec<f64> = l[..keep]
            .iter()
            .map(|(_, v)| (((v - mx) / c.temperature) as f64).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut r = self.uniform() * total;
        for (i, wi) in w.iter().enumerate() {
            r -= wi;
            if r < 0.0 {
                return l[i].0;
            }
        }
        l[keep - 1].0
    }
}

/// `log_softmax(row)`, in f64: `row[i] − max − ln Σ_j exp(row[j] − max)`. The one definition the
/// evaluator's scores and the server's log-probabilities share, so both give the same numbers.
pub struct LogSoftmax {
    max: f64,
    log_z: f64,
    best: usize,
}

impl LogSoftmax {
    pub fn new(row: &[f32]) -> LogSoftmax {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = i;
            }
        }
        let max = row[best] as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        LogSoftmax {
            max,
            log_z: z.ln(),
            best,
        }
    }

    /// The log-probability of entry `i` of the row this was made from.
    pub fn at(&self, row: &[f32], i: usize) -> f64 {
        row[i] as f64 - self.max - self.log_z
    }

    /// The first largest entry.
    pub fn argmax(&self) -> usize {
        self.best
    }
}

/// The index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(l: &[(u32, f32)]) -> u32 {
    // Starting from the first number, a NaN never wins (comparisons with it are false).
    let mut best = l.iter().position(|e| !e.1.is_nan()).unwrap_or(0);
    for (i, e) in l.iter().enumerate().skip(best + 1) {
        if e.1 > l[best].1 {
            best = i;
        }
    }
    l[best].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f32) -> SamplerConfig {
        SamplerConfig {
            temperature: t,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 7,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(cfg(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        // Token 1 (logit 3.0) was seen: 3.0 / 2 = 1.5 < 2.0, so greedy moves to token 2.
        let mut c = cfg(0.0);
        c.repeat_penalty = 2.0;
        let mut s = Sampler::new(c);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]), 2);
        // Negative logits get more negative: token 0 at −1 → −2 loses to token 1 at −1.5.
        assert_eq!(s.sample(&[-1.0, -1.5, -9.0], &[0]), 1);
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // p ∝ e^{0}, e^{ln 3} → 1/4, 3/4 at temperature 1.
        let mut s = Sampler::new(cfg(1.0));
        let n = 40_000;
        let ones = (0..n)
            .filter(|_| s.sample(&[0.0, 3f32.ln()], &[]) == 1)
            .count();
        let f = ones as f64 / n as f64;
        assert!((f - 0.75).abs() < 0.01, "{f}");
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let logits = [0.0, 1.0, 2.0, 3.0];
        // top-k 1 is greedy whatever the temperature.
        let mut c = cfg(5.0);
        c.top_k = 1;
        let mut s = Sampler::new(c);
        assert!((0..200).all(|_| s.sample(&logits, &[]) == 3));
        // Probabilities at T=1: .644 .237 .087 .032. top-p 0.85 keeps {3, 2}; never 1 or 0.
        let mut c = cfg(1.0);
        c.top_p = 0.85;
        let mut s = Sampler::new(c);
        let got: std::collections::HashSet<u32> =
            (0..2000).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(got, [2, 3].into_iter().collect());
        // min-p 0.2: floor .129 keeps {3, 2}; min-p 0.5 keeps only 3.
        for (mp, want) in [(0.2, vec![2, 3]), (0.5, vec![3])] {
            let mut c = cfg(1.0);
            c.min_p = mp;
            let mut s = Sampler::new(c);
            let got: std::collections::BTreeSet<u32> =
                (0..2000).map(|_| s.sample(&logits, &[])).collect();
            assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
        }
    }

    /// llama.cpp's order: the cuts see temperature-1 probabilities. Logits [2.9, 0]: at T=1
    /// p0 = 0.948 < top-p 0.95, so both survive, and min-p 0.05 keeps token 1 too (0 ≥ 2.9 +
    /// ln 0.05 = −0.1); scaling by T = 0.8 first (p0 = 0.974) would have cut token 1.
    #[test]
    fn top_p_and_min_p_cut_before_the_temperature() {
        let mut c = cfg(0.8);
        c.top_p = 0.95;
        c.min_p = 0.05;
        let mut s = Sampler::new(c);
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&[2.9, 0.0], &[]) == 1).count();
        // Drawn at T = 0.8 among both: p1 = 1 / (1 + e^(2.9/0.8)) = 0.0259.
        let f = ones as f64 / n as f64;
        assert!((f - 0.0259).abs() < 0.005, "{f}");
    }

    #[test]
    fn nan_logits_are_never_chosen() {
        let logits = [f32::NAN, 1.0, f32::NAN, 0.5];
        assert_eq!(Sampler::new(cfg(0.0)).sample(&logits, &[]), 1);
        let mut c = cfg(0.0);
        c.repeat_penalty = 1.1;
        assert_eq!(Sampler::new(c).sample(&logits, &[]), 1);
        let mut s = Sampler::new(cfg(1.0));
        assert!((0..500).all(|_| matches!(s.sample(&logits, &[]), 1 | 3)));
        // A +∞ logit is certain.
        let mut s = Sampler::new(cfg(1.0));
        assert_eq!(s.sample(&[0.0, f32::INFINITY, 1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut a = Sampler::new(cfg(1.0));
        let mut b = Sampler::new(cfg(1.0));
        let da: Vec<u32> = (0..100).map(|_| a.sample(&logits, &[])).collect();
        let db: Vec<u32> = (0..100).map(|_| b.sample(&logits, &[])).collect();
        assert_eq!(da, db);
    }
}
