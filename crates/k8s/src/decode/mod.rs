//! Decoding objects into the forms the store keeps.

pub mod files;
pub mod json_delta;
pub mod json_list;
pub mod node;
pub mod objects;
