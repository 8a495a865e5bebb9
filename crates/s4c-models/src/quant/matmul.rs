//! The threaded product `y = x · Wᵀ` over weight matrices of any kernel type.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use super::acts::Q8Acts;
use super::packed::{Packed, GROUP};
use super::{portable, Isa, IsaKind, QMatrix};
use crate::error::{ModelError, Result};

/// Weight rows per parallel task: one group of the interleaved kernel.
const TASK_ROWS: usize = GROUP;

/// The threads the kernels run on, and the instruction set they use.
///
/// Each model owns one; cloning shares the pool.
#[derive(Clone)]
pub struct Threads {
    pool: Arc<rayon::ThreadPool>,
    isa: Isa,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads({}, {})", self.count(), self.isa.name())
    }
}

impl Threads {
    /// A pool of `threads` threads (0 = one per physical core) using `isa`.
    pub fn new(threads: usize, isa: Isa) -> Result<Self> {
        let n = if threads == 0 {
            Self::physical_cores()
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("s4c-cpu-{i}"))
            .build()
            .map_err(|e| ModelError::InvalidInput(format!("cannot start {n} threads: {e}")))?;
        Ok(Threads {
            pool: Arc::new(pool),
            isa,
        })
    }

    /// Physical cores of this machine (logical ones where that is unknown).
    pub fn physical_cores() -> usize {
        num_cpus::get_physical().max(1)
    }

    /// Number of threads.
    pub fn count(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The instruction set of the kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs `f` inside the pool (its parallel iterators use these threads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// The activations of one product, in the form a weight type needs.
enum Acts<'a> {
    Q8(&'a Q8Acts),
    F32(&'a [f32]),
}

/// Per-task scratch space of the kernels.
#[derive(Default)]
struct Scratch {
    #[cfg(target_arch = "aarch64")]
    unpacked: super::neon::Unpacked,
}

impl Isa {
    /// Whether this instruction set has the interleaved kernel of [`super::packed`].
    pub(super) fn packs(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if matches!(
            self.0,
            IsaKind::Avx2 | IsaKind::Avx2Vnni | IsaKind::Avx512Vnni
        ) {
            return true;
        }
        false
    }

    /// `out[i · 16 + j] = W[16g + j] · x_i` for group `g` of `p` and every activation row `i`.
    pub(super) fn packed(self, p: &Packed, g: usize, a: &Q8Acts, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.0 == IsaKind::Avx512Vnni {
            // SAFETY: the instructions were detected on this CPU (`Isa`); `out` holds one group.
            unsafe { super::avx512::packed(p, g..g + 1, a, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(self.0, IsaKind::Avx2 | IsaKind::Avx2Vnni) {
            // SAFETY: as above; AVX2, FMA and F16C come with both.
            unsafe { super::avx2_packed::packed(p, g..g + 1, a, out) };
            return;
        }
        super::packed::reference(p, g..g + 1, a, out)
    }

    /// `out[k · n + i] = W[rows.start + k] · x_i` for weight rows `rows` of `m` and every
    /// activation row `i` (`n` of them).
    fn rows(
        self,
        m: &QMatrix,
        rows: Range<usize>,
        acts: &Acts<'_>,
        out: &mut [f32],
        s: &mut Scratch,
    ) {
        let ty = m.ty();
        #[cfg(not(target_arch = "aarch64"))]
        let _ = s;
        let n = out.len() / rows.len().max(1);
        // SAFETY (every `unsafe` below): an `Isa` names only instructions detected on this CPU;
        // the rows belong to `m` and the activations have `m.cols()` columns (checked by
        // `Linear::forward`).
        for (r, o) in rows.zip(out.chunks_exact_mut(n)) {
            let w = m.row(r);
            match (self.0, acts) {
                (IsaKind::Portable, Acts::Q8(a)) => portable::q8_rows(ty, w, a, o),
                (IsaKind::Portable, Acts::F32(x)) => portable::dense_rows(ty, w, x, m.cols(), o),
                // Block types are interleaved on every x86 instruction set (`Isa::packs`); their
                // portable rows remain the reference.
                #[cfg(target_arch = "x86_64")]
                (_, Acts::Q8(a)) => portable::q8_rows(ty, w, a, o),
                #[cfg(target_arch = "x86_64")]
                (IsaKind::Avx2 | IsaKind::Avx2Vnni | IsaKind::Avx512Vnni, Acts::F32(x)) => unsafe {
                    super::x86::dense_rows_avx2(ty, w, x, m.cols(), o)
                },
                #[cfg(target_arch = "aarch64")]
                (IsaKind::Neon, Acts::Q8(a)) => unsafe {
                    super::neon::q8_rows_neon(ty, w, a, o, &mut s.unpacked)
                },
                #[cfg(target_arch = "aarch64")]
                (IsaKind::NeonDot, Acts::Q8(a)) => unsafe {
                    super::neon::q8_rows_dotprod(ty, w, a, o, &mut s.unpacked)
                },
                // Dense rows: the portable loops, which the compiler vectorizes for NEON.
                #[cfg(target_arch = "aarch64")]
                (IsaKind::Neon | IsaKind::NeonDot, Acts::F32(x)) => {
                    portable::dense_rows(ty, w, x, m.cols(), o)
                }
            }
        }
    }
}

/// A linear layer `[out, in]` made of one or more weight matrices stacked by rows (fused
/// projections such as query, key and value), possibly of different storage types.
///
/// On x86-64 CPUs (AVX2 and later), Q4_0, Q4_1, Q8_0, Q4_K and Q6_K parts are repacked 16 rows
/// at a time on first use (records of 16 interleaved rows); the repacked copy then replaces the
/// file's pages in memory.
#[derive(Debug, Clone)]
pub struct Linear {
    parts: Vec<QMatrix>,
    out: usize,
    inp: usize,
    packed: Arc<OnceLock<Vec<Option<Packed>>>>,
}

/// Where a product writes: `rows` rows of `stride` values. Tasks write disjoint columns.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: tasks write disjoint columns of the buffer, which outlives the parallel region.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Writes `v` at row `row`, column `col`.
    ///
    /// # Safety
    /// `row` and `col` are inside the buffer, and no other task writes that column.
    unsafe fn write(&self, row: usize, col: usize, v: f32) {
        *self.ptr.add(row * self.stride + col) = v
    }

    /// Writes `v` at row `row`, from column `col` on.
    ///
    /// # Safety
    /// The columns are inside the buffer, and no other task writes them.
    unsafe fn write_run(&self, row: usize, col: usize, v: &[f32]) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(row * self.stride + col), v.len())
    }
}

impl Linear {
    /// Stacks `parts` (all with the same number of columns) into one layer.
    pub fn new(parts: Vec<QMatrix>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(ModelError::InvalidInput(
                "a linear layer needs a matrix".into(),
            ));
        };
        let inp = first.cols();
        if let Some(p) = parts.iter().find(|p| p.cols() != inp) {
            return Err(ModelError::InvalidInput(format!(
                "fused weights have {} and {inp} columns",
                p.cols()
            )));
        }
        let out = parts.iter().map(QMatrix::rows).sum();
        Ok(Linear {
            parts,
            out,
            inp,
            packed: Arc::default(),
        })
    }

    /// The parts repacked for `isa`'s interleaved kernel (`None` for parts it does not take, or
    /// every part where `isa` has no such kernel).
    fn packed(&self, isa: Isa) -> Option<&[Option<Packed>]> {
        if !isa.packs() {
            return None;
        }
        let packed = self.packed.get_or_init(|| {
            self.parts
                .iter()
                .map(|p| {
                    let packed = Packed::new(p);
                    if packed.is_some() {
                        p.bytes.release_pages();
                    }
                    packed
                })
                .collect()
        });
        Some(packed)
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// The stacked matrices.
    pub fn parts(&self) -> &[QMatrix] {
        &self.parts
    }

    /// `x · Wᵀ` for `m` rows of `in` values: `m` rows of `out` values.
    ///
    /// Row `r` of the result depends on row `r` of `x` alone, bit for bit.
    pub fn forward(&self, x: &[f32], m: usize, threads: &Threads) -> Vec<f32> {
        assert_eq!(x.len(), m * self.inp, "activations of the wrong size");
        let mut y = vec![0f32; m * self.out];
        if m == 0 {
            return y;
        }
        let quantized = self.parts.iter().any(QMatrix::quantized);
        let mut tasks = Vec::new();
        let mut col = 0;
        for (i, p) in self.parts.iter().enumerate() {
            for r in (0..p.rows()).step_by(TASK_ROWS) {
                tasks.push((i, col, r..(r + TASK_ROWS).min(p.rows())));
            }
            col += p.rows();
        }
        let dst = Out {
            ptr: y.as_mut_ptr(),
            stride: self.out,
        };
        let isa = threads.isa();
        let packed = quantized.then(|| self.packed(isa)).flatten();
        threads.install(|| {
            let q8 = quantized.then(|| Q8Acts::quantize(x, m, self.inp));
            // Scratch space once per worker split, not per task.
            let init = || (Vec::new(), Scratch::default());
            tasks
                .par_iter()
                .for_each_init(init, |(buf, scratch), (i, col, rows)| {
                    let part = &self.parts[*i];
                    if let (Some(a), Some(Some(p))) = (&q8, packed.map(|p| &p[*i])) {
                        buf.resize(GROUP * m, 0.0);
                        isa.packed(p, rows.start / GROUP, a, buf);
                        for (k, row) in buf.chunks_exact(GROUP).enumerate() {
                            // SAFETY: `k < m`, `col + rows.end <= out`; this task alone writes
                            // these columns.
                            unsafe { dst.write_run(k, col + rows.start, &row[..rows.len()]) };
                        }
                        return;
                    }
                    let acts = match (&q8, part.quantized()) {
                        (Some(a), true) => Acts::Q8(a),
                        _ => Acts::F32(x),
                    };
                    buf.resize(rows.len() * m, 0.0);
                    isa.rows(part, rows.clone(), &acts, buf, scratch);
                    for (r, row) in rows.clone().zip(buf.chunks_exact(m)) {
                        for (k, &v) in row.iter().enumerate() {
                            // SAFETY: `k < m`, `col + r < out`; this task alone writes column
                            // `col + r`.
                            unsafe { dst.write(k, col + r, v) };
                        }
                    }
                });
        });
        y
    }
}
