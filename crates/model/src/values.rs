//! Reading a tensor's values out without copying them where the backend allows.

/// A tensor's f32 values, row-major, holding the tensor itself rather than a copy where the
/// backend allows (flex buffers are reference-counted and copied on write, so the values stay
/// as they were read). Its bytes are little-endian f32 on every target we build for.
pub struct F32Values(Box<dyn AsRef<[f32]> + Send + Sync>);

impl F32Values {
    pub fn new(values: impl AsRef<[f32]> + Send + Sync + 'static) -> Self {
        F32Values(Box::new(values))
    }
}

impl AsRef<[f32]> for F32Values {
    fn as_ref(&self) -> &[f32] {
        (*self.0).as_ref()
    }
}

impl AsRef<[u8]> for F32Values {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice((*self.0).as_ref())
    }
}
