//! s4c-verify
