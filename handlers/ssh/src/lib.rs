//! The SSH service (`alknet/ssh`): stock OpenSSH clients reach shells, commands, SFTP and scp
//! over one bidirectional QUIC stream per SSH connection, with `alknet connect` as their
//! `ProxyCommand`.

pub mod sftp;
