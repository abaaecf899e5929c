//! Herald's behaviour, specified against the real binary over real sockets and
//! a real SQLite file. One test binary (one link step); suites are modules.

mod harness;
mod suite;
