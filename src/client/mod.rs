//! The rpcx client: one multiplexed connection per server, and [`XClient`] over many servers.
//!
//! | type | job |
//! |---|---|
//! | [`Client`] | one server: dials lazily, multiplexes calls on one connection by seq, re-dials after a break |
//! | [`XClient`] | a service on many servers: fail modes, select modes, broadcast and fork |
//! | [`Discovery`] | where the servers are: peer-to-peer or a static list with metadata |
//! | [`Error`] | every failure, with its [`ErrorKind`] and whether it may be retried |
//!
//! Everything here runs on a glommio executor and is `!Send`: a client belongs to the executor
//! (core) that made it, like the server's connections. [`block_on`] runs a future on a fresh
//! executor for programs and tests that have none.
//!
//! Semantics follow rpcx's Go client (PROTOCOL.md §10): MsgPack by default, gzip only for
//! payloads over 1024 bytes, the call timeout sent as `__ServerTimeout` (decimal milliseconds),
//! the auth token as `__AUTH`, service errors never retried.
//!
//! ```no_run
//! use percore::client::{Client, Options};
//! use percore::builtin::{ArithArgs, ArithReply};
//!
//! let c = percore::client::block_on(|| async {
//!     let client = Client::new("tcp@127.0.0.1:8972", Options::default())?;
//!     let reply: ArithReply = client.call("Arith", "Mul", &ArithArgs { a: 10, b: 20 }).await?;
//!     Ok::<_, percore::client::Error>(reply.c)
//! })
//! .expect("an executor");
//! ```

mod command;
mod conn;
mod discovery;
mod error;
mod etcd;
pub mod gofmt;
pub mod json;
mod selector;
mod xclient;

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::command::{CallCommand, CallError, etcd_servers, run_call};
pub use self::discovery::{Discovery, ServerEntry};
pub use self::error::{Error, ErrorKind};
pub use self::etcd::{EtcdDiscovery, EtcdError, list_once as etcd_list_once};
pub use self::selector::{SelectCall, SelectMode, Selector, consistent_hash_key, jump_hash};
pub use self::xclient::{FailMode, XClient};
use crate::codec::{self, CodecError, Payload, SerializeType};
use crate::protocol::{Header, Message, Metadata};
use crate::transport::addr::Addr;
use crate::transport::connector::{Connector, DialOptions};

/// Client settings. The defaults are the Go client's.
#[derive(Clone, Debug)]
pub struct Options {
    /// Codec of typed calls' args and replies (MsgPack, like Go's `DefaultOption`).
    pub serialize: SerializeType,
    /// Gzip request payloads over 1024 bytes (rpcx's rule; the server then may gzip replies).
    pub gzip: bool,
    /// How long a dial may take (Go: 1 s).
    pub connect_timeout: Duration,
    /// Default per-call timeout, sent to the server as `__ServerTimeout`; `None`: none.
    pub timeout: Option<Duration>,
    /// Send a heartbeat this often and drop the connection when one is not echoed in time.
    pub heartbeat_interval: Option<Duration>,
    /// Extra attempts of Failover and Failtry (Go: 3, so up to 4 attempts).
    pub retries: usize,
    /// Failbackup: after this long without a reply, a second copy goes to another server.
    pub backup_latency: Duration,
    /// Auth token, sent as `__AUTH` metadata with every call.
    pub auth_token: Option<String>,
    /// XClient: use only servers whose metadata has this `group=` value.
    pub group: Option<String>,
    /// Largest reply frame body accepted; a larger one closes the connection.
    pub max_frame_bytes: u32,
    /// Largest size a gzip reply may inflate to.
    pub max_decompressed_bytes: usize,
    /// Dial over TLS with these settings (CA file, server name, or insecure skip-verify).
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// Settings of `kcp@` servers (must match the server's `[kcp]`); the defaults are rpcx's
    /// examples'.
    pub kcp: crate::transport::kcp::KcpConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            serialize: SerializeType::MsgPack,
            gzip: false,
            connect_timeout: Duration::from_secs(1),
            timeout: None,
            heartbeat_interval: None,
            retries: 3,
            backup_latency: Duration::from_millis(10),
            auth_token: None,
            group: None,
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            kcp: crate::transport::kcp::KcpConfig::default(),
            tls: None,
        }
    }
}

/// One request, borrowed: nothing is copied until it is encoded into the connection's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Service path (`Arith`).
    pub path: &'a str,
    /// Service method (`Mul`).
    pub method: &'a str,
    /// Serialize type written in the header (the payload must already be in it).
    pub serialize: SerializeType,
    /// Request metadata, sent in this order (`__ServerTimeout` and `__AUTH` are added).
    pub metadata: &'a [(String, String)],
    /// The encoded args.
    pub payload: &'a [u8],
    /// Per-call timeout (`None` or zero: none).
    pub timeout: Option<Duration>,
}

impl<'a> Request<'a> {
    /// A request with no metadata and no timeout.
    pub fn new(
        path: &'a str,
        method: &'a str,
        serialize: SerializeType,
        payload: &'a [u8],
    ) -> Request<'a> {
        Request {
            path,
            method,
            serialize,
            metadata: &[],
            payload,
            timeout: None,
        }
    }
}

/// A successful reply, borrowed from the connection's buffers for the duration of a callback.
#[derive(Clone, Copy, Debug)]
pub struct ReplyView<'a> {
    /// The reply header.
    pub header: Header,
    /// The reply's codec, if percore knows it.
    pub codec: Option<SerializeType>,
    /// Reply metadata.
    pub metadata: Metadata<'a>,
    /// The payload, decompressed.
    pub payload: &'a [u8],
}

impl ReplyView<'_> {
    /// Decodes the payload as `R` with the reply's codec.
    pub fn decode<R: Payload>(&self) -> Result<R, Error> {
        let codec = self
            .codec
            .ok_or(CodecError::NoCodec(self.header.serialize))?;
        Ok(R::decode(codec, self.payload)?)
    }

    /// The reply as an owned message.
    pub fn to_message(&self, path: &str, method: &str) -> Message {
        Message::from_parts(self.header, path, method, self.metadata, self.payload)
    }
}

/// Called with every server push (a request frame from the server, PROTOCOL.md §3).
pub type PushHandler = Rc<dyn Fn(&Message)>;

/// Any serde type as a JSON or MsgPack payload (`Serde(my_struct)`), for typed calls with
/// types that do not implement [`Payload`] themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serde<T>(pub T);

impl<T: Serialize + DeserializeOwned> Payload for Serde<T> {
    fn decode(codec: SerializeType, bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_serde(codec, bytes, "a serde value").map(Serde)
    }

    fn encode(&self, codec: SerializeType, out: &mut Vec<u8>) -> Result<(), CodecError> {
        codec::encode_serde(&self.0, codec, out, "a serde value")
    }
}

impl<T: Serialize> Serialize for Serde<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A client of one server. Cheap to clone (clones share the connection). The connection is
/// dialed by the first call and again by the first call after it breaks.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

struct Inner {
    addr: Addr,
    options: Rc<Options>,
    /// Made by the first dial (it reads the TLS files), then reused.
    connector: RefCell<Option<Connector>>,
    conn: RefCell<Option<Rc<conn::Conn>>>,
    dialing: Cell<bool>,
    /// Dials finished so far, and the error of the last one if it failed: callers that waited
    /// for a dial share its outcome instead of each dialing again.
    dials: Cell<u64>,
    last_dial_error: RefCell<Option<Error>>,
    dial_waiters: RefCell<Vec<Waker>>,
    push: RefCell<Option<PushHandler>>,
    closed: Cell<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.get_mut().take() {
            conn.fail(Error::Closed);
        }
    }
}

impl Client {
    /// A client of the server at `addr` (`tcp@host:port`; see [`Addr`]). Does not dial.
    pub fn new(addr: &str, options: Options) -> Result<Client, Error> {
        let addr: Addr = addr.parse()?;
        Ok(Client::with_addr(addr, Rc::new(options)))
    }

    fn with_addr(addr: Addr, options: Rc<Options>) -> Client {
        Client {
            inner: Rc::new(Inner {
                addr,
                options,
                connector: RefCell::new(None),
                conn: RefCell::new(None),
                dialing: Cell::new(false),
                dials: Cell::new(0),
                last_dial_error: RefCell::new(None),
                dial_waiters: RefCell::new(Vec::new()),
                push: RefCell::new(None),
                closed: Cell::new(false),
            }),
        }
    }

    /// The server's address as given.
    pub fn addr(&self) -> &Addr {
        &self.inner.addr
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Delivers server pushes on connections dialed from now on to `handler` (they are counted
    /// and dropped otherwise).
    pub fn on_push(&self, handler: impl Fn(&Message) + 'static) {
        *self.inner.push.borrow_mut() = Some(Rc::new(handler));
    }

    /// Server pushes received on the current connection.
    pub fn pushes(&self) -> u64 {
        self.inner.conn.borrow().as_ref().map_or(0, |c| c.pushes())
    }

    /// Whether a healthy connection is open now.
    pub fn is_connected(&self) -> bool {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.is_broken())
    }

    /// Typed call: `args` encoded with the options' codec, the reply decoded as `R`. Uses the
    /// options' default timeout.
    pub async fn call<A: Payload, R: Payload>(
        &self,
        path: &str,
        method: &str,
        args: &A,
    ) -> Result<R, Error> {
        let serialize = self.inner.options.serialize;
        let mut payload = Vec::new();
        args.encode(serialize, &mut payload)?;
        let req = Request {
            timeout: self.inner.options.timeout,
            ..Request::new(path, method, serialize, &payload)
        };
        self.call_with(&req, |reply| reply.decode::<R>()).await
    }

    /// Raw call: sends `req` as it is and returns the whole reply (metadata and payload).
    pub async fn call_raw(&self, req: &Request<'_>) -> Result<Message, Error> {
        self.call_with(req, |reply| Ok(reply.to_message(req.path, req.method)))
            .await
    }

    /// The general call: `read` sees the reply in the connection's own buffers and returns what
    /// the caller needs, so a call that keeps nothing of the reply allocates nothing.
    pub async fn call_with<T>(
        &self,
        req: &Request<'_>,
        read: impl FnOnce(&ReplyView<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let conn = self.conn().await?;
        conn.call(req, false, read).await
    }

    /// Oneway call: the server runs it and sends nothing back. Returns once the request is
    /// written.
    pub async fn oneway(&self, req: &Request<'_>) -> Result<(), Error> {
        let conn = self.conn().await?;
        conn.oneway(req).await
    }

    /// Sends one heartbeat and waits for its echo.
    pub async fn heartbeat(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let conn = self.conn().await?;
        let payload = [0xd3, 0, 0, 0, 0, 0, 0, 0, 1]; // MsgPack int64 1, like the Go client's
        let req = Request {
            timeout,
            ..Request::new("", "", SerializeType::MsgPack, &payload)
        };
        conn.call(&req, true, |_| Ok(())).await
    }

    /// Closes the connection: calls in flight fail with [`Error::Closed`], later calls too.
    pub fn close(&self) {
        self.inner.closed.set(true);
        if let Some(conn) = self.inner.conn.borrow_mut().take() {
            conn.fail(Error::Closed);
        }
    }

    /// The live connection, dialing one if there is none (only one dial at a time; callers that
    /// arrive during a dial wait for it and share its result).
    async fn conn(&self) -> Result<Rc<conn::Conn>, Error> {
        let inner = &*self.inner;
        loop {
            if inner.closed.get() {
                return Err(Error::Closed);
            }
            if let Some(conn) = inner.conn.borrow().as_ref()
                && !conn.is_broken()
            {
                return Ok(Rc::clone(conn));
            }
            if !inner.dialing.get() {
                break;
            }
            let seen = inner.dials.get();
            poll_fn(|cx| {
                if inner.dials.get() != seen || !inner.dialing.get() {
                    return Poll::Ready(());
                }
                inner.dial_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if inner.dials.get() != seen
                && let Some(e) = inner.last_dial_error.borrow().as_ref()
            {
                return Err(e.clone());
            }
        }
        inner.dialing.set(true);
        // Waiters of a dial that is abandoned (its caller dropped) must not see an older error.
        *inner.last_dial_error.borrow_mut() = None;
        let guard = DialGuard(inner);
        let result = inner.dial().await;
        drop(guard);
        match result {
            Ok(stream) => {
                let push = inner.push.borrow().clone();
                let conn = conn::Conn::start(
                    inner.addr.to_string(),
                    stream,
                    Rc::clone(&inner.options),
                    push,
                );
                *inner.conn.borrow_mut() = Some(Rc::clone(&conn));
                *inner.last_dial_error.borrow_mut() = None;
                Ok(conn)
            }
            Err(reason) => {
                let error = Error::Connect {
                    addr: inner.addr.to_string(),
                    reason,
                };
                *inner.last_dial_error.borrow_mut() = Some(error.clone());
                Err(error)
            }
        }
    }
}

/// Ends a dial however it ends (done, or the dialing future dropped) and wakes the waiters.
impl Inner {
    /// One dial of the server, through the connector made by the first.
    async fn dial(&self) -> Result<crate::transport::connector::Stream, String> {
        if self.connector.borrow().is_none() {
            let options = DialOptions {
                timeout: self.options.connect_timeout,
                tls: self.options.tls.clone(),
                kcp: self.options.kcp.clone(),
            };
            let connector =
                Connector::to(self.addr.clone(), &options).map_err(|e| e.to_string())?;
            *self.connector.borrow_mut() = Some(connector);
        }
        // A clone (an address and two Arcs) so no borrow is held across the await.
        let connector = self.connector.borrow().clone();
        match connector {
            Some(c) => c.connect().await.map_err(|e| e.to_string()),
            None => Err("no connector".into()),
        }
    }
}

struct DialGuard<'a>(&'a Inner);

impl Drop for DialGuard<'_> {
    fn drop(&mut self) {
        self.0.dialing.set(false);
        self.0.dials.set(self.0.dials.get() + 1);
        let waiters = std::mem::take(&mut *self.0.dial_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
    }
}

/// Runs `make()`'s future to completion on a fresh glommio executor (unpinned, with little
/// io_uring buffer memory so it fits the default memlock limit) and returns its output. For
/// programs and tests that are not already on an executor. Fails when no executor can be
/// started (io_uring unavailable) or the future panicked.
pub fn block_on<F, Fut, T>(make: F) -> std::io::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("percore-client")
        .io_memory(256 << 10)
        .spawn(move || async move { make().await })
        .map_err(|e| std::io::Error::other(format!("cannot start a glommio executor: {e}")))?;
    handle
        .join()
        .map_err(|e| std::io::Error::other(format!("client executor failed: {e}")))
}
