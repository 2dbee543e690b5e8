//! Integration tests: real `alknet serve` processes and in-process shards on loopback, real
//! io_uring, real UDP, with quinn (tokio) as the independent QUIC client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod abuse;
mod abuse_admission;
mod abuse_call;
mod abuse_quic;
mod backup;
mod cli;
mod dispatch;
mod dns;
mod git;
mod http;
mod http_ui;
mod identity;
mod install;
mod join_abuse;
mod metrics;
mod onboard;
mod quic;
mod reload;
mod restart;
mod revocation;
mod sftp;
mod ssh;
mod ssh_forward;
mod ssh_migrate;
mod support;
mod systemd;
mod tcp_kit;
mod tunnel;
