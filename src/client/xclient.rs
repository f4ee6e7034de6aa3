//! `XClient`: one service over many servers, with rpcx's fail modes and select modes.
//!
//! | fail mode | on a failed call |
//! |---|---|
//! | Failfast | return the error (one attempt) |
//! | Failover | select a server again and retry, up to `retries` more times |
//! | Failtry | retry the same server, up to `retries` more times |
//! | Failbackup | if no reply within `backup_latency`, send a copy to a second selected server; the first success wins |
//!
//! Only transport errors ([`Error::is_retryable`]) are retried; a service error, a deadline or
//! a codec error ends the call at once (PROTOCOL.md §10). rpcx's Failbackup returns whichever
//! copy finishes first even if it failed; here a failed copy waits for the other one, so a
//! dead first server does not fail a call a live second server could answer.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use serde::Serialize;

use super::discovery::{self, Discovery, ServerEntry};
use super::etcd::EtcdDiscovery;
use super::selector::{SelectCall, SelectMode, SelectState, Selector};
use super::{Client, Error, Options, ReplyView, Request, gofmt};
use crate::codec::{Payload, SerializeType};
use crate::protocol::Message;

/// What an XClient does when a call fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FailMode {
    /// Retry on another selected server.
    Failover,
    /// Return the error at once.
    #[default]
    Failfast,
    /// Retry the same server.
    Failtry,
    /// Race a second copy after the backup latency.
    Failbackup,
}

type Attempt<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + 'a>>;

/// A client of one service on a set of servers (rpcx's `XClient`).
pub struct XClient {
    service: String,
    fail_mode: FailMode,
    select_mode: SelectMode,
    pool: RefCell<Pool>,
    select: RefCell<SelectState>,
    options: Rc<Options>,
    /// With etcd discovery: the watched list and the version of it last taken.
    watch: Option<(EtcdDiscovery, Cell<u64>)>,
}

/// The servers calls may go to, and a client of each (same order).
#[derive(Default)]
struct Pool {
    servers: Vec<ServerEntry>,
    clients: Vec<Client>,
}

impl XClient {
    /// A client of `service` on the servers `discovery` gives (inactive ones and, with
    /// [`Options::group`], other groups left out). Dials nothing yet; a bad address is an error
    /// that names it.
    pub fn new(
        service: &str,
        fail_mode: FailMode,
        select_mode: SelectMode,
        discovery: &Discovery,
        options: Options,
    ) -> Result<XClient, Error> {
        let options = Rc::new(options);
        let watch = match discovery {
            // The version is read before the list, so a change in between is taken later.
            Discovery::Etcd(etcd) => Some((etcd.clone(), Cell::new(etcd.version()))),
            _ => None,
        };
        let servers = discovery.servers(options.group.as_deref());
        let pool = if watch.is_some() {
            // A registry may hold what percore cannot dial: left out, not an error.
            Pool::default().update(servers, &options)
        } else {
            let clients = servers
                .iter()
                .map(|s| Ok(Client::with_addr(s.dial_addr()?, Rc::clone(&options))))
                .collect::<Result<Vec<_>, Error>>()?;
            Pool { servers, clients }
        };
        Ok(XClient {
            service: service.to_owned(),
            fail_mode,
            select_mode,
            select: RefCell::new(SelectState::new(select_mode, &pool.servers)),
            pool: RefCell::new(pool),
            options,
            watch,
        })
    }

    /// Takes the watched list if it changed since the last look (one atomic load when not).
    /// Clients of servers still listed are kept, with their connections.
    fn refresh(&self) {
        let Some((etcd, seen)) = &self.watch else {
            return;
        };
        let version = etcd.version();
        if version == seen.get() {
            return;
        }
        seen.set(version);
        let servers = discovery::filter(etcd.servers(), self.options.group.as_deref());
        let mut pool = self.pool.borrow_mut();
        let next = pool.update(servers, &self.options);
        self.select
            .borrow_mut()
            .update(self.select_mode, &next.servers);
        *pool = next;
    }

    /// The selector used in [`SelectMode::SelectByUser`] mode (rpcx's `SetSelector`).
    pub fn set_selector(&self, selector: impl Selector + 'static) {
        *self.select.borrow_mut() = SelectState::User(Some(Box::new(selector)));
    }

    /// The servers calls may go to now, in discovery order.
    pub fn servers(&self) -> Vec<ServerEntry> {
        self.refresh();
        self.pool.borrow().servers.clone()
    }

    /// The client of server `index` (same order as [`XClient::servers`]).
    pub fn client(&self, index: usize) -> Option<Client> {
        self.pool.borrow().clients.get(index).cloned()
    }

    /// The fail mode.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// The select mode.
    pub fn select_mode(&self) -> SelectMode {
        self.select_mode
    }

    /// Typed call of `method` with the options' codec and timeout.
    pub async fn call<A: Payload + Serialize, R: Payload>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, Error> {
        self.call_with_meta(method, args, &[]).await
    }

    /// Typed call with request metadata.
    pub async fn call_with_meta<A: Payload + Serialize, R: Payload>(
        &self,
        method: &str,
        args: &A,
        metadata: &[(String, String)],
    ) -> Result<R, Error> {
        let codec = self.options.serialize;
        let payload = encode(args, codec)?;
        let req = self.request(method, codec, metadata, &payload);
        let args_v = || gofmt::to_string(args);
        let req = &req;
        self.run(method, &payload, &args_v, |client| {
            Box::pin(async move { client.call_with(req, |r| r.decode::<R>()).await })
        })
        .await
    }

    /// Raw call: `payload` is sent as it is with serialize type `codec`; the whole reply comes
    /// back. For ConsistentHash the args are hashed as Go prints a `[]byte` (`[1 2 3]`).
    pub async fn call_raw(
        &self,
        method: &str,
        codec: SerializeType,
        payload: &[u8],
        metadata: &[(String, String)],
    ) -> Result<Message, Error> {
        let req = self.request(method, codec, metadata, payload);
        let args_v = || gofmt::to_string(&ByteSlice(payload));
        let service = self.service.as_str();
        let req = &req;
        self.run(method, payload, &args_v, |client| {
            Box::pin(async move {
                client
                    .call_with(req, move |r: &ReplyView<'_>| {
                        Ok(r.to_message(service, method))
                    })
                    .await
            })
        })
        .await
    }

    /// Oneway call: sent to one selected server (with the fail mode's retries on transport
    /// errors), no reply.
    pub async fn oneway<A: Payload + Serialize>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<(), Error> {
        let codec = self.options.serialize;
        let payload = encode(args, codec)?;
        let req = self.request(method, codec, &[], &payload);
        let args_v = || gofmt::to_string(args);
        let req = &req;
        self.run(method, &payload, &args_v, |client| {
            Box::pin(async move { client.oneway(req).await })
        })
        .await
    }

    /// Calls every server at once; succeeds only if all do, returning one of the replies. The
    /// first error ends it (rpcx's `Broadcast`). Fail and select modes do not apply.
    pub async fn broadcast<A: Payload + Serialize, R: Payload>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, Error> {
        self.all(method, args, true).await
    }

    /// Calls every server at once; the first success is the result, an error only if all fail
    /// (rpcx's `Fork`). Fail and select modes do not apply.
    pub async fn fork<A: Payload + Serialize, R: Payload>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, Error> {
        self.all(method, args, false).await
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.pool.borrow().clients.iter().for_each(Client::close);
    }

    fn request<'a>(
        &'a self,
        method: &'a str,
        codec: SerializeType,
        metadata: &'a [(String, String)],
        payload: &'a [u8],
    ) -> Request<'a> {
        Request {
            path: &self.service,
            method,
            serialize: codec,
            metadata,
            payload,
            timeout: self.options.timeout,
        }
    }

    fn select(
        &self,
        method: &str,
        payload: &[u8],
        args_v: &dyn Fn() -> String,
    ) -> Result<Client, Error> {
        self.refresh();
        let pool = self.pool.borrow();
        let call = SelectCall {
            servers: &pool.servers,
            service: &self.service,
            method,
            payload,
        };
        let index = self
            .select
            .borrow_mut()
            .select(&call, args_v)
            .ok_or_else(|| Error::NoServer(self.service.clone()))?;
        Ok(pool.clients[index].clone())
    }

    /// One call under the fail mode; `attempt` makes one try on one server's client.
    async fn run<'a, T: 'a>(
        &'a self,
        method: &str,
        payload: &[u8],
        args_v: &dyn Fn() -> String,
        attempt: impl Fn(Client) -> Attempt<'a, T>,
    ) -> Result<T, Error> {
        let mut server = self.select(method, payload, args_v)?;
        match self.fail_mode {
            FailMode::Failfast => attempt(server).await,
            FailMode::Failover | FailMode::Failtry => {
                let mut tries = 0;
                loop {
                    let error = match attempt(server.clone()).await {
                        Ok(value) => return Ok(value),
                        Err(e) => e,
                    };
                    if !error.is_retryable() || tries == self.options.retries {
                        return Err(error);
                    }
                    tries += 1;
                    if self.fail_mode == FailMode::Failover {
                        server = self.select(method, payload, args_v)?;
                    }
                }
            }
            FailMode::Failbackup => {
                let mut first = attempt(server);
                let backup = self.options.backup_latency;
                let early = futures_lite::future::or(async { Some(first.as_mut().await) }, async {
                    glommio::timer::Timer::new(backup).await;
                    None
                })
                .await;
                if let Some(result) = early {
                    return result;
                }
                server = match self.select(method, payload, args_v) {
                    Ok(s) => s,
                    Err(_) => return first.await,
                };
                let second = attempt(server);
                first_success(first, second).await
            }
        }
    }

    async fn all<A: Payload + Serialize, R: Payload>(
        &self,
        method: &str,
        args: &A,
        every: bool,
    ) -> Result<R, Error> {
        self.refresh();
        let clients = self.pool.borrow().clients.clone();
        if clients.is_empty() {
            return Err(Error::NoServer(self.service.clone()));
        }
        let codec = self.options.serialize;
        let payload = encode(args, codec)?;
        let req = self.request(method, codec, &[], &payload);
        let mut calls: Vec<Option<Attempt<'_, R>>> = clients
            .iter()
            .map(|c| Some(Box::pin(c.call_with(&req, |r| r.decode::<R>())) as Attempt<'_, R>))
            .collect();
        let mut value = None;
        let mut last_error = None;
        poll_fn(|cx| {
            for slot in calls.iter_mut() {
                let Some(call) = slot else { continue };
                let Poll::Ready(result) = call.as_mut().poll(cx) else {
                    continue;
                };
                *slot = None;
                match result {
                    Ok(v) if !every => return Poll::Ready(Ok(v)),
                    Ok(v) => {
                        if value.is_none() {
                            value = Some(v);
                        }
                    }
                    Err(e) if every => return Poll::Ready(Err(e)),
                    Err(e) => last_error = Some(e),
                }
            }
            if calls.iter().any(Option::is_some) {
                return Poll::Pending;
            }
            Poll::Ready(match (value.take(), last_error.take()) {
                (Some(v), _) => Ok(v),
                (None, Some(e)) => Err(e),
                (None, None) => Err(Error::NoServer(self.service.clone())),
            })
        })
        .await
    }
}

impl Pool {
    /// The pool for `servers`, reusing this one's client of each server still listed; a server
    /// whose address percore cannot dial is left out with a warning.
    fn update(&self, servers: Vec<ServerEntry>, options: &Rc<Options>) -> Pool {
        let mut next = Pool::default();
        for server in servers {
            let kept = self
                .servers
                .iter()
                .position(|s| s.address == server.address)
                .map(|i| self.clients[i].clone());
            let client = match kept {
                Some(c) => c,
                None => match server.dial_addr() {
                    Ok(addr) => Client::with_addr(addr, Rc::clone(options)),
                    Err(e) => {
                        tracing::warn!(error = %e, "discovery: a server percore cannot dial is left out");
                        continue;
                    }
                },
            };
            next.servers.push(server);
            next.clients.push(client);
        }
        next
    }
}

fn encode<A: Payload>(args: &A, codec: SerializeType) -> Result<Vec<u8>, Error> {
    let mut payload = Vec::new();
    args.encode(codec, &mut payload)?;
    Ok(payload)
}

/// Runs two calls; the first success wins, and when one fails the other is awaited. Both
/// failing gives the first call's error.
async fn first_success<T>(a: Attempt<'_, T>, b: Attempt<'_, T>) -> Result<T, Error> {
    let mut calls = [Some(a), Some(b)];
    let mut errors: [Option<Error>; 2] = [None, None];
    poll_fn(|cx| {
        for (i, call) in calls.iter_mut().enumerate() {
            let Some(fut) = call else { continue };
            if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                *call = None;
                match result {
                    Ok(v) => return Poll::Ready(Ok(v)),
                    Err(e) => errors[i] = Some(e),
                }
            }
        }
        match (errors[0].take(), errors[1].take()) {
            (Some(e), Some(_)) => Poll::Ready(Err(e)),
            (e0, e1) => {
                errors = [e0, e1];
                Poll::Pending
            }
        }
    })
    .await
}

/// A byte slice that serializes as bytes (Go `[]byte`), for the raw call's hash key.
struct ByteSlice<'a>(&'a [u8]);

impl Serialize for ByteSlice<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}
