//! A small team of threads for the engine's parallel loops (one team per engine runtime; there is
//! no process-wide team). Decoding one token runs ~50 short
//! parallel loops; a general-purpose pool whose workers sleep between them (rayon) pays a futex
//! wake-up and context switches each time (measured: ~400 switches per token). Here workers spin on
//! a generation counter for a while before sleeping, and the caller works too, so a loop costs a
//! few atomic operations when the team is busy.
//!
//! A loop waits only for workers that joined it. On a machine shared with other threads (a
//! server's HTTP threads, its clients) a worker is often descheduled when a loop starts; the
//! caller then runs every task itself and returns, instead of idling until the worker is back
//! only to find nothing left (which made every preemption cost both threads' time).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};

type Task = dyn Fn(usize) + Sync;

struct Job {
    /// The caller's closure with its lifetime erased; see the safety argument in `Pool::run`.
    f: Option<&'static Task>,
    tasks: usize,
}

struct Shared {
    generation: AtomicU64,
    next: AtomicUsize,
    /// Workers inside the current job: joined (under `job`'s lock, while it is open) and not yet
    /// left. The caller closes the job only when none is inside.
    inside: AtomicUsize,
    sleepers: AtomicUsize,
    panicked: AtomicBool,
    /// Set when the `Pool` is dropped: workers leave instead of waiting for more work.
    shutdown: AtomicBool,
    /// Workers not yet left.
    alive: AtomicUsize,
    job: Mutex<Job>,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// One caller at a time (a second caller would overwrite the job).
    run_lock: Mutex<()>,
}

/// Spins before a worker sleeps: long enough to bridge the serial work between two loops of a
/// forward pass (tens of microseconds), short enough not to burn a core when generation stops.
const SPINS: u32 = 1 << 17;

impl Pool {
    /// A team of `threads` threads, the caller's included (0: one per core).
    pub fn new(threads: usize) -> Pool {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            alive: AtomicUsize::new(0),
            job: Mutex::new(Job { f: None, tasks: 0 }),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = threads.max(1) - 1;
        shared.alive.store(workers, SeqCst);
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("tritium-worker-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn a worker thread");
        }
        Pool {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Calls `f(i)` for every `i < tasks`, spread over the team; returns when all are done.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers == 0 || tasks <= 1 {
            (0..tasks).for_each(f);
            return;
        }
        let _one_caller = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: a worker calls the reference only while it is inside the job: it joins under
        // `job`'s lock while `f` is set, and leaves after its last call. This function clears `f`
        // under that lock only once no worker is inside, and returns after that, so no use of
        // `f` outlives the borrow it came from.
        let erased: &'static Task =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        s.next.store(0, SeqCst);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Job {
            f: Some(erased),
            tasks,
        };
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let r = catch_unwind(AssertUnwindSafe(|| drain(s, f, tasks)));
        // Every task is taken; wait for the workers still running one, then close the job.
        loop {
            if s.inside.load(SeqCst) == 0 {
                let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
                if s.inside.load(SeqCst) == 0 {
                    job.f = None;
                    break;
                }
            }
            std::hint::spin_loop();
        }
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a worker thread panicked in a parallel loop");
        }
    }

    /// Splits `out` into chunks of `chunk` and calls `f(chunk index, chunk)` for each, in parallel.
    pub fn for_each_chunk<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let parts: Vec<Mutex<Option<&mut [T]>>> =
            out.chunks_mut(chunk).map(|c| Mutex::new(Some(c))).collect();
        self.run(parts.len(), &|i| {
            let part = parts[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(part) = part {
                f(i, part);
            }
        });
    }

    /// [`Pool::for_each_chunk`] for memory-bound loops over rows (one token's matrix-vector
    /// products): `f(offset, part)` on runs of whole `block`s of `out` (the last may be short),
    /// every block once, on [`Pool::for_each_run`]'s shares.
    pub fn for_each_share<T: Send>(
        &self,
        out: &mut [T],
        block: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let len = out.len();
        let base = RawSlice(out.as_mut_ptr());
        self.for_each_run(len, block, |run| {
            // SAFETY: `out` is borrowed mutably for this whole call, and `for_each_run` hands out
            // every index once, so the parts are disjoint and inside `out`.
            let part = unsafe { std::slice::from_raw_parts_mut(base.at(run.start), run.len()) };
            f(run.start, part);
        });
    }

    /// `f(run)` on runs of whole `block`s of `0..len` (the last may be short), every index once.
    /// Each thread works through a share of its own front to back, claiming a quarter of what is
    /// left of it at a time, so a memory-bound loop's prefetches run on into its next rows; a
    /// thread whose share is done takes the back half of what is left of another's. A thread then
    /// starts a cold stream once or twice a loop instead of once a chunk, and the threads finish
    /// within about a block of each other. A thread that also prefetched the first 4 or 8 KiB of
    /// its share of the next matrix once its own work ran out gained nothing (125m decode,
    /// per-token A/B in one process: within 0.5%).
    pub fn for_each_run(
        &self,
        len: usize,
        block: usize,
        f: impl Fn(std::ops::Range<usize>) + Sync,
    ) {
        let block = block.max(1);
        let blocks = len.div_ceil(block);
        let k = self.threads().min(blocks);
        if k <= 1 {
            if len > 0 {
                f(0..len);
            }
            return;
        }
        let shares: Vec<Share> = (0..k)
            .map(|i| Share::new(i * blocks / k, (i + 1) * blocks / k))
            .collect();
        self.run(k, &|i| {
            while let Some(run) = shares[i].claim().or_else(|| steal(&shares, i)) {
                f(run.start * block..(run.end * block).min(len));
            }
        });
    }

    /// Threads take runs of whole `block`s of rows of every token's output row `outs[t]` (all of
    /// one length), on [`Pool::for_each_run`]'s shares: `f(rows, parts)` gets those rows of each
    /// token's output, `parts[t]`, to write directly (kernels whose lanes are rows). Compute-bound
    /// (a batch of tokens), the shares' point is the end of the loop: the threads finish within
    /// a block of each other, where tasks of an eighth of the rows left one waiting up to that.
    pub fn for_each_row_part(
        &self,
        mut outs: Vec<&mut [f32]>,
        block: usize,
        f: impl Fn(std::ops::Range<usize>, &mut [&mut [f32]]) + Sync,
    ) {
        assert!(block > 0, "a row range holds at least one row");
        let Some(len) = outs.first().map(|o| o.len()) else {
            return;
        };
        assert!(
            outs.iter().all(|o| o.len() == len),
            "every token's output row has one length"
        );
        let bases: Vec<RawSlice<f32>> = outs.iter_mut().map(|o| RawSlice(o.as_mut_ptr())).collect();
        self.for_each_run(len, block, |rows| {
            let mut parts: Vec<&mut [f32]> = bases
                .iter()
                // SAFETY: every output is borrowed mutably (through `outs`) for this whole call,
                // all are `len` long, and `for_each_run` hands out each row once, so the parts
                // of one row range are disjoint from every other thread's and inside the rows.
                .map(|b| unsafe { std::slice::from_raw_parts_mut(b.at(rows.start), rows.len()) })
                .collect();
            f(rows, &mut parts);
        });
    }

    /// [`Pool::for_each_row_part`] for kernels that sum a row's dot products lane by lane:
    /// `f(rows, buf)` fills `buf[row·tokens + token]` (a row's tokens side by side) for those
    /// rows, and the thread copies it into each token's row itself, so no serial transpose
    /// follows the parallel loop. Runs of whole `chunk`s on [`Pool::for_each_row_part`]'s
    /// shares: one token's a whole run at a time, several tokens' `chunk` rows a call of `f`.
    pub fn for_each_row_range(
        &self,
        outs: Vec<&mut [f32]>,
        chunk: usize,
        f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
    ) {
        let nt = outs.len();
        self.for_each_row_part(outs, chunk, |rows, parts| {
            // One token: `[row][token]` is its output row itself, the whole run written in place
            // (a scratch buffer and copy a task were 2–3% of 125m decode, in the LM head).
            if let [part] = parts {
                return f(rows, part);
            }
            // A run is up to a quarter of a share: `chunk` rows at a time, so the scratch stays
            // `chunk` rows of every token however many tokens there are (a prompt's logits).
            let mut buf = Vec::with_capacity(chunk.min(rows.len()) * nt);
            for r0 in rows.clone().step_by(chunk) {
                let sub = r0..(r0 + chunk).min(rows.end);
                buf.clear();
                buf.resize(sub.len() * nt, 0f32);
                f(sub.clone(), &mut buf);
                for (t, part) in parts.iter_mut().enumerate() {
                    let part = &mut part[sub.start - rows.start..][..sub.len()];
                    for (i, o) in part.iter_mut().enumerate() {
                        *o = buf[i * nt + t];
                    }
                }
            }
        });
    }
}

/// The blocks `lo..hi` of one thread's share in [`Pool::for_each_run`], packed in one word so
/// that its owner's claims (which raise `lo`) and a thief's steals (which lower `hi`, never to
/// `lo` or below) are single compare-and-swaps. A block leaves the range in exactly one of them,
/// so each is handed out once. A share only gets new blocks once it is empty, when its owner
/// stores the half it stole; the value it replaces cannot come back (its `lo` was claimed), so a
/// thief's stale compare-and-swap fails. One cache line each: side by side, every claim of one
/// thread took the line from the other (2% of 125m decode samples in `claim`).
#[repr(align(64))]
struct Share(AtomicU64);

impl Share {
    fn new(lo: usize, hi: usize) -> Share {
        Share(AtomicU64::new(Self::pack(lo, hi)))
    }

    fn pack(lo: usize, hi: usize) -> u64 {
        ((lo as u64) << 32) | hi as u64
    }

    fn unpack(v: u64) -> (usize, usize) {
        ((v >> 32) as usize, (v & 0xffff_ffff) as usize)
    }

    /// A quarter of what is left (at least one block), from the front.
    fn claim(&self) -> Option<std::ops::Range<usize>> {
        let mut v = self.0.load(SeqCst);
        loop {
            let (lo, hi) = Self::unpack(v);
            if lo >= hi {
                return None;
            }
            let n = ((hi - lo) / 4).max(1);
            match self
                .0
                .compare_exchange_weak(v, Self::pack(lo + n, hi), SeqCst, SeqCst)
            {
                Ok(_) => return Some(lo..lo + n),
                Err(now) => v = now,
            }
        }
    }
}

/// Thread `me`'s share is empty: moves the back half of the fullest other share into it and
/// claims from it, or returns `None` when no other share has two blocks left.
fn steal(shares: &[Share], me: usize) -> Option<std::ops::Range<usize>> {
    loop {
        let (victim, v) = shares
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != me)
            .map(|(j, s)| (j, s.0.load(SeqCst)))
            .max_by_key(|&(_, v)| {
                let (lo, hi) = Share::unpack(v);
                hi.saturating_sub(lo)
            })?;
        let (lo, hi) = Share::unpack(v);
        if hi.saturating_sub(lo) < 2 {
            return None;
        }
        let mid = lo + (hi - lo).div_ceil(2);
        if shares[victim]
            .0
            .compare_exchange(v, Share::pack(lo, mid), SeqCst, SeqCst)
            .is_ok()
        {
            shares[me].0.store(Share::pack(mid, hi), SeqCst);
            return shares[me].claim();
        }
    }
}

/// An output's start, shared by the threads of one [`Pool::for_each_run`] loop.
struct RawSlice<T>(*mut T);

// SAFETY: the threads only make disjoint parts of the slice out of it (see its users),
// and `T: Send` moves each part's elements to one thread.
unsafe impl<T: Send> Sync for RawSlice<T> {}

impl<T> RawSlice<T> {
    /// # Safety
    /// `i` lies inside (or at the end of) the slice this came from.
    unsafe fn at(&self, i: usize) -> *mut T {
        // SAFETY: forwarded contract.
        unsafe { self.0.add(i) }
    }
}

fn drain(s: &Shared, f: &(dyn Fn(usize) + Sync), tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, SeqCst);
        if i >= tasks {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        while s.generation.load(SeqCst) == seen {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.generation.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
            }
        }
        if s.shutdown.load(SeqCst) {
            s.alive.fetch_sub(1, SeqCst);
            return;
        }
        seen = s.generation.load(SeqCst);
        // Join the open job, if any: a worker that wakes after the caller has finished alone
        // finds it closed and goes back to waiting.
        let joined = {
            let job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            job.f.map(|f| {
                s.inside.fetch_add(1, SeqCst);
                (f, job.tasks)
            })
        };
        if let Some((f, tasks)) = joined {
            if catch_unwind(AssertUnwindSafe(|| drain(s, f, tasks))).is_err() {
                s.panicked.store(true, SeqCst);
            }
            s.inside.fetch_sub(1, SeqCst);
        }
    }
}

impl Drop for Pool {
    /// Wakes every worker to leave; a worker still spinning sees the new generation at once.
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_rounds() {
        let pool = Pool::new(3);
        for round in 0..2000 {
            let n = round % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
        }
        let mut v = vec![0u32; 1000];
        pool.for_each_chunk(&mut v, 64, |c, part| {
            part.iter_mut().for_each(|x| *x = c as u32)
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == (i / 64) as u32));
    }

    /// More workers than cores, so workers are often descheduled when a loop starts and join
    /// late: every task still runs once, and none after its loop has returned.
    #[test]
    fn late_workers_never_run_a_finished_loop() {
        let pool = Pool::new(6);
        let current = AtomicUsize::new(usize::MAX);
        for round in 0..3000 {
            current.store(round, SeqCst);
            let n = 1 + round % 9;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                let t = std::time::Instant::now();
                while t.elapsed().as_micros() < 3 {
                    std::hint::spin_loop();
                }
                hits[i].fetch_add(1, SeqCst);
                assert_eq!(current.load(SeqCst), round, "a task of a finished loop ran");
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
            current.store(usize::MAX, SeqCst);
        }
    }

    /// Every element once, whatever the team size, length and block; parts are whole blocks
    /// (but the last), and with slow parts the threads steal from each other.
    #[test]
    fn shares_cover_every_block_once() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            for len in [0, 1, 7, 16, 33, 100, 1000] {
                for block in [1, 3, 16] {
                    let mut v = vec![0u32; len];
                    pool.for_each_share(&mut v, block, |off, part| {
                        assert!(off % block == 0, "a part starts on a block");
                        assert!(part.len() % block == 0 || off + part.len() == len);
                        if off % 7 == 0 {
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                        for (i, x) in part.iter_mut().enumerate() {
                            *x += (off + i) as u32 + 1;
                        }
                    });
                    assert!(
                        v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1),
                        "{threads} threads, {len} elements, blocks of {block}"
                    );
                }
            }
        }
    }

    #[test]
    fn row_ranges_land_in_every_tokens_row() {
        let pool = Pool::new(2);
        let mut one = vec![-1f32; 37];
        pool.for_each_row_range(vec![&mut one], 8, |r, buf| {
            assert_eq!(buf.len(), r.len());
            for (o, row) in buf.iter_mut().zip(r) {
                *o = row as f32;
            }
        });
        assert!(one.iter().enumerate().all(|(r, &x)| x == r as f32));
        let (nt, rows) = (3, 37);
        let mut out = vec![-1f32; nt * rows];
        pool.for_each_row_range(out.chunks_exact_mut(rows).collect(), 8, |r, buf| {
            for (i, row) in r.enumerate() {
                for t in 0..nt {
                    buf[i * nt + t] = (row * 10 + t) as f32;
                }
            }
        });
        for t in 0..nt {
            for r in 0..rows {
                assert_eq!(out[t * rows + r], (r * 10 + t) as f32);
            }
        }
    }

    /// Several tokens' rows on shares: each row of each token once, runs of whole blocks (but
    /// the last), stolen runs included; row ranges hand `f` at most `chunk` rows at a time
    /// however long the run, with a scratch of those rows for every token.
    #[test]
    fn row_parts_cover_every_row_of_every_token_once() {
        let nt = 3;
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            for rows in [1, 7, 37, 400] {
                for block in [1, 8, 32] {
                    let mut out = vec![0f32; nt * rows];
                    pool.for_each_row_part(
                        out.chunks_exact_mut(rows).collect(),
                        block,
                        |r, parts| {
                            assert!(r.start % block == 0, "a run starts on a block");
                            assert!(r.len() % block == 0 || r.end == rows);
                            assert_eq!(parts.len(), nt);
                            if r.start % 3 == 0 {
                                std::thread::sleep(std::time::Duration::from_micros(50));
                            }
                            for (t, part) in parts.iter_mut().enumerate() {
                                assert_eq!(part.len(), r.len());
                                for (o, row) in part.iter_mut().zip(r.clone()) {
                                    *o += (row * 10 + t) as f32 + 1.0;
                                }
                            }
                        },
                    );
                    let mut ranged = vec![0f32; nt * rows];
                    pool.for_each_row_range(
                        ranged.chunks_exact_mut(rows).collect(),
                        block,
                        |r, buf| {
                            assert!(r.len() <= block && buf.len() == r.len() * nt);
                            assert!(buf.iter().all(|&x| x == 0.0), "the scratch starts zeroed");
                            for (i, row) in r.enumerate() {
                                for t in 0..nt {
                                    buf[i * nt + t] = (row * 10 + t) as f32 + 1.0;
                                }
                            }
                        },
                    );
                    for t in 0..nt {
                        for r in 0..rows {
                            let want = (r * 10 + t) as f32 + 1.0;
                            let at = format!("{threads} threads, {rows} rows, blocks of {block}");
                            assert_eq!(out[t * rows + r], want, "row parts: {at}");
                            assert_eq!(ranged[t * rows + r], want, "row ranges: {at}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = Pool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(300)); // past the spin phase
        let count = AtomicUsize::new(0);
        pool.run(100, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 100);
    }

    /// Two teams of different sizes work side by side, and a dropped team's workers leave.
    #[test]
    fn teams_are_independent() {
        let (a, b) = (Pool::new(1), Pool::new(3));
        assert_eq!((a.threads(), b.threads()), (1, 3));
        let count = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            sc.spawn(|| a.run(500, &|_| _ = count.fetch_add(1, SeqCst)));
            sc.spawn(|| b.run(500, &|_| _ = count.fetch_add(1, SeqCst)));
        });
        assert_eq!(count.load(SeqCst), 1000);
        let shared = b.shared.clone();
        assert_eq!(shared.alive.load(SeqCst), 2);
        std::thread::sleep(std::time::Duration::from_millis(300)); // some asleep, past the spins
        drop(b);
        for _ in 0..500 {
            if shared.alive.load(SeqCst) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            shared.alive.load(SeqCst),
            0,
            "the dropped team's workers left"
        );
    }
}
