//! Integration tests: real SQLite files, a real PostgreSQL (`TEST_POSTGRES_URL`), the real binary.

mod support;

mod bench;
mod cli;
mod config;
mod console;
mod daemon;
mod disk_full;
mod fencing;
mod guarantees;
mod hostile;
mod http;
mod mbg;
mod packaging;
mod preflight;
mod proof;
mod readme;
mod reconcile;
mod secrets;
mod service;
mod store;
