//! The backend-generic [`Acceptor`] trait: Burn logits in, host decisions out.

use burn::tensor::{backend::Backend, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use s4c_tree::TokenTree;

use crate::sampling::SamplingParams;
use crate::speculative::{accept_sampling, Proposal};
use crate::typical::{accept_typical, TypicalParams};
use crate::{accept_greedy, Verdict};

/// Errors of acceptance.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The logits do not have one row per tree node.
    #[error(
        "logits have {rows} rows but the tree has {nodes} nodes; pass Logits::All for verification"
    )]
    RowMismatch {
        /// Rows of logits.
        rows: usize,
        /// Nodes of the tree.
        nodes: usize,
    },
    /// The backend's data could not be read.
    #[error("reading logits from the device failed: {0}")]
    Read(String),
    /// Invalid sampling parameters.
    #[error("invalid sampling parameters: {0}")]
    Params(String),
}

/// Decides which branch of a verified tree is accepted.
pub trait Acceptor<B: Backend> {
    /// `logits` are the target's `[nodes, vocab]` logits of every tree node; `proposals[i]` says
    /// how node `i` was drafted.
    fn accept(
        &mut self,
        tree: &TokenTree,
        proposals: &[Proposal],
        logits: Tensor<B, 2>,
    ) -> Result<Verdict, VerifyError>;

    /// Whether the output distribution equals the target's (false for typical acceptance).
    fn is_lossless(&self) -> bool;
}

/// Acceptors behind a pointer: lent for one generation (`&mut A`: it keeps its state, e.g. its
/// random stream) or chosen at run time, e.g. per request (`Box<dyn Acceptor<B>>`).
macro_rules! forward_acceptor {
    ($($pointer:ty),*) => {$(
        impl<B: Backend, A: Acceptor<B> + ?Sized> Acceptor<B> for $pointer {
            fn accept(
                &mut self,
                tree: &TokenTree,
                proposals: &[Proposal],
                logits: Tensor<B, 2>,
            ) -> Result<Verdict, VerifyError> {
                (**self).accept(tree, proposals, logits)
            }

            fn is_lossless(&self) -> bool {
                (**self).is_lossless()
            }
        }
    )*};
}

forward_acceptor!(&mut A, Box<A>);

fn check_rows<B: Backend>(tree: &TokenTree, logits: &Tensor<B, 2>) -> Result<(), VerifyError> {
    let rows = logits.dims()[0];
    if rows != tree.len() {
        return Err(VerifyError::RowMismatch {
            rows,
            nodes: tree.len(),
        });
    }
    Ok(())
}

/// Reads row `i` of `logits` to the host.
pub fn read_row<B: Backend>(logits: &Tensor<B, 2>, i: usize) -> Result<Vec<f32>, VerifyError> {
    let v = logits.dims()[1];
    logits
        .clone()
        .slice([i..i + 1, 0..v])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| VerifyError::Read(format!("{e:?}")))
}

/// Runs a tree walk whose row source reads row `i` of `logits` to the host and processes it with
/// `params`; only the rows the walk asks for are read. The first read error is returned.
fn walk_rows<B: Backend>(
    logits: &Tensor<B, 2>,
    params: SamplingParams,
    walk: impl FnOnce(&mut dyn FnMut(usize) -> Vec<f32>) -> Verdict,
) -> Result<Verdict, VerifyError> {
    let mut err = None;
    let mut probs = |i: usize| match read_row(logits, i) {
        Ok(row) => params.probabilities(&row),
        Err(e) => {
            err.get_or_insert(e);
            vec![0.0; logits.dims()[1]]
        }
    };
    let verdict = walk(&mut probs);
    match err {
        Some(e) => Err(e),
        None => Ok(verdict),
    }
}

/// The argmax id of every row, computed on device; only the ids cross to the host.
pub fn read_argmax<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<u32>, VerifyError> {
    let ids = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| VerifyError::Read(format!("{e:?}")))?;
    Ok(ids.into_iter().map(|x| x as u32).collect())
}

/// Greedy acceptance: output equals plain greedy decoding.
#[derive(Debug, Clone, Default)]
pub struct GreedyAcceptor;

impl<B: Backend> Acceptor<B> for GreedyAcceptor {
    fn accept(
        &mut self,
        tree: &TokenTree,
        _proposals: &[Proposal],
        logits: Tensor<B, 2>,
    ) -> Result<Verdict, VerifyError> {
        check_rows(tree, &logits)?;
        Ok(accept_greedy(tree, &read_argmax(logits)?))
    }

    fn is_lossless(&self) -> bool {
        true
    }
}

/// Lossless speculative sampling with the plain sampler's logits processing.
#[derive(Debug, Clone)]
pub struct SamplingAcceptor {
    params: SamplingParams,
    rng: StdRng,
}

impl SamplingAcceptor {
    /// An acceptor with seeded randomness.
    pub fn new(params: SamplingParams, seed: u64) -> Result<Self, VerifyError> {
        params.validate().map_err(VerifyError::Params)?;
        Ok(SamplingAcceptor {
            params,
            rng: StdRng::seed_from_u64(seed),
        })
    }
}

impl<B: Backend> Acceptor<B> for SamplingAcceptor {
    fn accept(
        &mut self,
        tree: &TokenTree,
        proposals: &[Proposal],
        logits: Tensor<B, 2>,
    ) -> Result<Verdict, VerifyError> {
        check_rows(tree, &logits)?;
        let rng = &mut self.rng;
        walk_rows(&logits, self.params, |probs| {
            accept_sampling(tree, proposals, probs, rng)
        })
    }

    fn is_lossless(&self) -> bool {
        true
    }
}

/// Medusa's typical acceptance. **Lossy**: use only when speed matters more than fidelity.
#[derive(Debug, Clone)]
pub struct TypicalAcceptor {
    typical: TypicalParams,
    params: SamplingParams,
    rng: StdRng,
}

impl TypicalAcceptor {
    /// A typical acceptor on the target distribution processed by `params`.
    pub fn new(
        typical: TypicalParams,
        params: SamplingParams,
        seed: u64,
    ) -> Result<Self, VerifyError> {
        params.validate().map_err(VerifyError::Params)?;
        Ok(TypicalAcceptor {
            typical,
            params,
            rng: StdRng::seed_from_u64(seed),
        })
    }
}

impl<B: Backend> Acceptor<B> for TypicalAcceptor {
    fn accept(
        &mut self,
        tree: &TokenTree,
        _proposals: &[Proposal],
        logits: Tensor<B, 2>,
    ) -> Result<Verdict, VerifyError> {
        check_rows(tree, &logits)?;
        let (typical, rng) = (&self.typical, &mut self.rng);
        walk_rows(&logits, self.params, |probs| {
            accept_typical(tree, typical, probs, rng)
        })
    }

    fn is_lossless(&self) -> bool {
        false
    }
}
