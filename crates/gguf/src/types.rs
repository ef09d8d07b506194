//! ggml tensor types and GGUF metadata values.

use crate::blocks;

/// The tensor types tritium reads and writes (ggml's ids; I2_S is bitnet.cpp's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q8_0,
    Tq1_0,
    Tq2_0,
    I2S,
}

impl GgmlType {
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::Tq1_0 => 34,
            Self::Tq2_0 => 35,
            Self::I2S => 36,
        }
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            8 => Self::Q8_0,
            34 => Self::Tq1_0,
            35 => Self::Tq2_0,
            36 => Self::I2S,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q8_0 => "Q8_0",
            Self::Tq1_0 => "TQ1_0",
            Self::Tq2_0 => "TQ2_0",
            Self::I2S => "I2_S",
        }
    }

    /// Elements per block (rows must hold a whole number of blocks).
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::I2S => 1,
            Self::Q8_0 => 32,
            Self::Tq1_0 | Self::Tq2_0 => 256,
        }
    }

    /// Bits a weight takes in the file: block bytes over block elements (I2_S: its 2-bit codes,
    /// without the per-tensor tail).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::I2S => 2.0,
            t => (t.nbytes(t.block_elems()) * 8) as f64 / t.block_elems() as f64,
        }
    }

    /// Bytes a tensor of `n` elements (a whole number of blocks) takes.
    pub fn nbytes(self, n: usize) -> usize {
        match self {
            Self::F32 => 4 * n,
            Self::F16 => 2 * n,
            Self::Q8_0 => n / 32 * blocks::Q8_0_BYTES,
            Self::Tq1_0 => n / blocks::QK_K * blocks::TQ1_0_BYTES,
            Self::Tq2_0 => n / blocks::QK_K * blocks::TQ2_0_BYTES,
            // Packed 2-bit codes, then a 32-byte tail whose first 4 bytes are the f32 scale.
            Self::I2S => n / 4 + 32,
        }
    }
}

/// A metadata value (GGUF's typed KV values; arrays hold one element type).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match *self {
            Value::U32(v) => Some(v),
            Value::U8(v) => Some(v as u32),
            Value::U16(v) => Some(v as u32),
            Value::I32(v) if v >= 0 => Some(v as u32),
            Value::U64(v) => u32::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short rendering for `tritium inspect` (long arrays are summarised).
    pub fn display(&self) -> String {
        match self {
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) if a.len() > 6 => {
                let head: Vec<String> = a.iter().take(3).map(|v| v.display()).collect();
                format!("[{}, … {} items]", head.join(", "), a.len())
            }
            Value::Array(a) => format!(
                "[{}]",
                a.iter().map(|v| v.display()).collect::<Vec<_>>().join(", ")
            ),
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
        }
    }
}
