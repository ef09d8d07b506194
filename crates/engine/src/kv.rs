//! The KV cache's storage: keys blocked per head (see [`kernels::KEY_BLOCK`]), values
//! position-major, in f32 (the default: exactly what training's attention saw) or f16 (as
//! llama.cpp caches by default: half the bytes a decode step reads per position, which is what
//! attention costs once several sequences' caches outgrow the L3 together).

use std::fmt;
use std::str::FromStr;

use half::f16;

use crate::kernels::{self, Aligned, KvElem};

/// What a session's KV cache holds keys and values as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    /// Bytes per cached key or value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

impl FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<KvType, String> {
        match s {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("`{s}`: the KV cache type is f32 or f16")),
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        })
    }
}

/// One type's cache for all layers: `k` is `[L, KVH, ctx/KEY_BLOCK, hd, KEY_BLOCK]`, `v` is
/// `[L, KVH, ctx, hd]`.
pub struct Store<T> {
    pub k: Aligned<T>,
    pub v: Aligned<T>,
}

impl<T: KvElem> Store<T> {
    fn new(keys: usize, values: usize) -> Store<T> {
        Store {
            k: committed(keys),
            v: committed(values),
        }
    }

    /// Writes position `pos` of head `head` (layer-major: layer · KV heads + KV head), each
    /// head's share `ctx` positions long.
    pub fn put(&mut self, head: usize, ctx: usize, hd: usize, pos: usize, k: &[f32], v: &[f32]) {
        let per_head = kernels::key_len(hd, ctx);
        put_head(
            &mut self.k[head * per_head..(head + 1) * per_head],
            &mut self.v[head * ctx * hd..(head + 1) * ctx * hd],
            hd,
            pos,
            k,
            v,
        );
    }
}

/// Writes position `pos`'s key `k` into one head's blocked `keys` and its value `v` into the
/// head's position-major `values`, each rounded to `T` once.
pub fn put_head<T: KvElem>(
    keys: &mut [T],
    values: &mut [T],
    hd: usize,
    pos: usize,
    k: &[f32],
    v: &[f32],
) {
    for (j, &x) in k.iter().enumerate() {
        keys[kernels::key_index(hd, pos, j)] = T::from_f32(x);
    }
    for (o, &x) in values[pos * hd..(pos + 1) * hd].iter_mut().zip(v) {
        *o = T::from_f32(x);
    }
}

/// A zeroed buffer whose pages are written now: a zeroed allocation is otherwise mapped lazily,
/// and a server's slots would take their page faults (and the kernel's zeroing) mid-generation,
/// or run out of memory then instead of at start.
fn committed<T: KvElem>(n: usize) -> Aligned<T> {
    // Through black_box, so the allocation is not turned back into a lazily zeroed one.
    Aligned::filled(n, std::hint::black_box(T::ZERO))
}

/// A session's cache in the type it was opened with.
pub enum Cache {
    F32(Store<f32>),
    F16(Store<f16>),
}

/// Elements of the keys and of the values for `ctx` positions of `layers × kv_heads` heads of
/// `hd` dimensions (the keys in whole blocks).
pub fn lens(layers: usize, kv_heads: usize, hd: usize, ctx: usize) -> (usize, usize) {
    (
        layers * kv_heads * kernels::key_len(hd, ctx),
        layers * kv_heads * ctx * hd,
    )
}

impl Cache {
    /// Room for `ctx` positions of `layers × kv_heads` heads of `hd` dimensions.
    pub fn new(kind: KvType, layers: usize, kv_heads: usize, hd: usize, ctx: usize) -> Cache {
        let (keys, values) = lens(layers, kv_heads, hd, ctx);
        match kind {
            KvType::F32 => Cache::F32(Store::new(keys, values)),
            KvType::F16 => Cache::F16(Store::new(keys, values)),
        }
    }

    pub fn kind(&self) -> KvType {
        match self {
            Cache::F32(_) => KvType::F32,
            Cache::F16(_) => KvType::F16,
        }
    }
}

/// The element types a [`Cache`] can hold, and how to find a cache's store of that type (for
/// code generic over it, such as a batch whose sessions share one type).
pub trait CacheElem: KvElem {
    fn store_mut(c: &mut Cache) -> Option<&mut Store<Self>>;
}

impl CacheElem for f32 {
    fn store_mut(c: &mut Cache) -> Option<&mut Store<f32>> {
        match c {
            Cache::F32(s) => Some(s),
            Cache::F16(_) => None,
        }
    }
}

impl CacheElem for f16 {
    fn store_mut(c: &mut Cache) -> Option<&mut Store<f16>> {
        match c {
            Cache::F16(s) => Some(s),
            Cache::F32(_) => None,
        }
    }
}
