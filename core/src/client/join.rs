//! The client side of joining: connect to the address(es) of an invite pinning its
//! fingerprint (no trust on first use), prove the secret, read the answer.
//!
//! Not here: reading the code (`alknet_proto::join`), storing the server under a name
//! ([`super::Servers`]), the server side (`ops::join`).

use super::{ClientError, KnownServers, TrustedConnect, connect_trusted};
use crate::config::Config;
use crate::identity::tls::NodeKey;
use alknet_proto::join::{
    ALPN, Invite, InviteAddress, JoinError, JoinRequest, JoinResponse, MAX_RESPONSE, Refusal,
};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why joining failed. `Display` says what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JoinFailure {
    /// The server refused the invite.
    #[error("join refused: {0}")]
    Refused(Refusal),
    /// No address of the invite answered.
    #[error("cannot reach the server at {tried}: {last}")]
    Unreachable {
        /// The addresses tried.
        tried: String,
        /// The last error.
        last: String,
    },
    /// The connection was refused or failed (a key mismatch among them).
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The answer did not decode or the stream failed.
    #[error("the server's answer is unreadable ({0}); is it an alknet server of the same version?")]
    Protocol(String),
}

impl From<JoinError> for JoinFailure {
    fn from(e: JoinError) -> Self {
        JoinFailure::Protocol(e.to_string())
    }
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The peer id the server recorded.
    pub peer: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The address that answered.
    pub addr: SocketAddr,
}

/// Joins the server of `invite`, presenting `node_key`, proposing `name` as the peer id.
/// Addresses are tried in order; the first that completes a handshake with the pinned key
/// gets the request.
pub async fn join(
    node_key: &NodeKey,
    known: &KnownServers,
    invite: &Invite,
    name: Option<String>,
) -> Result<Joined, JoinFailure> {
    let request = JoinRequest {
        secret: invite.secret,
        name,
    }
    .encode()?;
    let mut tried = Vec::new();
    let mut last = String::from("no address");
    for a in &invite.addresses {
        let label = a.to_string();
        tried.push(label.clone());
        let addrs: Vec<SocketAddr> = match a {
            InviteAddress::Ip(ip) => vec![*ip],
            InviteAddress::Host(h, p) => match (h.as_str(), *p).to_socket_addrs() {
                Ok(it) => it.collect(),
                Err(e) => {
                    last = format!("{label}: {e}");
                    continue;
                }
            },
        };
        for addr in addrs {
            let target = TrustedConnect {
                config: Arc::new(Config::default()),
                node_key,
                known,
                server_name: &label,
                addr,
                alpn: ALPN,
                pinned: Some(invite.fingerprint),
            };
            let (endpoint, conn) = match connect_trusted(&target).await {
                Ok(c) => c,
                Err(e @ ClientError::KeyMismatch { .. }) => return Err(e.into()),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let answer = async {
                let (mut send, mut recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| JoinFailure::Protocol(e.to_string()))?;
                send.write_all(&request)
                    .await
                    .map_err(|e| JoinFailure::Protocol(e.to_string()))?;
                send.finish()
                    .map_err(|e| JoinFailure::Protocol(e.to_string()))?;
                let bytes = recv
                    .read_to_end(MAX_RESPONSE)
                    .await
                    .map_err(|e| JoinFailure::Protocol(e.to_string()))?;
                Ok::<_, JoinFailure>(JoinResponse::decode(&bytes)?)
            }
            .await;
            conn.close(crate::service::close_code::NO_ERROR, b"");
            endpoint.wait_idle(Duration::from_secs(1)).await;
            return match answer? {
                JoinResponse::Admitted { peer, scopes } => Ok(Joined { peer, scopes, addr }),
                JoinResponse::Refused { reason, .. } => Err(JoinFailure::Refused(reason)),
            };
        }
    }
    Err(JoinFailure::Unreachable {
        tried: tried.join(", "),
        last,
    })
}
