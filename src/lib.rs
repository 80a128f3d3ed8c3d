//! mbg-provision: keeps the SIP users of a MiVoice Border Gateway in step with the extension
//! database of a MiVoice Office phone system.

pub mod app;
pub mod bench;
pub mod clock;
pub mod config;
pub mod console;
pub mod credentials;
pub mod daemon;
pub mod file_owner;
pub mod health;
pub mod http;
pub mod import;
pub mod lease;
pub mod mbg;
pub mod memory;
pub mod oauth;
pub mod preflight;
pub mod reconcile;
pub mod secrets;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod stun;
pub mod systemd;
pub mod telemetry;
pub mod token;
