//! s4c-draft
