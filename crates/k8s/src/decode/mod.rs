//! Decoding objects into the forms the store keeps.

pub mod files;
pub mod node;
pub mod objects;
