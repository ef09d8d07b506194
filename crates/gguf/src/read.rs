//! Parsing a GGUF file from bytes. Every length, count and offset is checked against the buffer
//! before use, and counts are bounded by what the remaining bytes could hold, so a corrupt or
//! hostile file cannot make the reader panic, read out of bounds or allocate absurdly.

use crate::Error;
use crate::types::{GgmlType, Value};

/// One tensor's description; `offset` is absolute in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (a PyTorch `[out, in]` weight is `[in, out]`).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: usize,
    pub nbytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Where the data section starts.
    pub data_offset: usize,
    bytes: &'a [u8],
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let have = self.bytes.len() - self.pos;
        if n > have {
            return Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos,
                need: n,
                have,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    /// A count of items at least `min_item` bytes each: refuse counts the file cannot hold.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, Error> {
        let n = self.u64(what)?;
        if n > (self.remaining() / min_item.max(1)) as u64 {
            return Err(Error::Invalid(format!(
                "{what} = {n} at byte {} cannot fit in the {} bytes left",
                self.pos - 8,
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, Error> {
        let n = self.count(what, 1)?;
        let at = self.pos;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Invalid(format!("{what} at byte {at} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, Error> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Error::Invalid(format!(
                        "{what}: bool byte {b} is neither 0 nor 1"
                    )));
                }
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(Error::Invalid(format!(
                        "{what}: nested arrays are not allowed"
                    )));
                }
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{what}: unknown array element type {elem}"
                        )));
                    }
                };
                let n = self.count(what, min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(Error::Invalid(format!("{what}: unknown value type {t}"))),
        })
    }
}

impl<'a> Gguf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic: [u8; 4] = c.take(4, "magic")?.try_into().expect("4 bytes");
        if &magic != b"GGUF" {
            return Err(Error::Magic(magic));
        }
        let version = c.u32("version")?;
        if version != 3 {
            return Err(Error::Version(version));
        }
        // A tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a KV pair at least 8 + 4 + 1.
        let n_tensors = c.count("tensor_count", 32)?;
        let n_kv = c.count("kv_count", 13)?;
        let mut metadata = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&format!("key of metadata entry {i}"))?;
            if key.is_empty() || metadata.iter().any(|(k, _)| *k == key) {
                return Err(Error::Invalid(format!(
                    "metadata key {key:?} is empty or repeated"
                )));
            }
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.push((key, v));
        }
        let alignment = match metadata
            .iter()
            .find(|(k, _)| k == crate::names::general::ALIGNMENT)
        {
            None => 32,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as usize,
            Some((_, v)) => {
                return Err(Error::Invalid(format!(
                    "{} = {} must be a u32 power of two",
                    crate::names::general::ALIGNMENT,
                    v.display()
                )));
            }
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor {i}"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::Invalid(format!(
                    "tensor {name:?}: {n_dims} dimensions (1 to 4 allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty_id = c.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor {name:?}: tensor type {ty_id} is not one tritium reads"
                ))
            })?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let data_offset = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= bytes.len() as u64 * 8);
            let Some(n) = n else {
                return Err(Error::Invalid(format!(
                    "tensor {name:?}: shape {dims:?} is larger than the file could hold"
                )));
            };
            let n = n as usize;
            if !(dims[0] as usize).is_multiple_of(ty.block_elems())
                || (ty == GgmlType::I2S && !n.is_multiple_of(4))
            {
                return Err(Error::Invalid(format!(
                    "tensor {name:?}: row length {} is not a multiple of {}'s block of {}",
                    dims[0],
                    ty.name(),
                    ty.block_elems()
                )));
            }
            let nbytes = ty.nbytes(n);
            let start = (data_offset as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(nbytes as u64));
            match (start, end) {
                (Some(s), Some(e))
                    if e <= bytes.len() as u64 && offset.is_multiple_of(alignment as u64) =>
                {
                    tensors.push(TensorInfo {
                        name,
                        dims,
                        ty,
                        offset: s as usize,
                        nbytes,
                    })
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "tensor {name:?}: data at offset {offset} (+{nbytes} bytes) lies outside the file or is misaligned"
                    )));
                }
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensor `name`, checked to have ggml dims `dims` and one of `types`: what a reader of an
    /// architecture asks of every tensor before it uses one.
    pub fn expect(
        &self,
        name: &str,
        dims: &[usize],
        types: &[GgmlType],
    ) -> Result<&TensorInfo, String> {
        let t = self
            .tensor(name)
            .ok_or_else(|| format!("tensor {name} is missing"))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            return Err(format!(
                "tensor {name} has shape {:?}, the architecture needs {want:?}",
                t.dims
            ));
        }
        if !types.contains(&t.ty) {
            let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
            return Err(format!(
                "tensor {name} is {}, expected one of {names:?}",
                t.ty.name()
            ));
        }
        Ok(t)
    }

    /// The raw bytes of a tensor (bounds were checked by `parse`).
    pub fn data(&self, t: &TensorInfo) -> &'a [u8] {
        &self.bytes[t.offset..t.offset + t.nbytes]
    }

    /// A tensor dequantized to f32 (row-major in ggml order).
    pub fn dequantize(&self, t: &TensorInfo) -> Vec<f32> {
        crate::blocks::dequantize(t.ty, self.data(t), t.n_elements())
    }
}
