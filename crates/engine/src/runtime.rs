//! Where an engine runs: its thread team and the instruction set of its ternary, float-dot and
//! attention kernels. A [`Model`] takes one at load and its sessions use it, so two models in one
//! process (a server holding two, a test comparing thread counts) each have their own team. (The
//! auto-vectorized row kernels in `tritium_kernels` pick AVX-512 or not once per process from the
//! CPU, narrowed by `TRITIUM_ISA`; they give the same bits either way.)
//!
//! [`Model`]: crate::Model

use std::sync::Arc;

use crate::kernels::Isa;
use crate::kernels::pool::Pool;

#[derive(Clone)]
pub struct Runtime {
    pub pool: Arc<Pool>,
    pub isa: Isa,
}

impl Runtime {
    /// `threads` threads (0: one per core) and the fastest instruction set this CPU runs. More
    /// threads than the cores this process may use only spin against each other, so the team is
    /// capped there (see [`Runtime::cap`]).
    pub fn new(threads: usize) -> Runtime {
        Runtime {
            pool: Arc::new(Pool::new(Self::cap(threads).0)),
            isa: Isa::detect(),
        }
    }

    /// The team size `new(threads)` builds, and whether `threads` was lowered to get it.
    pub fn cap(threads: usize) -> (usize, bool) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match threads {
            0 => (cores, false),
            t if t > cores => (cores, true),
            t => (t, false),
        }
    }

    /// The same team with the ternary, float-dot and attention kernels narrowed to `isa`
    /// (comparisons, tests).
    pub fn with_isa(self, isa: Isa) -> Runtime {
        Runtime { isa, ..self }
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("threads", &self.threads())
            .field("isa", &self.isa)
            .finish()
    }
}
