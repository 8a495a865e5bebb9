//! s4c-tree
