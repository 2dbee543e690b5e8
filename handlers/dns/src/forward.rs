//! Forwarding names outside the zone to the configured upstream resolver, and the cache of
//! its answers.
//!
//! Each forwarded question goes out on a fresh connected UDP socket (a random source port
//! and a random message ID, so an off-path attacker must guess both), retried once; an
//! answer with the TC bit is asked again over TCP. An answer is taken only when its ID and
//! question match what was asked. Answers are cached by (name, type, class) for their
//! smallest TTL (NXDOMAIN and NODATA for the SOA's minimum, at most five minutes); the cache
//! is bounded, and when full the entries nearest expiry go first.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record};
use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest answer read from the upstream over UDP or TCP.
const MAX_ANSWER: usize = 65_535;

/// Datagrams from the upstream that are not the answer (wrong ID), read before giving up
/// on an attempt.
const MAX_STRAY: usize = 8;

/// Longest a negative answer is cached.
const MAX_NEGATIVE_TTL: u32 = 300;

/// Longest any answer is cached.
const MAX_TTL: u32 = 86_400;

/// Why a question could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No answer in time.
    #[error("the upstream resolver did not answer in time")]
    Timeout,
    /// A socket error.
    #[error("upstream: {0}")]
    Io(#[from] std::io::Error),
    /// The upstream's answer did not decode or did not match the question.
    #[error("upstream: {0}")]
    Bad(String),
}

/// An upstream answer, as cached: its sections and rcode.
#[derive(Clone, Debug)]
pub(crate) struct Forwarded {
    /// The upstream's rcode.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
}

/// Asks `upstream` the one question `q`.
pub(crate) async fn ask(
    upstream: SocketAddr,
    timeout: Duration,
    q: &Query,
) -> Result<Forwarded, ForwardError> {
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    let bytes = m.to_vec().map_err(|e| ForwardError::Bad(e.to_string()))?;
    let mut last = ForwardError::Timeout;
    for _ in 0..2 {
        match monoio::time::timeout(timeout, udp_once(upstream, &bytes, id, q)).await {
            Ok(Ok(answer)) if answer.metadata.truncation => {
                return match monoio::time::timeout(timeout, tcp_once(upstream, &bytes, id, q)).await
                {
                    Ok(r) => r.map(forwarded),
                    Err(_) => Err(ForwardError::Timeout),
                };
            }
            Ok(Ok(answer)) => return Ok(forwarded(answer)),
            Ok(Err(e)) => last = e,
            Err(_) => last = ForwardError::Timeout,
        }
    }
    Err(last)
}

fn forwarded(m: Message) -> Forwarded {
    Forwarded {
        rcode: m.metadata.response_code,
        answers: m.answers,
        authority: m.authorities,
    }
}

fn check(answer: &[u8], id: u16, q: &Query) -> Result<Option<Message>, ForwardError> {
    let m = Message::from_vec(answer).map_err(|e| ForwardError::Bad(e.to_string()))?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return Ok(None);
    }
    match m.queries.as_slice() {
        [got] if got.name().eq_case(q.name()) || got.name() == q.name() => {
            if got.query_type() != q.query_type() || got.query_class() != q.query_class() {
                return Err(ForwardError::Bad(
                    "the answer is for another question".into(),
                ));
            }
        }
        _ => {
            return Err(ForwardError::Bad(
                "the answer is for another question".into(),
            ));
        }
    }
    Ok(Some(m))
}

async fn udp_once(
    upstream: SocketAddr,
    bytes: &[u8],
    id: u16,
    q: &Query,
) -> Result<Message, ForwardError> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = monoio::net::udp::UdpSocket::bind(local)?;
    sock.connect(upstream).await?;
    let (sent, _) = sock.send(bytes.to_vec()).await;
    sent?;
    let mut buf = vec![0u8; MAX_ANSWER];
    for _ in 0..MAX_STRAY {
        let (n, b) = sock.recv(buf).await;
        buf = b;
        let n = n?;
        if let Some(m) = check(buf.get(..n).unwrap_or_default(), id, q)? {
            return Ok(m);
        }
    }
    Err(ForwardError::Bad("no answer with the question's ID".into()))
}

async fn tcp_once(
    upstream: SocketAddr,
    bytes: &[u8],
    id: u16,
    q: &Query,
) -> Result<Message, ForwardError> {
    let mut stream = monoio::net::TcpStream::connect_addr(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::Bad("query too long".into()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    let (r, _) = stream.write_all(framed).await;
    r?;
    let (r, prefix) = stream.read_exact(vec![0u8; 2]).await;
    r?;
    let n = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    let (r, body) = stream.read_exact(vec![0u8; n]).await;
    r?;
    check(&body, id, q)?.ok_or_else(|| ForwardError::Bad("no answer with the question's ID".into()))
}

/// The cache of forwarded answers, shared by every shard.
pub(crate) struct Cache {
    capacity: usize,
    map: Mutex<HashMap<CacheKey, Entry>>,
}

type CacheKey = (String, u16, u16);

struct Entry {
    stored: Instant,
    expires: Instant,
    answer: Forwarded,
}

impl Cache {
    /// A cache holding at most `capacity` answers (0: none).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn key(q: &Query) -> CacheKey {
        (
            crate::zone::key_of(q.name()),
            u16::from(q.query_type()),
            u16::from(q.query_class()),
        )
    }

    /// The cached answer to `q`, its TTLs lowered by the time it has been held.
    pub(crate) fn get(&self, q: &Query) -> Option<Forwarded> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(q);
        let e = map.get(&key)?;
        if e.expires <= now {
            map.remove(&key);
            return None;
        }
        let age = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        let mut answer = e.answer.clone();
        for r in answer.answers.iter_mut().chain(answer.authority.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(answer)
    }

    /// Keeps `answer` to `q` for its smallest TTL.
    pub(crate) fn put(&self, q: &Query, answer: &Forwarded) {
        if self.capacity == 0
            || !matches!(answer.rcode, ResponseCode::NoError | ResponseCode::NXDomain)
        {
            return;
        }
        let ttl = if answer.answers.is_empty() {
            let soa_min = answer.authority.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            });
            soa_min.unwrap_or(0).min(MAX_NEGATIVE_TTL)
        } else {
            answer
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_TTL)
        };
        if ttl == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            map.retain(|_, e| e.expires > now);
            while map.len() >= self.capacity {
                let Some(first) = map
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&first);
            }
        }
        map.insert(
            Self::key(q),
            Entry {
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                answer: answer.clone(),
            },
        );
    }

    /// Answers held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RecordType};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real UDP resolver on loopback: answers every A question with 198.51.100.7,
    /// truncates once when asked for `big.`, and counts the questions it saw.
    fn upstream(asked: Arc<AtomicUsize>) -> SocketAddr {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind(sock.local_addr().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = |q: &Message| {
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.add_queries(q.queries.clone());
            if let Some(query) = q.queries.first() {
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    120,
                    RData::A(A::new(198, 51, 100, 7)),
                ));
            }
            r
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                asked.fetch_add(1, Ordering::SeqCst);
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = answer(&q);
                if q.queries[0].name().to_ascii() == "big." {
                    r.answers.clear();
                    r.metadata.truncation = true;
                }
                // A stray datagram with another ID comes first; it must be skipped.
                let mut stray = r.clone();
                stray.metadata.id = q.metadata.id.wrapping_add(1);
                sock.send_to(&stray.to_vec().unwrap(), from).unwrap();
                sock.send_to(&r.to_vec().unwrap(), from).unwrap();
            }
        });
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in tcp.incoming() {
                let mut s = s.unwrap();
                let mut len = [0u8; 2];
                s.read_exact(&mut len).unwrap();
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut body).unwrap();
                let r = answer(&Message::from_vec(&body).unwrap()).to_vec().unwrap();
                s.write_all(&(r.len() as u16).to_be_bytes()).unwrap();
                s.write_all(&r).unwrap();
            }
        });
        addr
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_question_is_forwarded_over_udp_then_tcp_on_truncation_and_cached() {
        let asked = Arc::new(AtomicUsize::new(0));
        let up = upstream(asked.clone());
        let cache = Cache::new(2);
        let q = Query::query(Name::from_ascii("example.test.").unwrap(), RecordType::A);
        let got = run(ask(up, Duration::from_secs(5), &q)).unwrap();
        assert_eq!(got.answers.len(), 1);
        cache.put(&q, &got);
        assert_eq!(cache.get(&q).unwrap().answers[0].ttl, 120);
        let big = Query::query(Name::from_ascii("big.").unwrap(), RecordType::A);
        let got = run(ask(up, Duration::from_secs(5), &big)).unwrap();
        assert_eq!(
            got.answers.len(),
            1,
            "the TCP answer, not the truncated one"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        for n in ["a.test.", "b.test.", "c.test."] {
            let q = Query::query(Name::from_ascii(n).unwrap(), RecordType::A);
            cache.put(&q, &got);
        }
        assert_eq!(cache.len(), 2, "bounded");
    }

    #[test]
    fn a_silent_upstream_times_out() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let q = Query::query(Name::from_ascii("example.test.").unwrap(), RecordType::A);
        let r = run(ask(
            silent.local_addr().unwrap(),
            Duration::from_millis(200),
            &q,
        ));
        assert!(matches!(r, Err(ForwardError::Timeout)), "{r:?}");
    }
}
