//! The production store: PostgreSQL (filled in step by step).

pub mod pgoutput;
