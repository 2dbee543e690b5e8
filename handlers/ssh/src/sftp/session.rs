//! One SFTP session: reads length-prefixed requests, runs them on the blocking pool, and
//! writes their replies in the order the requests came, as OpenSSH's `sftp-server` does.
//! The protocol allows replies out of order, but OpenSSH's `scp` downloads in place and
//! truncates the file at the end of the last reply that arrived in order: one READ answered
//! before an earlier one would silently cut the copy short (with a success exit).
//!
//! Concurrency follows draft-ietf-secsh-filexfer-02 §6: READs and WRITEs run in parallel
//! unless they overlap an earlier one in flight on the same handle (a WRITE involved), in
//! which case the session waits for everything in flight first. Every other request is a
//! barrier: it runs alone, after all earlier requests finished and before any later one
//! starts, so a client that pipelines `mkdir a` and `open a/f` sees them in order. OpenSSH's
//! client only pipelines READs and WRITEs, so barriers cost nothing in a transfer.
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] requests and [`MAX_IN_FLIGHT_BYTES`] of request and
//! reply bytes are held at once (a request's permits are released when its reply has been
//! written), at most [`MAX_HANDLES`] open handles; the reader stops reading while a bound is
//! reached, so the client is flow-controlled by its transport.

use super::ops::{self, Names};
use super::wire::{self, MAX_DATA, MAX_PACKET, kind};
use bytes::{Bytes, BytesMut};
use cap_std::fs::{Dir, ReadDir};
use russh_sftp::extensions;
use russh_sftp::protocol::{ExtendedReply, Packet, StatusCode, Version};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Requests in flight at once. OpenSSH's client keeps 64; twice that leaves room for others.
pub(crate) const MAX_IN_FLIGHT: usize = 128;
/// Bytes of requests and replies held at once: 64 full-size reads or writes and their
/// replies fit, so OpenSSH's client never waits on this bound.
pub(crate) const MAX_IN_FLIGHT_BYTES: usize = 40 << 20;
/// Open file and directory handles per session.
pub(crate) const MAX_HANDLES: usize = 256;

/// The permits a request holds until its reply is written.
struct Permits {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// A reply on its way to the writer, holding its request's share of the bounds.
struct Reply {
    bytes: Bytes,
    _permits: Permits,
}

/// What a handle refers to.
enum Open {
    File(Arc<std::fs::File>),
    /// `None` while a READDIR has the iterator on the blocking pool.
    Dir(Option<Box<ReadDir>>),
}

struct Slot {
    nonce: u64,
    open: Open,
}

/// Open handles. A handle is the slot index and a random 64-bit nonce in hex: opaque,
/// not an fd, and not guessable from another handle.
#[derive(Default)]
struct Handles {
    slots: Vec<Option<Slot>>,
    open: usize,
    /// Nonces are 0 (the fuzzing entry point: inputs can then name the handles they opened).
    predictable: bool,
}

impl Handles {
    fn insert(&mut self, open: Open) -> Option<String> {
        if self.open >= MAX_HANDLES {
            return None;
        }
        let index = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let nonce = if self.predictable {
            0
        } else {
            rand::random::<u64>()
        };
        let slot = self.slots.get_mut(index)?;
        *slot = Some(Slot { nonce, open });
        self.open += 1;
        Some(format!("{index:04x}{nonce:016x}"))
    }

    fn index(&self, handle: &str) -> Option<usize> {
        let (index, nonce) = (handle.get(..4)?, handle.get(4..)?);
        if nonce.len() != 16 {
            return None;
        }
        let index = usize::from_str_radix(index, 16).ok()?;
        let nonce = u64::from_str_radix(nonce, 16).ok()?;
        match self.slots.get(index)? {
            Some(s) if s.nonce == nonce => Some(index),
            _ => None,
        }
    }

    fn get(&mut self, handle: &str) -> Option<(usize, &mut Open)> {
        let index = self.index(handle)?;
        let slot = self.slots.get_mut(index)?.as_mut()?;
        Some((index, &mut slot.open))
    }

    fn file(&mut self, handle: &str) -> Option<(usize, Arc<std::fs::File>)> {
        match self.get(handle)? {
            (i, Open::File(f)) => Some((i, f.clone())),
            _ => None,
        }
    }

    fn remove(&mut self, handle: &str) -> Option<Open> {
        let index = self.index(handle)?;
        let slot = self.slots.get_mut(index)?.take()?;
        self.open -= 1;
        Some(slot.open)
    }
}

/// A READ or WRITE for the session's I/O thread.
type Job = Box<dyn FnOnce() + Send>;

/// The session's own thread for READs and WRITEs, started with its first one, as OpenSSH's
/// `sftp-server` is a process of its own. Requests queue on it in order and it runs them
/// back to back: a transfer's 64 pipelined requests cost one wake-up while it is busy,
/// where a blocking-pool task per request costs two thread switches each. The queue is
/// bounded by [`MAX_IN_FLIGHT`] (a request holds a permit until its reply is written), and
/// the thread ends when the session drops its sender.
#[derive(Default)]
struct Worker {
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
}

impl Worker {
    fn run(&mut self, job: Job) -> io::Result<()> {
        let tx = match &self.tx {
            Some(tx) => tx,
            None => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(MAX_IN_FLIGHT + 1);
                std::thread::Builder::new()
                    .name("alknet-sftp".into())
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            // A panicking request drops its reply slot (the writer skips
                            // it) and its permits; the thread serves the next one.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                    })?;
                self.tx.insert(tx)
            }
        };
        tx.try_send(job)
            .map_err(|_| io::Error::other("the sftp I/O thread is gone"))
    }
}

/// A READ or WRITE in flight, for the overlap check.
struct InFlight {
    slot: usize,
    start: u64,
    end: u64,
    write: bool,
    done: Arc<AtomicBool>,
}

/// Why a session ended early.
fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

pub(crate) struct Session {
    root: Arc<Dir>,
    handles: Handles,
    /// Each request's reply slot, in request order; the writer waits for them in turn.
    tx: mpsc::Sender<oneshot::Receiver<Reply>>,
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    in_flight: Vec<InFlight>,
    names: Option<Arc<Names>>,
    initialized: bool,
    worker: Worker,
}

/// Serves `stream` with `root` as `/` until the client closes it. `predictable_handles`
/// gives every handle a zero nonce (for fuzzing only).
pub(crate) async fn run<S>(stream: S, root: Dir, predictable_handles: bool) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT + 1);
    let writer = tokio::spawn(write_replies(wr, rx));
    let mut session = Session {
        root: Arc::new(root),
        handles: Handles {
            predictable: predictable_handles,
            ..Handles::default()
        },
        tx,
        count: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        bytes: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES)),
        in_flight: Vec::new(),
        names: None,
        initialized: false,
        worker: Worker::default(),
    };
    let read = session.read_loop(&mut rd).await;
    // Finish what is in flight; the writer ends when the last reply is written.
    session.drain().await;
    drop(session);
    let written = match writer.await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("sftp reply writer failed: {e}"))),
    };
    read.and(written)
}

/// Writes replies in request order, flushing whenever the next one is not ready yet. A slot
/// whose sender is gone (its blocking task panicked) is skipped.
async fn write_replies<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<oneshot::Receiver<Reply>>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    loop {
        let mut next = match rx.try_recv() {
            Ok(next) => next,
            Err(mpsc::error::TryRecvError::Empty) => {
                w.flush().await?;
                match rx.recv().await {
                    Some(next) => next,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let reply = match next.try_recv() {
            Ok(reply) => Some(reply),
            Err(oneshot::error::TryRecvError::Empty) => {
                w.flush().await?;
                next.await.ok()
            }
            Err(oneshot::error::TryRecvError::Closed) => None,
        };
        if let Some(reply) = reply {
            w.write_all(&reply.bytes).await?;
        }
    }
    w.flush().await?;
    w.shutdown().await
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<()> {
        loop {
            let len = match rd.read_u32().await {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if len == 0 || len > MAX_PACKET {
                return Err(protocol_error(format!(
                    "sftp packet of {len} bytes refused (1 to {MAX_PACKET} allowed); session closed"
                )));
            }
            let count = self
                .count
                .clone()
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            let bytes = self
                .bytes
                .clone()
                .acquire_many_owned(len)
                .await
                .map_err(io::Error::other)?;
            let mut body = BytesMut::zeroed(len as usize);
            rd.read_exact(&mut body).await.map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    protocol_error(format!("sftp packet cut short (header said {len} bytes)"))
                } else {
                    e
                }
            })?;
            self.handle(
                body.freeze(),
                Permits {
                    _count: count,
                    _bytes: bytes,
                },
            )
            .await?;
        }
    }

    /// Waits until nothing is in flight.
    async fn drain(&mut self) {
        if let Ok(all) = self.count.acquire_many(MAX_IN_FLIGHT as u32 - 1).await {
            drop(all);
        }
        self.in_flight.clear();
    }

    async fn send(&self, bytes: Bytes, permits: Permits) -> io::Result<()> {
        let reply = self.reply_slot().await?;
        let _ = reply.send(Reply {
            bytes,
            _permits: permits,
        });
        Ok(())
    }

    /// The place of the next reply in the writer's order.
    async fn reply_slot(&self) -> io::Result<oneshot::Sender<Reply>> {
        let (reply, slot) = oneshot::channel();
        self.tx
            .send(slot)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "sftp client went away"))?;
        Ok(reply)
    }

    async fn handle(&mut self, mut body: Bytes, permits: Permits) -> io::Result<()> {
        let ty = body.first().copied().unwrap_or(0);
        let id = wire::request_id(&body);
        if !self.initialized {
            if ty != kind::INIT {
                return Err(protocol_error(format!(
                    "sftp packet type {ty} before SSH_FXP_INIT"
                )));
            }
            self.initialized = true;
            return self.send(version(), permits).await;
        }
        let known =
            (kind::FIRST_REQUEST..=kind::LAST_REQUEST).contains(&ty) || ty == kind::EXTENDED;
        if !known {
            let msg = format!("sftp packet type {ty} is not a request this server serves");
            return self
                .send(wire::status(id, StatusCode::OpUnsupported, &msg), permits)
                .await;
        }
        let packet = match Packet::try_from(&mut body) {
            Ok(p) if body.is_empty() => p,
            Ok(_) => {
                let msg = format!("sftp request type {ty} has trailing bytes");
                return self
                    .send(wire::status(id, StatusCode::BadMessage, &msg), permits)
                    .await;
            }
            Err(e) => {
                let msg = format!("malformed sftp request type {ty}: {e}");
                return self
                    .send(wire::status(id, StatusCode::BadMessage, &msg), permits)
                    .await;
            }
        };
        match packet {
            Packet::Read(r) => {
                self.data(r.handle, r.offset, r.len, None, id, permits)
                    .await
            }
            Packet::Write(w) => {
                let len = w.data.len() as u32;
                self.data(w.handle, w.offset, len, Some(w.data), id, permits)
                    .await
            }
            other => {
                self.drain().await;
                let reply = self.barrier(other, id).await;
                self.send(reply, permits).await
            }
        }
    }

    /// A READ (`data` is `None`) or WRITE, run in parallel with the others in flight.
    async fn data(
        &mut self,
        handle: String,
        offset: u64,
        len: u32,
        data: Option<Vec<u8>>,
        id: u32,
        mut permits: Permits,
    ) -> io::Result<()> {
        let Some((slot, file)) = self.handles.file(&handle) else {
            return self.send(bad_handle(id), permits).await;
        };
        let write = data.is_some();
        let len = if write { len } else { len.min(MAX_DATA) };
        let (start, end) = (offset, offset.saturating_add(u64::from(len)));
        self.in_flight.retain(|f| !f.done.load(Ordering::Acquire));
        let overlaps = self
            .in_flight
            .iter()
            .any(|f| f.slot == slot && (f.write || write) && f.start < end && start < f.end);
        if overlaps {
            self.drain().await;
        }
        if !write {
            // Room for the reply as well.
            let more = self
                .bytes
                .clone()
                .acquire_many_owned(len.max(1))
                .await
                .map_err(io::Error::other)?;
            permits._bytes.merge(more);
        }
        let done = Arc::new(AtomicBool::new(false));
        self.in_flight.push(InFlight {
            slot,
            start,
            end,
            write,
            done: done.clone(),
        });
        let reply = self.reply_slot().await?;
        self.worker.run(Box::new(move || {
            let bytes = match &data {
                Some(data) => ops::write(&file, id, offset, data),
                None => ops::read(&file, id, offset, len),
            };
            drop(data);
            done.store(true, Ordering::Release);
            // A client that went away is noticed by the reader.
            let _ = reply.send(Reply {
                bytes,
                _permits: permits,
            });
        }))
    }

    /// Runs one request alone; nothing else is in flight.
    async fn barrier(&mut self, packet: Packet, id: u32) -> Bytes {
        let root = self.root.clone();
        match packet {
            Packet::Open(o) => {
                let opened =
                    blocking(move || ops::open(&root, &o.filename, o.pflags, &o.attrs)).await;
                match opened {
                    Ok(Ok(file)) => self.new_handle(id, Open::File(Arc::new(file))),
                    Ok(Err(e)) => ops::io_status(id, &e),
                    Err(e) => e,
                }
            }
            Packet::OpenDir(o) => match blocking(move || ops::opendir(&root, &o.path)).await {
                Ok(Ok(dir)) => self.new_handle(id, Open::Dir(Some(Box::new(dir)))),
                Ok(Err(e)) => ops::io_status(id, &e),
                Err(e) => e,
            },
            Packet::Close(c) => match self.handles.remove(&c.handle) {
                Some(open) => {
                    // Closing may flush to disk: off the async threads too.
                    flatten(
                        blocking(move || {
                            drop(open);
                            wire::status(id, StatusCode::Ok, "ok")
                        })
                        .await,
                    )
                }
                None => bad_handle(id),
            },
            Packet::ReadDir(r) => {
                let names = self.names().await;
                let Some((_, Open::Dir(dir))) = self.handles.get(&r.handle) else {
                    return bad_handle(id);
                };
                let Some(mut it) = dir.take() else {
                    return bad_handle(id);
                };
                let result = blocking(move || {
                    let reply = ops::readdir(&mut it, id, &names, std::time::SystemTime::now());
                    (reply, it)
                })
                .await;
                match result {
                    Ok((reply, it)) => {
                        if let Some((_, Open::Dir(slot))) = self.handles.get(&r.handle) {
                            *slot = Some(it);
                        }
                        reply
                    }
                    Err(e) => e,
                }
            }
            Packet::Fstat(f) => {
                self.on_file(&f.handle, id, move |file| ops::fstat(file, id))
                    .await
            }
            Packet::FSetStat(f) => {
                self.on_file(&f.handle, id, move |file| ops::fsetstat(file, id, &f.attrs))
                    .await
            }
            Packet::Lstat(s) => {
                flatten(blocking(move || ops::stat(&root, id, &s.path, false)).await)
            }
            Packet::Stat(s) => flatten(blocking(move || ops::stat(&root, id, &s.path, true)).await),
            Packet::SetStat(s) => {
                flatten(blocking(move || ops::setstat(&root, id, &s.path, &s.attrs)).await)
            }
            Packet::Remove(r) => {
                flatten(blocking(move || ops::remove(&root, id, &r.filename)).await)
            }
            Packet::MkDir(m) => {
                flatten(blocking(move || ops::mkdir(&root, id, &m.path, &m.attrs)).await)
            }
            Packet::RmDir(r) => flatten(blocking(move || ops::rmdir(&root, id, &r.path)).await),
            Packet::RealPath(r) => {
                flatten(blocking(move || ops::realpath(&root, id, &r.path)).await)
            }
            Packet::Rename(r) => flatten(
                blocking(move || ops::rename(&root, id, &r.oldpath, &r.newpath, false)).await,
            ),
            Packet::ReadLink(r) => {
                flatten(blocking(move || ops::readlink(&root, id, &r.path)).await)
            }
            // OpenSSH sends the target first and the link's path second (its "linkpath"
            // field in russh-sftp's naming is the target).
            Packet::Symlink(s) => {
                flatten(blocking(move || ops::symlink(&root, id, &s.linkpath, &s.targetpath)).await)
            }
            Packet::Extended(e) => self.extended(e.request, e.data, id).await,
            _ => wire::status(id, StatusCode::OpUnsupported, "not a request"),
        }
    }

    async fn extended(&mut self, request: String, data: Vec<u8>, id: u32) -> Bytes {
        let root = self.root.clone();
        let mut data = Bytes::from(data);
        let bad = |what: &str| {
            wire::status(
                id,
                StatusCode::BadMessage,
                &format!("malformed {what} request"),
            )
        };
        let strings = |data: &mut Bytes, n: usize| -> Option<Vec<String>> {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(take_string(data)?);
            }
            data.is_empty().then_some(out)
        };
        match request.as_str() {
            "posix-rename@openssh.com" => match strings(&mut data, 2).as_deref() {
                Some([from, to]) => {
                    let (from, to) = (from.clone(), to.clone());
                    flatten(blocking(move || ops::rename(&root, id, &from, &to, true)).await)
                }
                _ => bad(&request),
            },
            extensions::HARDLINK => match strings(&mut data, 2).as_deref() {
                Some([from, to]) => {
                    let (from, to) = (from.clone(), to.clone());
                    flatten(blocking(move || ops::hardlink(&root, id, &from, &to)).await)
                }
                _ => bad(&request),
            },
            extensions::STATVFS => match strings(&mut data, 1).as_deref() {
                Some([path]) => {
                    let path = path.clone();
                    flatten(blocking(move || ops::statvfs(&root, id, &path)).await)
                }
                _ => bad(&request),
            },
            extensions::EXPAND_PATH => match strings(&mut data, 1).as_deref() {
                Some([path]) => {
                    let path = path.clone();
                    flatten(blocking(move || ops::expand_path(&root, id, &path)).await)
                }
                _ => bad(&request),
            },
            extensions::FSYNC | "fstatvfs@openssh.com" => match strings(&mut data, 1).as_deref() {
                Some([handle]) if request == extensions::FSYNC => {
                    self.on_file(handle, id, move |f| ops::fsync(f, id)).await
                }
                Some([handle]) => {
                    self.on_file(handle, id, move |f| ops::fstatvfs(f, id))
                        .await
                }
                _ => bad(&request),
            },
            extensions::LIMITS if data.is_empty() => limits(id),
            _ => wire::status(
                id,
                StatusCode::OpUnsupported,
                &format!(
                    "extension {} is not supported",
                    super::truncate(&request, 64)
                ),
            ),
        }
    }

    async fn on_file<F>(&mut self, handle: &str, id: u32, f: F) -> Bytes
    where
        F: FnOnce(&std::fs::File) -> Bytes + Send + 'static,
    {
        match self.handles.file(handle) {
            Some((_, file)) => flatten(blocking(move || f(&file)).await),
            None => bad_handle(id),
        }
    }

    fn new_handle(&mut self, id: u32, open: Open) -> Bytes {
        match self.handles.insert(open) {
            Some(handle) => wire::encode(
                id,
                Packet::Handle(russh_sftp::protocol::Handle { id, handle }),
            ),
            None => wire::status(
                id,
                StatusCode::Failure,
                &format!("too many open handles (at most {MAX_HANDLES}); close some first"),
            ),
        }
    }

    async fn names(&mut self) -> Arc<Names> {
        if let Some(n) = &self.names {
            return n.clone();
        }
        let names = Arc::new(blocking(Names::load).await.unwrap_or_default());
        self.names = Some(names.clone());
        names
    }
}

/// Runs `f` on the blocking pool; a failure to run it becomes a FAILURE reply for the
/// caller to send.
async fn blocking<T, F>(f: F) -> Result<T, Bytes>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| wire::status(0, StatusCode::Failure, &format!("request failed: {e}")))
}

fn flatten(r: Result<Bytes, Bytes>) -> Bytes {
    r.unwrap_or_else(|e| e)
}

fn bad_handle(id: u32) -> Bytes {
    wire::status(id, StatusCode::Failure, "invalid handle")
}

/// An SSH string from an extension's payload.
fn take_string(data: &mut Bytes) -> Option<String> {
    use bytes::Buf;
    let len = data.try_get_u32().ok()? as usize;
    if data.remaining() < len {
        return None;
    }
    let raw = data.split_to(len);
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// The VERSION reply: SFTP v3 and the OpenSSH extensions served.
fn version() -> Bytes {
    let extensions: HashMap<String, String> = [
        ("posix-rename@openssh.com", "1"),
        (extensions::STATVFS, "2"),
        ("fstatvfs@openssh.com", "2"),
        (extensions::HARDLINK, "1"),
        (extensions::FSYNC, "1"),
        (extensions::LIMITS, "1"),
        (extensions::EXPAND_PATH, "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    wire::encode(
        0,
        Packet::Version(Version {
            version: 3,
            extensions,
        }),
    )
}

/// The `limits@openssh.com` reply.
fn limits(id: u32) -> Bytes {
    use bytes::BufMut;
    let mut data = Vec::with_capacity(32);
    data.put_u64(u64::from(MAX_PACKET));
    data.put_u64(u64::from(MAX_DATA));
    data.put_u64(u64::from(MAX_DATA));
    data.put_u64(MAX_HANDLES as u64);
    wire::encode(id, Packet::ExtendedReply(ExtendedReply { id, data }))
}
