//! TCP pieces the forwarding tests share: servers on loopback that hash, greet or answer
//! HTTP, a client that sends and reads the hash, and background processes (an `ssh`, an
//! `alknet forward`) whose stderr goes to a file.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails.
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A TCP server on loopback answering each connection, once the client has half-closed,
/// with `"<bytes read> <sha256 hex>\n"`. Returns its port.
pub fn hash_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => {
                            ctx.update(&buf[..k]);
                            n += k as u64;
                        }
                        Err(_) => return,
                    }
                }
                let _ = writeln!(s, "{n} {}", hex(ctx.finish().as_ref()));
            });
        }
    });
    port
}

/// A TCP server on loopback that greets each connection with `hi\n` and then holds it
/// until the client closes.
pub fn greeter() -> u16 {
    greeter_telling(None)
}

/// [`greeter`], sending `1` on `events` as each connection opens and `-1` as it ends.
pub fn greeter_telling(events: Option<std::sync::mpsc::Sender<i32>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let events = events.clone();
            if let Some(e) = &events {
                let _ = e.send(1);
            }
            std::thread::spawn(move || {
                if s.write_all(b"hi\n").is_ok() {
                    let _ = std::io::copy(&mut s, &mut std::io::sink());
                }
                if let Some(e) = events {
                    let _ = e.send(-1);
                }
            });
        }
    });
    port
}

/// A connection to `port` that got the greeting (the forward is open and counted), or
/// `None` when it was closed without one (refused).
pub fn greeted(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(LIMIT)).ok()?;
    let mut hi = [0u8; 3];
    s.read_exact(&mut hi).ok()?;
    (&hi == b"hi\n").then_some(s)
}

/// A minimal HTTP server on loopback: every request gets `200` with `body`.
pub fn http_server(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&b[..k]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// A loopback TCP port that is free now, for a process the test starts to bind.
pub fn free_tcp_port() -> u16 {
    crate::support::free_loopback_port(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A background process (`ssh`, `alknet forward`), killed on drop; its stderr goes to a
/// file.
pub struct Bg {
    pub child: Child,
    stderr: PathBuf,
}

impl Bg {
    pub fn spawn(mut cmd: Command, dir: &std::path::Path, name: &str) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{name}: cannot start {:?} ({e}; .ci/test installs openssh-client)",
                    cmd.get_program()
                )
            });
        Self { child, stderr }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `port` on loopback accepts connections (the forward is up), failing
    /// if ssh exits first.
    pub fn wait_listening(&mut self, port: u16) {
        let until = Instant::now() + LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the process exited ({status}) before port {port} listened: {}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < until,
                "port {port} never listened: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the process did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `data` on a connection to `port`, half-closes, and returns the hash server's
/// answer (empty when the connection is closed without one).
pub fn send_and_hash(port: u16, data: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.set_write_timeout(Some(LIMIT)).expect("timeout");
    for chunk in data.chunks(1 << 20) {
        if s.write_all(chunk).is_err() {
            return String::new();
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// A non-loopback address of this host, if it has one.
pub fn own_address() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}
