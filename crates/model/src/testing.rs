//! Helpers for the unit tests: the default device and small tensors from literals.

use burn::prelude::*;

pub fn dev() -> Device {
    crate::Backend::Flex.device().expect("flex backend")
}

pub fn t2<const N: usize, const M: usize>(rows: &[[f32; M]; N]) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::<1>::from_floats(flat.as_slice(), &dev()).reshape([N, M])
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

/// Elementwise `|a - b| <= tol · max(1, |b|)`.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "index {i}: {x} vs {y} (tol {tol})\n{a:?}\n{b:?}"
        );
    }
}
