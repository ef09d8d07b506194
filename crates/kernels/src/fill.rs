//! New outputs written part by part in parallel, each part zeroed by the task that then writes
//! it. `vec![0.0; n]` followed by a parallel loop zeroed the whole output on the calling thread
//! first: a memset of every activation and gradient, with the other core idle meanwhile (at tiny
//! 8×128, 2.7% of a training step's time, the largest of its single-threaded stretches). Zeroed in
//! its task, a part is cleared in parallel and is in cache when the kernel writes it.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A `len`-element vector cut into parts of `part` elements (the last one shorter): `f(i, part)`
/// runs for every part `i` in parallel and its results come back in part order.
pub fn par_parts<T, R>(
    len: usize,
    part: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> (Vec<T>, Vec<R>)
where
    T: Copy + Default + Send,
    R: Send,
{
    // SAFETY: `zeroed` initializes every element of each part before `f` sees it.
    unsafe { par_parts_written(len, part, |i, p| f(i, zeroed(p))) }
}

/// [`par_parts`] for tasks that write every element of their part themselves: nothing is
/// zeroed first. For the largest outputs of a training step (each BitLinear's product), whose
/// kernels store every element, the zeroing was a second pass over the output.
///
/// # Safety
/// `f` initializes every element of the part it is given.
pub unsafe fn par_parts_written<T, R>(
    len: usize,
    part: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>]) -> R + Sync,
) -> (Vec<T>, Vec<R>)
where
    T: Send,
    R: Send,
{
    let mut v = unwritten(len);
    let results = v.spare_capacity_mut()[..len]
        .par_chunks_mut(part.max(1))
        .enumerate()
        .map(|(i, p)| f(i, p))
        .collect();
    // SAFETY: the parts cover the first `len` elements and `f` initialized each of them (the
    // caller's contract). If a task panics, the panic leaves through `collect` before this and
    // `v` drops empty.
    unsafe { v.set_len(len) };
    (v, results)
}

/// An empty vector with room for `len` elements, for a kernel to store into its spare capacity
/// before `set_len`. Tests start that storage as all-ones bits (NaN as a float), so an element
/// the kernel skips shows.
pub(crate) fn unwritten<T>(len: usize) -> Vec<T> {
    #[allow(unused_mut)]
    let mut v = Vec::with_capacity(len);
    #[cfg(test)]
    {
        let spare = v.spare_capacity_mut();
        // SAFETY: `spare` is writable for its whole length; bytes written into `MaybeUninit`
        // storage need not form a valid T.
        unsafe { std::ptr::write_bytes(spare.as_mut_ptr(), 0xff, spare.len()) };
    }
    v
}

/// Initialized storage seen as storage that is only written, for kernels that store into
/// either kind: sound, since `MaybeUninit<T>` has `T`'s layout and the kernels write only
/// initialized values through it.
pub fn uninit<T: Copy>(out: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: same length, layout and lifetime; every value written is an initialized T.
    unsafe { &mut *(out as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// Two vectors cut into the same number of parts (`a`'s of `part_a` elements, `b`'s of
/// `part_b`): `f(i, a's part i, b's part i)`, in parallel.
pub fn par_parts2<A, B>(
    (len_a, part_a): (usize, usize),
    (len_b, part_b): (usize, usize),
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) -> (Vec<A>, Vec<B>)
where
    A: Copy + Default + Send,
    B: Copy + Default + Send,
{
    // SAFETY: `zeroed` initializes every element of both parts before `f` sees them.
    unsafe {
        par_parts2_written((len_a, part_a), (len_b, part_b), |i, a, b| {
            f(i, zeroed(a), zeroed(b))
        })
    }
}

/// [`par_parts2`] for tasks that write every element of both their parts: nothing is zeroed.
///
/// # Safety
/// `f` initializes every element of the two parts it is given.
pub unsafe fn par_parts2_written<A, B>(
    (len_a, part_a): (usize, usize),
    (len_b, part_b): (usize, usize),
    f: impl Fn(usize, &mut [MaybeUninit<A>], &mut [MaybeUninit<B>]) + Sync,
) -> (Vec<A>, Vec<B>)
where
    A: Send,
    B: Send,
{
    let (part_a, part_b) = (part_a.max(1), part_b.max(1));
    assert_eq!(
        len_a.div_ceil(part_a),
        len_b.div_ceil(part_b),
        "both outputs have one part per task"
    );
    let (mut a, mut b) = (unwritten(len_a), unwritten(len_b));
    a.spare_capacity_mut()[..len_a]
        .par_chunks_mut(part_a)
        .zip(b.spare_capacity_mut()[..len_b].par_chunks_mut(part_b))
        .enumerate()
        .for_each(|(i, (pa, pb))| f(i, pa, pb));
    // SAFETY: equally many parts on both sides (asserted), so the zip paired every part of each
    // vector, and `f` initialized all of them (the caller's contract). A panicking task leaves
    // through `for_each` before this, and both vectors drop empty.
    unsafe {
        a.set_len(len_a);
        b.set_len(len_b);
    }
    (a, b)
}

/// A part whose every element the caller has written, seen as initialized.
///
/// # Safety
/// Every element of `p` has been written.
pub unsafe fn written<T>(p: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: initialized (the caller's contract), and `MaybeUninit<T>` has `T`'s layout.
    unsafe { &mut *(p as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// The part with every element set to `T::default()`, as initialized storage.
fn zeroed<T: Copy + Default>(p: &mut [MaybeUninit<T>]) -> &mut [T] {
    p.fill(MaybeUninit::new(T::default()));
    // SAFETY: every element was written just above.
    unsafe { written(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_output_in_order_and_start_zeroed() {
        for (len, part) in [(0, 4), (1, 4), (10, 4), (12, 4), (7, 1)] {
            let (v, starts) = par_parts(len, part, |i, p: &mut [u32]| {
                assert!(p.iter().all(|&x| x == 0), "part {i} starts zeroed");
                for (j, x) in p.iter_mut().enumerate() {
                    *x = (i * part + j) as u32 + 1;
                }
                i * part
            });
            assert_eq!(v, (1..=len as u32).collect::<Vec<_>>());
            assert_eq!(
                starts,
                (0..len.div_ceil(part))
                    .map(|i| i * part)
                    .collect::<Vec<_>>()
            );
        }
        // Two outputs, parts of different sizes, a short last part on each side.
        let (a, b) = par_parts2((10, 4), (5, 2), |i, a: &mut [f32], b: &mut [i8]| {
            a.iter_mut().for_each(|x| *x = i as f32);
            b[0] = i as i8 + 1;
        });
        assert_eq!(a, [0., 0., 0., 0., 1., 1., 1., 1., 2., 2.]);
        assert_eq!(b, [1, 0, 2, 0, 3]);
    }

    #[test]
    #[should_panic(expected = "one part per task")]
    fn mismatched_parts_are_refused() {
        par_parts2((10, 4), (10, 4 * 2), |_, _: &mut [f32], _: &mut [f32]| {});
    }
}
