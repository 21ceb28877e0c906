//! Host-side stub: the programs live in `main.rs` and are compiled only for
//! the BPF target. This library exists so that the agent can name this crate
//! as a build dependency, which makes cargo rebuild the agent when it changes.
#![no_std]
