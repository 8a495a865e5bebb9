//! Greedy acceptance on hand-built trees, directly and through the Burn acceptor.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use s4c_tree::TokenTree;
use s4c_verify::{accept_greedy, Acceptor, GreedyAcceptor, VerifyError};

/// Root 0 → children a(1)=10, b(2)=11; a → c(3)=12, d(4)=13; c → e(5)=14.
fn tree() -> TokenTree {
    TokenTree::from_parents(&[0, 10, 11, 12, 13, 14], &[0, 0, 0, 1, 1, 3], &[]).unwrap()
}

#[test]
fn fully_accepted_deepest_path() {
    let v = accept_greedy(&tree(), &[10, 12, 99, 14, 99, 7]);
    // 0 → 10 (a), a → 12 (c), c → 14 (e), bonus after e = 7.
    assert_eq!(v.path, vec![0, 1, 3, 5]);
    assert_eq!(v.tokens, vec![10, 12, 14]);
    assert_eq!(v.bonus, 7);
    assert_eq!(v.emitted(), vec![10, 12, 14, 7]);
    assert_eq!(v.accepted_per_depth(4), vec![true, true, true, false]);
}

#[test]
fn no_child_accepted_gives_only_the_bonus() {
    let v = accept_greedy(&tree(), &[42, 0, 0, 0, 0, 0]);
    assert_eq!(v.path, vec![0]);
    assert!(v.tokens.is_empty());
    assert_eq!(v.bonus, 42);
}

#[test]
fn partial_acceptance_stops_at_first_mismatch() {
    let v = accept_greedy(&tree(), &[10, 13, 0, 0, 5, 0]);
    assert_eq!(v.path, vec![0, 1, 4]);
    assert_eq!(v.bonus, 5);
}

#[test]
fn equally_long_branches_take_the_lowest_index() {
    // Duplicate sibling tokens: root → 10 (1), 10 (2); each has child 20 (3, 4).
    let t = TokenTree::from_parents(&[0, 10, 10, 20, 20], &[0, 0, 0, 1, 2], &[]).unwrap();
    let v = accept_greedy(&t, &[10, 20, 20, 8, 9]);
    assert_eq!(v.path, vec![0, 1, 3]);
    assert_eq!(v.bonus, 8);
    // A longer branch through the second duplicate wins over a shorter first one.
    let t = TokenTree::from_parents(&[0, 10, 10, 20], &[0, 0, 0, 2], &[]).unwrap();
    let v = accept_greedy(&t, &[10, 30, 20, 6]);
    assert_eq!(v.path, vec![0, 2, 3]);
}

#[test]
fn ties_in_logits_resolve_to_the_lowest_token_id() {
    // Through Burn: the row of node 0 has a tie between tokens 1 and 3; argmax → 1.
    let t = TokenTree::from_parents(&[0, 1, 3], &[0, 0, 0], &[]).unwrap();
    let logits = vec![
        0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 1.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let device = Default::default();
    let l = Tensor::<Flex, 2>::from_data(TensorData::new(logits, [3, 5]), &device);
    let v = Acceptor::<Flex>::accept(&mut GreedyAcceptor, &t, &[], l).unwrap();
    assert_eq!(v.path, vec![0, 1]);
    assert_eq!(v.bonus, 4);
    let bad = Tensor::<Flex, 2>::zeros([2, 5], &device);
    assert!(matches!(
        Acceptor::<Flex>::accept(&mut GreedyAcceptor, &t, &[], bad),
        Err(VerifyError::RowMismatch { .. })
    ));
}
