//! Loading a `bitnet` GGUF: memory-map the file, check every hyperparameter and every tensor's
//! type and shape against the architecture before reading any weight, then pack the ternary
//! projections into the kernels' layout. The embedding (the largest tensor, also the LM head) is
//! read into memory of its own (`copy_rows`), so the map is dropped once the model is built.

use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::Mmap;
use tritium_gguf::hparams::read as read_config;
pub use tritium_gguf::hparams::{Act, Hparams as Config};
use tritium_gguf::names::{self, BlockNorm, Projection};
use tritium_gguf::{GgmlType, Gguf, TensorInfo, Value};

use crate::Error;
use crate::kernels::{self, Aligned, FloatRows};
use crate::matrix::TernaryMatrix;
use crate::runtime::Runtime;
use crate::tokenizer::Tokenizer;

// Legend: D d_model, F d_ff, KV kv_dim, V vocab.
pub struct Layer {
    pub attn_norm: Vec<f32>, // [D]
    pub wqkv: TernaryMatrix, // [D + 2·KV, D]: Q, K and V stacked
    pub attn_sub_norm: Vec<f32>,
    pub wo: TernaryMatrix, // [D, D]
    pub ffn_norm: Vec<f32>,
    pub wgu: TernaryMatrix,     // [2F, D]: gate then up
    pub ffn_sub_norm: Vec<f32>, // [F]
    pub wdown: TernaryMatrix,   // [D, F]
    /// The optional `blk.N.*.scale` tensors, by [`Projection`] (already folded into the matrices;
    /// kept because llama.cpp scales some adapter branches by them too).
    pub scales: [Option<f32>; 7],
}

/// The file's bytes: memory-mapped (the normal case) or owned (tests, fuzzing).
enum Bytes {
    Map(Mmap),
    /// Held as u64 words so tensor data keeps the alignment the file promises.
    Owned(Vec<u64>, usize),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v, n) => &bytemuck::cast_slice(v)[..*n],
        }
    }
}

/// Float rows of the embedding / LM head, in memory of our own and in the kernels' grouped layout
/// ([`kernels::float_index`]): F16 and F32 copied out of the file ([`copy_rows`]), others (Q8_0)
/// dequantized.
enum Rows {
    F16(Aligned<u16>),
    F32(Aligned<f32>),
    Dequantized(Vec<f32>),
}

impl Rows {
    fn view(&self) -> FloatRows<'_> {
        match self {
            Rows::F16(v) => FloatRows::F16(v),
            Rows::F32(v) => FloatRows::F32(v),
            Rows::Dequantized(v) => FloatRows::F32(v),
        }
    }
}

/// An F16 or F32 tensor's rows, read out of the file rather than used in place through the map:
/// decode read through the map ran up to a third slower on some files, depending on whether the
/// kernel's page cache held the file in 2 MiB pages or 4 KiB ones (a 2B4T-shaped file's head: 60
/// against 48 ms a token on one thread). Read with `pread`, not through the map, so that the
/// file's pages are not counted in this process's memory beside the copy.
fn copy_rows(path: &Path, bytes: &Bytes, t: &TensorInfo) -> Result<Rows, Error> {
    let fill = |dst: &mut [u8]| -> Result<(), Error> {
        match bytes {
            #[cfg(unix)]
            Bytes::Map(_) => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                file.read_exact_at(dst, t.offset as u64)
                    .map_err(|e| Error::io(path, e))
            }
            _ => {
                dst.copy_from_slice(&bytes[t.offset..t.offset + t.nbytes]);
                Ok(())
            }
        }
    };
    // Read straight into a buffer of the grouped size (the last group padded with zero rows),
    // then grouped in place: no second copy of the head.
    let d = t.dims[0] as usize;
    let len = kernels::float_rows_len(t.n_elements() / d.max(1), d);
    Ok(if t.ty == GgmlType::F16 {
        let mut rows = Aligned::filled(len, 0u16);
        fill(bytemuck::cast_slice_mut(&mut rows[..t.nbytes / 2]))?;
        kernels::group_rows(&mut rows, d);
        Rows::F16(rows)
    } else {
        let mut rows = Aligned::filled(len, 0f32);
        fill(bytemuck::cast_slice_mut(&mut rows[..t.nbytes / 4]))?;
        kernels::group_rows(&mut rows, d);
        Rows::F32(rows)
    })
}

/// A Q8_0 (or other block-quantized) embedding as f32 rows in the kernels' layout.
fn dequantized_rows(g: &Gguf, t: &TensorInfo) -> Rows {
    Rows::Dequantized(kernels::grouped(g.dequantize(t), t.dims[0] as usize))
}

pub struct Model {
    pub path: PathBuf,
    pub cfg: Config,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    embd: Rows,
    head: Option<Rows>,
    pub tokenizer: Tokenizer,
    pub weight_type: GgmlType,
    pub file_bytes: usize,
    pub packed_bytes: usize,
    pub load_seconds: f64,
    pub metadata: Vec<(String, Value)>,
    /// The threads and instruction set this model's sessions run on.
    pub rt: Runtime,
}

/// Maps a GGUF file read-only. A directory is named as such (mapping one fails with ENODEV, "No
/// such device", which misleads).
pub fn map_file(path: &Path) -> Result<Mmap, Error> {
    if path.is_dir() {
        return Err(Error::invalid(path)(
            "is a directory, not a GGUF file (a checkpoint? `tritium export` writes one)".into(),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and private; tritium never writes a GGUF it is running. A
    // file truncated by another process while mapped is outside what any mmap reader can
    // defend against (llama.cpp shares the assumption).
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

impl Model {
    pub fn load(path: &Path, rt: &Runtime) -> Result<Model, Error> {
        Self::from_bytes_inner(path, Bytes::Map(map_file(path)?), rt)
    }

    /// A model from bytes in memory (`name` is used in error messages).
    pub fn from_bytes(name: &Path, bytes: Vec<u8>, rt: &Runtime) -> Result<Model, Error> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        Self::from_bytes_inner(name, Bytes::Owned(words, bytes.len()), rt)
    }

    /// Everything is packed or copied out of `map`, which is dropped once the model is built.
    fn from_bytes_inner(path: &Path, map: Bytes, rt: &Runtime) -> Result<Model, Error> {
        let start = Instant::now();
        let g = Gguf::parse(&map).map_err(|e| Error::gguf(path, e))?;
        let bad = Error::invalid(path);
        let cfg = read_config(&g).map_err(bad)?;
        let tokenizer =
            Tokenizer::from_gguf(&g, cfg.vocab).map_err(|m| bad(format!("tokenizer: {m}")))?;
        let w = Weights { g: &g };
        let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab);
        let embd_t = w
            .tensor(
                names::TOKEN_EMBD,
                &[d, v],
                &[GgmlType::F16, GgmlType::F32, GgmlType::Q8_0],
            )
            .map_err(bad)?;
        let head_t = match g.tensor(names::OUTPUT) {
            None => None,
            Some(_) => Some(
                w.tensor(
                    names::OUTPUT,
                    &[d, v],
                    &[GgmlType::F16, GgmlType::F32, GgmlType::Q8_0],
                )
                .map_err(bad)?,
            ),
        };
        let output_norm = w.vector(names::OUTPUT_NORM, d).map_err(bad)?;
        // Validate every tensor of every layer before packing anything.
        let mut weight_type = None;
        for n in 0..cfg.n_layers {
            for p in Projection::ALL {
                let (cols, rows) = cfg.projection_shape(p);
                let t = w.ternary(n, p, cols, rows).map_err(bad)?;
                match weight_type {
                    None => weight_type = Some(t.ty),
                    Some(ty) if ty != t.ty => weight_type = Some(GgmlType::F32), // mixed: reported only
                    _ => {}
                }
            }
        }
        // The many-token layout (prompts, batches) only where its kernel runs (it costs a second
        // copy of the weights).
        let prompts = crate::kernels::panels::preferred(rt.isa);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for n in 0..cfg.n_layers {
            let mut scales = [None; 7];
            for p in Projection::ALL {
                scales[p.index()] = w.scale(n, p).map_err(bad)?;
            }
            let p = |p: Projection| {
                let (cols, rows) = cfg.projection_shape(p);
                let extra = scales[p.index()].unwrap_or(1.0);
                w.pack(n, p, cols, rows, extra).map_err(bad)
            };
            let norm = |which: BlockNorm, len: usize| w.vector(&which.weight(n), len).map_err(bad);
            use Projection::*;
            layers.push(Layer {
                attn_norm: norm(BlockNorm::Attn, d)?,
                wqkv: TernaryMatrix::stack(vec![p(Q)?, p(K)?, p(V)?]).with_panels_if(prompts),
                attn_sub_norm: norm(BlockNorm::AttnSub, d)?,
                wo: p(O)?.with_panels_if(prompts),
                ffn_norm: norm(BlockNorm::Ffn, d)?,
                wgu: TernaryMatrix::stack(vec![p(Gate)?, p(Up)?]).with_panels_if(prompts),
                ffn_sub_norm: norm(BlockNorm::FfnSub, f)?,
                wdown: p(Down)?.with_panels_if(prompts),
                scales,
            });
        }
        let rows = |t: &TensorInfo| match t.ty {
            GgmlType::F16 | GgmlType::F32 => copy_rows(path, &map, t),
            _ => Ok(dequantized_rows(&g, t)),
        };
        let embd = rows(embd_t)?;
        let head = head_t.map(rows).transpose()?;
        let packed_bytes = layers
            .iter()
            .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.wgu.bytes() + l.wdown.bytes())
            .sum();
        let metadata = g.metadata.clone();
        drop(g);
        let model = Model {
            path: path.to_path_buf(),
            cfg,
            layers,
            output_norm,
            embd,
            head,
            tokenizer,
            weight_type: weight_type.unwrap_or(GgmlType::Tq2_0),
            file_bytes: map.len(),
            packed_bytes,
            load_seconds: 0.0,
            metadata,
            rt: rt.clone(),
        };
        Ok(Model {
            load_seconds: start.elapsed().as_secs_f64(),
            ..model
        })
    }

    /// The token embedding, `[V, D]` in the kernels' grouped layout (read a row with
    /// [`FloatRows::row_into`]).
    pub fn embedding(&self) -> FloatRows<'_> {
        self.embd.view()
    }

    /// Ternary weights in the model (the seven projections of every block).
    pub fn ternary_weights(&self) -> usize {
        let c = &self.cfg;
        c.n_layers
            * Projection::ALL
                .iter()
                .map(|&p| {
                    let (i, o) = c.projection_shape(p);
                    i * o
                })
                .sum::<usize>()
    }

    /// Bits a ternary weight takes in the file; None when the projections mix types.
    pub fn ternary_bits_per_weight(&self) -> Option<f64> {
        matches!(
            self.weight_type,
            GgmlType::Tq1_0 | GgmlType::Tq2_0 | GgmlType::I2S
        )
        .then(|| self.weight_type.bits_per_weight())
    }

    /// Bytes one decode step must read of the weights: the packed ternary weights (2 bits each,
    /// padded rows) and the LM head.
    pub fn bytes_per_token(&self) -> usize {
        self.packed_bytes + self.lm_head().elem_bytes() * self.cfg.vocab * self.cfg.d_model
    }

    /// Bytes of a `kv` cache one decode step reads per position it attends to: a key and a
    /// value for every layer and key/value head. A step at position `p` reads `p + 1` of them,
    /// on top of [`Model::bytes_per_token`].
    pub fn kv_bytes_per_position(&self, kv: crate::KvType) -> usize {
        2 * self.cfg.n_layers * self.cfg.kv_dim() * kv.bytes()
    }

    /// The LM head: `output.weight` if the file has one, else the tied embedding.
    pub fn lm_head(&self) -> FloatRows<'_> {
        self.head.as_ref().unwrap_or(&self.embd).view()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

struct Weights<'g, 'a> {
    g: &'g Gguf<'a>,
}

impl<'g, 'a> Weights<'g, 'a> {
    fn tensor(
        &self,
        name: &str,
        dims: &[usize],
        types: &[GgmlType],
    ) -> Result<&'g TensorInfo, String> {
        self.g.expect(name, dims, types)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, String> {
        let t = self.tensor(name, &[n], &[GgmlType::F32, GgmlType::F16])?;
        Ok(self.g.dequantize(t))
    }

    fn ternary(
        &self,
        n: usize,
        p: Projection,
        cols: usize,
        rows: usize,
    ) -> Result<&'g TensorInfo, String> {
        let t = self.tensor(
            &p.weight(n),
            &[cols, rows],
            &[GgmlType::Tq2_0, GgmlType::Tq1_0, GgmlType::I2S],
        )?;
        if t.ty == GgmlType::I2S && !cols.is_multiple_of(128) {
            return Err(format!(
                "tensor {}: I2_S rows must be multiples of 128 weights, not {cols}",
                t.name
            ));
        }
        Ok(t)
    }

    /// The optional `.scale` tensor of projection `p` of block `n`.
    fn scale(&self, n: usize, p: Projection) -> Result<Option<f32>, String> {
        let name = p.scale(n);
        if self.g.tensor(&name).is_none() {
            return Ok(None);
        }
        let s = self.tensor(&name, &[1], &[GgmlType::F32])?;
        Ok(Some(self.g.dequantize(s)[0]))
    }

    /// Projection `p` of block `n` packed, its output multiplied by `extra` (the `.scale`).
    fn pack(
        &self,
        n: usize,
        p: Projection,
        cols: usize,
        rows: usize,
        extra: f32,
    ) -> Result<TernaryMatrix, String> {
        let t = self.ternary(n, p, cols, rows)?;
        TernaryMatrix::from_gguf(t.ty, self.g.data(t), cols, rows, extra)
            .map_err(|e| format!("tensor {}: {e}", t.name))
    }
}
