//! The policy as a table: forbidden targets refused under the default policy and under
//! broad allowlists, allowed targets allowed, names resolved once, caps held.

use super::*;
use alknet_core::config::{Config, TunnelsConfig};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers from a script: each name has a list of answers, one per query (the last one
/// repeats); counts queries.
#[derive(Default)]
struct Scripted {
    answers: Mutex<HashMap<String, Vec<Vec<IpAddr>>>>,
    queries: AtomicUsize,
}

impl Scripted {
    fn with(entries: &[(&str, &[&[&str]])]) -> Arc<Self> {
        let s = Self::default();
        {
            let mut a = s.answers.lock().unwrap_or_else(|p| p.into_inner());
            for (name, answers) in entries {
                a.insert(
                    name.to_string(),
                    answers
                        .iter()
                        .map(|one| one.iter().map(|x| ip(x)).collect())
                        .collect(),
                );
            }
        }
        Arc::new(s)
    }
}

impl Resolve for Scripted {
    fn resolve<'a>(&'a self, name: &'a str) -> Resolution<'a> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let r = match a.get_mut(name) {
            Some(list) if list.len() > 1 => Ok(list.remove(0)),
            Some(list) => Ok(list.first().cloned().unwrap_or_default()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
        };
        Box::pin(async move { r })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The gateway's addresses in these tests.
const OWN: &[&str] = &[
    "127.0.0.1",
    "::1",
    "192.0.2.10",
    "2001:db8::10",
    "10.0.2.15",
];

fn own() -> OwnAddresses {
    Arc::new(|| OWN.iter().map(|s| ip(s)).collect())
}

fn tunnels(text: &str) -> TunnelsConfig {
    Config::parse(text, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .tunnels
}

fn forwarder(text: &str, resolver: Arc<Scripted>) -> Forwarder {
    Forwarder::with(Policy::new(&tunnels(text)), resolver, own())
}

fn resolver() -> Arc<Scripted> {
    Scripted::with(&[
        ("loopback.test", &[&["127.0.0.1"]]),
        ("loopback6.test", &[&["::1"]]),
        ("both-protected.test", &[&["127.0.0.1", "fe80::1"]]),
        ("metadata.test", &[&["169.254.169.254"]]),
        ("ula.test", &[&["fd12:3456::1"]]),
        ("own.test", &[&["192.0.2.10"]]),
        ("mapped.test", &[&["::ffff:127.0.0.1"]]),
        ("private.test", &[&["10.1.1.1"]]),
        // First answer loopback, then a public address: the one query sees loopback.
        ("rebind.test", &[&["127.0.0.1"], &["93.184.216.34"]]),
        // First answer public, then loopback: the connection goes to what was checked.
        ("rebind-later.test", &[&["93.184.216.34"], &["127.0.0.1"]]),
        ("db.lan", &[&["10.1.0.7"]]),
        ("public.test", &[&["93.184.216.34"]]),
        ("empty.test", &[&[]]),
    ])
}

/// Targets refused under the default policy and under the broad allowlist below, with
/// port 80 (the names resolved by [`resolver`]).
const FORBIDDEN: &[&str] = &[
    "127.0.0.1",
    "127.0.0.2",
    "127.255.255.254",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",
    "0.0.0.0",
    "::",
    "169.254.169.254",
    "169.254.0.1",
    "fe80::1",
    "[fe80::1234:5678]",
    "fd00::1",
    "fc00::5",
    "10.0.0.1",
    "10.255.255.254",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.254",
    "100.64.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "ff02::1",
    "64:ff9b::7f00:1",
    "::7f00:1",
    "2002:7f00:1::",
    "192.0.2.10",
    "2001:db8::10",
    "10.0.2.15",
    "loopback.test",
    "LOOPBACK.test.",
    "loopback6.test",
    "both-protected.test",
    "metadata.test",
    "ula.test",
    "own.test",
    "mapped.test",
    "private.test",
    "rebind.test",
];

/// Everything public, every name that resolves to something protected: none of it names
/// the forbidden targets.
const BROAD: &str = r#"
[[tunnels.allow]]
peer = "laptop"
to = ["*:*", "0.0.0.0/0:*", "[::/0]:*", "8.0.0.0/5:*", "loopback.test:80", "loopback6.test:80",
      "both-protected.test:80", "metadata.test:80", "ula.test:80", "own.test:80",
      "mapped.test:80", "rebind.test:80", "[fe80::/9]:80", "[fc00::/6]:80", "192.0.2.0/24:80"]
listen = ["127.0.0.1:9000-9100"]
"#;

fn laptop() -> Requester<'static> {
    Requester {
        peer: "laptop",
        scopes: &[],
    }
}

#[tokio::test]
async fn forbidden_targets_are_refused_by_default() {
    let r = resolver();
    let f = forwarder("", r.clone());
    assert!(FORBIDDEN.len() >= 25);
    for host in FORBIDDEN {
        assert_eq!(
            f.decide(&laptop(), host, 80).await,
            Err(Refusal::NoRule),
            "{host}"
        );
    }
    // Default deny asks no resolver.
    assert_eq!(r.queries.load(Ordering::Relaxed), 0);
    assert_eq!(
        f.decide(&laptop(), "93.184.216.34", 80).await,
        Err(Refusal::NoRule)
    );
}

#[tokio::test]
async fn forbidden_targets_are_refused_under_a_broad_allowlist() {
    let f = forwarder(BROAD, resolver());
    for host in FORBIDDEN {
        let r = f.decide(&laptop(), host, 80).await;
        assert!(
            matches!(r, Err(Refusal::Protected(_) | Refusal::NotAllowed)),
            "{host}: {r:?}"
        );
    }
    // The same rules do open the internet.
    assert_eq!(
        f.decide(&laptop(), "93.184.216.34", 80).await,
        Ok(vec![
            "93.184.216.34:80".parse().unwrap_or_else(|e| panic!("{e}"))
        ])
    );
    assert!(f.decide(&laptop(), "[2001:4860::8888]", 443).await.is_ok());
    assert!(f.decide(&laptop(), "public.test", 443).await.is_ok());
    let r = f.decide(&laptop(), "loopback.test", 80).await;
    assert_eq!(r, Err(Refusal::Protected("loopback")));
}

#[tokio::test]
async fn the_issue_example_allows_what_it_names_and_nothing_near_it() {
    let text = r#"
[[tunnels.allow]]
peer = "laptop"
to = ["127.0.0.2:8080", "10.1.0.0/24:22", "db.lan:5432", "10.1.0.9:8000-8100"]
listen = ["127.0.0.1:9000-9100"]
"#;
    let f = forwarder(text, resolver());
    let ok = |s: &str| -> Vec<SocketAddr> { vec![s.parse().unwrap_or_else(|e| panic!("{e}"))] };
    let me = laptop();
    assert_eq!(
        f.decide(&me, "127.0.0.2", 8080).await,
        Ok(ok("127.0.0.2:8080"))
    );
    assert_eq!(f.decide(&me, "10.1.0.5", 22).await, Ok(ok("10.1.0.5:22")));
    assert_eq!(f.decide(&me, "db.lan", 5432).await, Ok(ok("10.1.0.7:5432")));
    assert_eq!(f.decide(&me, "DB.LAN", 5432).await, Ok(ok("10.1.0.7:5432")));
    assert_eq!(
        f.decide(&me, "10.1.0.9", 8000).await,
        Ok(ok("10.1.0.9:8000"))
    );
    assert_eq!(
        f.decide(&me, "10.1.0.9", 8100).await,
        Ok(ok("10.1.0.9:8100"))
    );
    for (host, port) in [
        ("127.0.0.2", 8081),
        ("127.0.0.1", 8080),
        ("10.1.1.5", 22),
        ("10.1.0.5", 23),
        ("db.lan", 5433),
        ("10.1.0.9", 8101),
        ("10.1.0.9", 7999),
        ("10.1.0.10", 8000),
        ("public.test", 5432),
        ("93.184.216.34", 22),
    ] {
        assert!(f.decide(&me, host, port).await.is_err(), "{host}:{port}");
    }
    // Another peer gets nothing.
    let other = Requester {
        peer: "phone",
        scopes: &[],
    };
    assert_eq!(
        f.decide(&other, "127.0.0.2", 8080).await,
        Err(Refusal::NoRule)
    );
    assert_eq!(f.decide(&me, "127.0.0.2", 0).await, Err(Refusal::BadPort));
    assert_eq!(f.decide(&me, "bad host!", 22).await, Err(Refusal::BadHost));
}

#[tokio::test]
async fn names_are_resolved_once_and_the_checked_address_is_used() {
    let r = resolver();
    let f = forwarder(
        "[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"rebind-later.test:80\", \"rebind.test:80\", \"empty.test:80\"]\n",
        r.clone(),
    );
    let got = f.decide(&laptop(), "rebind-later.test", 80).await;
    assert_eq!(
        got,
        Ok(vec![
            "93.184.216.34:80".parse().unwrap_or_else(|e| panic!("{e}"))
        ])
    );
    assert_eq!(r.queries.load(Ordering::Relaxed), 1);
    // rebind.test answers loopback first: refused, after one query.
    assert_eq!(
        f.decide(&laptop(), "rebind.test", 80).await,
        Err(Refusal::Protected("loopback"))
    );
    assert_eq!(r.queries.load(Ordering::Relaxed), 2);
    assert_eq!(
        f.decide(&laptop(), "empty.test", 80).await,
        Err(Refusal::Unresolved)
    );
    assert_eq!(
        f.decide(&laptop(), "nosuch.test", 80).await,
        Err(Refusal::NotAllowed)
    );
    // A name no rule could match is refused without a query.
    assert_eq!(r.queries.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn protected_addresses_open_only_to_rules_naming_them() {
    let text = r#"
[[tunnels.allow]]
peer = "laptop"
to = ["127.0.0.1:80", "[fe80::/10]:80", "192.0.2.10:80", "loopback.test:80", "10.0.0.0/8:80", "both-protected.test:80"]
"#;
    let f = forwarder(text, resolver());
    let me = laptop();
    assert!(f.decide(&me, "127.0.0.1", 80).await.is_ok());
    assert!(f.decide(&me, "::ffff:127.0.0.1", 80).await.is_ok());
    assert!(f.decide(&me, "127.0.0.2", 80).await.is_err());
    assert!(f.decide(&me, "fe80::1", 80).await.is_ok());
    assert!(f.decide(&me, "192.0.2.10", 80).await.is_ok());
    assert!(f.decide(&me, "10.9.9.9", 80).await.is_ok());
    // The gateway's own 10.0.2.15 is inside 10/8 but needs its own rule.
    assert_eq!(
        f.decide(&me, "10.0.2.15", 80).await,
        Err(Refusal::Protected("gateway-own"))
    );
    // loopback.test resolves to 127.0.0.1, which a rule names.
    assert!(f.decide(&me, "loopback.test", 80).await.is_ok());
    // Of two answers, only the one a rule names is used.
    assert_eq!(
        f.decide(&me, "both-protected.test", 80).await,
        Ok(vec![
            "127.0.0.1:80".parse().unwrap_or_else(|e| panic!("{e}")),
            "[fe80::1]:80".parse().unwrap_or_else(|e| panic!("{e}"))
        ])
    );
}

#[tokio::test]
async fn scope_rules_apply_to_holders_of_the_scope() {
    let f = forwarder(
        "[[tunnels.allow]]\nscope = \"ops\"\nto = [\"*:443\"]\n",
        resolver(),
    );
    let ops = ["ops".to_owned()];
    let other = ["ssh".to_owned()];
    let a = Requester {
        peer: "a",
        scopes: &ops,
    };
    let b = Requester {
        peer: "b",
        scopes: &other,
    };
    assert!(f.decide(&a, "public.test", 443).await.is_ok());
    assert_eq!(f.decide(&b, "public.test", 443).await, Err(Refusal::NoRule));
}

#[tokio::test]
async fn listeners_bind_loopback_unless_a_rule_allows_more() {
    let text = r#"
[[tunnels.allow]]
peer = "laptop"
listen = ["127.0.0.1:9000-9100", "0.0.0.0:8080", "10.0.0.0/8:7000"]
"#;
    let p = Policy::new(&tunnels(text));
    let me = laptop();
    let addr = |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("{e}")) };
    assert_eq!(
        p.decide_listen(&me, "localhost", 9000),
        Ok(addr("127.0.0.1:9000"))
    );
    assert_eq!(
        p.decide_listen(&me, "127.0.0.1", 9100),
        Ok(addr("127.0.0.1:9100"))
    );
    // Every interface, not allowed on this port: loopback.
    assert_eq!(p.decide_listen(&me, "", 9001), Ok(addr("127.0.0.1:9001")));
    assert_eq!(p.decide_listen(&me, "*", 9001), Ok(addr("127.0.0.1:9001")));
    assert_eq!(
        p.decide_listen(&me, "0.0.0.0", 9002),
        Ok(addr("127.0.0.1:9002"))
    );
    // Every interface, allowed by a rule of that very address.
    assert_eq!(
        p.decide_listen(&me, "0.0.0.0", 8080),
        Ok(addr("0.0.0.0:8080"))
    );
    assert_eq!(
        p.decide_listen(&me, "10.1.2.3", 7000),
        Ok(addr("10.1.2.3:7000"))
    );
    for (bind, port) in [
        ("127.0.0.1", 9101),
        ("localhost", 8999),
        ("192.168.1.1", 9000),
        ("10.1.2.3", 7001),
        ("", 8081),
        ("example.com", 9000),
        ("127.0.0.1", 70000),
        ("127.0.0.1", 0),
    ] {
        assert!(p.decide_listen(&me, bind, port).is_err(), "{bind}:{port}");
    }
    // A CIDR containing 0.0.0.0 does not allow every interface: loopback instead.
    let p = Policy::new(&tunnels(
        "[[tunnels.allow]]\npeer = \"laptop\"\nlisten = [\"0.0.0.0/0:*\"]\n",
    ));
    assert_eq!(
        p.decide_listen(&me, "0.0.0.0", 9000),
        Ok(addr("127.0.0.1:9000"))
    );
    assert_eq!(p.decide_listen(&me, "", 0), Ok(addr("127.0.0.1:0")));
    assert_eq!(
        Policy::default().decide_listen(&me, "localhost", 9000),
        Err(Refusal::NoRule)
    );
}

#[tokio::test]
async fn caps_are_held_per_peer_and_for_the_gateway() {
    let text = r#"
[tunnels]
max_connections_per_peer = 3
max_connections = 4
max_listeners_per_peer = 2

[[tunnels.allow]]
peer = "laptop"
listen = ["127.0.0.1:*"]

[[tunnels.allow]]
peer = "phone"
listen = ["127.0.0.1:*"]
"#;
    let f = forwarder(text, resolver());
    let held: Vec<_> = (0..3)
        .map(|_| {
            f.hold_connection("laptop")
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert_eq!(
        f.hold_connection("laptop").err(),
        Some(Refusal::ConnectionCap)
    );
    let phone = f.hold_connection("phone").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.hold_connection("phone").err(), Some(Refusal::GatewayCap));
    drop(phone);
    assert_eq!(f.held("laptop"), (3, 0));
    drop(held);
    assert_eq!(f.held("laptop"), (0, 0));
    assert!(f.hold_connection("laptop").is_ok());

    let me = laptop();
    let a = f
        .listen(&me, "localhost", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let b = f
        .listen(&me, "localhost", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.addr.port(), 0);
    assert_eq!(
        f.listen(&me, "localhost", 0).err(),
        Some(Refusal::ListenerCap)
    );
    assert_eq!(f.held("laptop"), (0, 2));
    // The port is bound: a second bind of it fails.
    let taken = a.addr.port();
    drop(b);
    assert_eq!(
        f.listen(&me, "localhost", u32::from(taken)).err(),
        Some(Refusal::BindFailed)
    );
    drop(a);
    assert_eq!(f.held("laptop"), (0, 0));
}

#[tokio::test]
async fn a_new_policy_applies_to_the_next_forward() {
    let f = forwarder("", resolver());
    assert_eq!(
        f.decide(&laptop(), "public.test", 443).await,
        Err(Refusal::NoRule)
    );
    f.set_policy(Policy::new(&tunnels(
        "[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"*:443\"]\n",
    )));
    assert!(f.decide(&laptop(), "public.test", 443).await.is_ok());
    f.set_policy(Policy::default());
    assert_eq!(
        f.decide(&laptop(), "public.test", 443).await,
        Err(Refusal::NoRule)
    );
}

#[tokio::test]
async fn connect_and_relay_carry_both_ways_with_half_close() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = server.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    // The target reads to EOF, then answers with the byte count and closes.
    let target = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(format!("{}", all.len()).as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let f = forwarder(
        &format!("[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{port}\"]\n"),
        resolver(),
    );
    let out = f
        .connect(&laptop(), "127.0.0.1", port)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.held("laptop"), (1, 0));
    let (client, mut far) = tokio::io::duplex(1 << 16);
    let relay = tokio::spawn(async move {
        let r = relay::relay(client, out.stream).await;
        drop(out.hold);
        r
    });
    let payload = vec![7u8; 300_000];
    far.write_all(&payload)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    far.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    far.read_to_string(&mut answer)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer, "300000");
    let r = relay.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_eq!((r.up, r.down), (300_000, 6));
    target.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.held("laptop"), (0, 0));
    // Refused: a port no rule names; a closed port is unreachable.
    assert!(
        f.connect(&laptop(), "127.0.0.1", port.wrapping_add(1))
            .await
            .is_err()
    );
}
