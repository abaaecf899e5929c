//! Herald: workers report the progress of long jobs over HTTP; Herald stores it
//! durably, appends every change to an ordered log, and pushes it live to the
//! browsers and services allowed to see it.
//!
//! The modules follow the data flow: [`transport::http`] (ingest) →
//! [`store`] (rows and the event log) → [`hub`] (topics and subscribers) →
//! [`transport`] (WebSocket, SSE, long-poll). [`model`] holds the domain rules
//! and [`auth`] who may do what.

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod feed;
pub mod hub;
pub mod maintenance;
pub mod model;
pub mod rules;
pub mod server;
pub mod session;
pub mod store;
pub mod tail;
pub mod transport;
pub mod worker_cli;
