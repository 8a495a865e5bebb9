//! The Burn-facing sampling and typical acceptors on hand-built logits.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use s4c_tree::TokenTree;
use s4c_verify::{
    Acceptor, Proposal, SamplingAcceptor, SamplingParams, TypicalAcceptor, TypicalParams,
    VerifyError,
};

/// Root 0 → children 1 (token 2) and 2 (token 3); node 1 → child 3 (token 4).
fn tree() -> TokenTree {
    TokenTree::from_parents(&[0, 2, 3, 4], &[0, 0, 0, 1], &[]).unwrap()
}

/// One-hot-like rows (logit 30 on `hot[i]`): the target is certain at every node.
fn logits(hot: [usize; 4]) -> Tensor<Flex, 2> {
    let mut v = vec![0.0f32; 4 * 6];
    for (row, &h) in hot.iter().enumerate() {
        v[row * 6 + h] = 30.0;
    }
    Tensor::from_data(TensorData::new(v, [4, 6]), &Default::default())
}

#[test]
fn sampling_acceptor_follows_a_certain_target() {
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let props = vec![Proposal::Deterministic; 4];
    for seed in 0..20 {
        let mut acc = SamplingAcceptor::new(params, seed).unwrap();
        // Target: after 0 → 2, after 2 → 4, after 4 → 5: the whole left branch, bonus 5.
        let v = Acceptor::<Flex>::accept(&mut acc, &tree(), &props, logits([2, 4, 0, 5])).unwrap();
        assert_eq!(v.path, vec![0, 1, 3]);
        assert_eq!(v.emitted(), vec![2, 4, 5]);
        // Target after 0 is 3 (second child): rank 0 rejected, rank 1 accepted.
        let v = Acceptor::<Flex>::accept(&mut acc, &tree(), &props, logits([3, 4, 1, 5])).unwrap();
        assert_eq!(v.emitted(), vec![3, 1]);
    }
    assert!(Acceptor::<Flex>::is_lossless(
        &SamplingAcceptor::new(params, 0).unwrap()
    ));
    let bad = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.5,
    };
    assert!(matches!(
        SamplingAcceptor::new(bad, 0),
        Err(VerifyError::Params(_))
    ));
    let mut acc = SamplingAcceptor::new(params, 0).unwrap();
    let short = Tensor::<Flex, 2>::zeros([3, 6], &Default::default());
    assert!(matches!(
        Acceptor::<Flex>::accept(&mut acc, &tree(), &props, short),
        Err(VerifyError::RowMismatch { .. })
    ));
}

#[test]
fn typical_acceptor_is_labelled_lossy_and_accepts_confident_tokens() {
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let mut acc = TypicalAcceptor::new(TypicalParams::default(), params, 1).unwrap();
    assert!(!Acceptor::<Flex>::is_lossless(&acc));
    let v = Acceptor::<Flex>::accept(&mut acc, &tree(), &[], logits([2, 4, 0, 5])).unwrap();
    assert_eq!(v.emitted(), vec![2, 4, 5]);
}
