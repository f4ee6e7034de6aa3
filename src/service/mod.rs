//! The registration API: the services a server hosts, declared in the user's own crate.
//!
//! A **service** is a type whose value is the service's per-core state (built once on each core
//! from its `[services.NAME]` config section, used only there) and whose methods are its rpcx
//! methods. The [`service!`](crate::service!) macro declares its methods and how each is called:
//!
//! | kind | handler | what it is for |
//! |---|---|---|
//! | `sync` | `fn(&self, Args) -> Result<Reply, ServiceError>` | the fast path: runs inline in the connection loop |
//! | `async` | `async fn(&self, Args) -> Result<Reply, ServiceError>` | a local task on the core (no `Send` bound): timers, sockets, calls to other rpcx servers |
//! | `raw` | `fn(&self, &Request, &mut Reply) -> Result<Outcome, ServiceError>` | the bytes themselves: any codec, reply metadata |
//!
//! `Args` and `Reply` of typed handlers are serde types, decoded and encoded with the request's
//! serialize type (JSON or MsgPack; a nil or empty payload is `Args::default()`, as in Go).
//!
//! A **registry** is the set of services one server binary hosts: the
//! [`registry!`](crate::registry!) macro makes a struct with one field per service (its
//! per-core state) and implements [`Registry`]: the lookup is a `match` on the rpcx names, the
//! dispatch an `if` chain on constant indices, everything monomorphised (no `dyn`, no map, no
//! allocation to find or call a sync method). The server, the gateway, JSON-RPC and the metrics
//! are generic over it. [`builtin::Builtin`] (Arith, Echo, Hello) is the default binary's.
//!
//! ```
//! use std::cell::Cell;
//! use percore::service::{CoreInfo, ServiceError};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(deny_unknown_fields)]
//! struct CounterConfig { start: u64 }
//!
//! struct Counter { core: usize, count: Cell<u64> }
//!
//! impl Counter {
//!     fn new(core: &CoreInfo, config: &CounterConfig) -> Counter {
//!         Counter { core: core.index, count: Cell::new(config.start) }
//!     }
//!     fn next(&self, step: u64) -> Result<(usize, u64), ServiceError> {
//!         self.count.set(self.count.get() + step);
//!         Ok((self.core, self.count.get()))
//!     }
//! }
//!
//! percore::service! {
//!     Counter(config: CounterConfig) {
//!         "Next" => sync next,
//!     }
//! }
//!
//! percore::registry! {
//!     /// This binary's services.
//!     pub struct MyServices {
//!         counter: "Counter" => Counter,
//!         arith: "Arith" => percore::builtin::Arith,
//!     }
//! }
//! ```
//!
//! Handlers must not block their core: blocking work belongs on a thread of its own, its answer
//! awaited from an async handler (for example through a `futures` oneshot channel).

pub mod builtin;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, CodecError, SerializeType};
use crate::protocol::{Metadata, push_meta};

/// Where a service's per-core state is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreInfo {
    /// Which core (executor index, 0-based).
    pub index: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// How many cores the server runs.
    pub cores: usize,
}

/// What a handler sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub codec: SerializeType,
    pub metadata: Metadata<'a>,
    /// The payload, already decompressed.
    pub payload: &'a [u8],
}

/// Where a handler writes its reply: metadata entries and payload bytes, into buffers the
/// connection reuses from call to call.
pub struct Reply<'s> {
    meta: &'s mut Vec<u8>,
    payload: &'s mut Vec<u8>,
}

impl<'s> Reply<'s> {
    /// A reply writing into the given (cleared) buffers.
    #[inline]
    pub fn new(meta: &'s mut Vec<u8>, payload: &'s mut Vec<u8>) -> Reply<'s> {
        meta.clear();
        payload.clear();
        Reply { meta, payload }
    }

    /// Adds a reply metadata entry.
    pub fn meta(&mut self, key: &str, value: &str) {
        push_meta(self.meta, key.as_bytes(), value.as_bytes());
    }

    /// The metadata block, to append entries to in wire form.
    pub fn meta_block(&mut self) -> &mut Vec<u8> {
        self.meta
    }

    /// The payload buffer, to append the encoded reply to.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        self.payload
    }
}

/// What the connection does with a successful call.
pub enum Outcome {
    /// The reply is in the [`Reply`]: send it now.
    Ready,
    /// The reply is in the [`Reply`]: send it after this much time (simulated work), without
    /// holding up other calls.
    After(Duration),
    /// An async handler is running: its reply goes out when it finishes, other calls go on
    /// meanwhile (replies may be out of order; clients match them by seq).
    Pending(Pending),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ready => f.write_str("Ready"),
            Outcome::After(d) => f.debug_tuple("After").field(d).finish(),
            Outcome::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// An async handler's call in progress; it resolves to the encoded reply payload.
pub struct Pending(Pin<Box<dyn Future<Output = Result<Vec<u8>, ServiceError>>>>);

impl Pending {
    /// A call that resolves to `future`'s encoded reply.
    pub fn new(future: impl Future<Output = Result<Vec<u8>, ServiceError>> + 'static) -> Pending {
        Pending(Box::pin(future))
    }
}

impl Future for Pending {
    type Output = Result<Vec<u8>, ServiceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// An error a handler returns: its text goes to the client in `__rpcx_error__`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub Cow<'static, str>);

impl ServiceError {
    /// An error with this text.
    pub fn new(text: impl Into<Cow<'static, str>>) -> ServiceError {
        ServiceError(text.into())
    }
}

impl From<CodecError> for ServiceError {
    fn from(e: CodecError) -> Self {
        ServiceError(Cow::Owned(e.to_string()))
    }
}

impl From<&'static str> for ServiceError {
    fn from(text: &'static str) -> Self {
        ServiceError(Cow::Borrowed(text))
    }
}

impl From<String> for ServiceError {
    fn from(text: String) -> Self {
        ServiceError(Cow::Owned(text))
    }
}

/// A (service, method) that is not registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    NoService,
    NoMethod,
}

impl LookupError {
    /// rpcx's exact error text (clients match on it).
    pub fn text(self, path: &str, method: &str) -> String {
        match self {
            LookupError::NoService => format!("rpcx: can't find service {path}"),
            LookupError::NoMethod => format!("rpcx: can't find method {method}"),
        }
    }
}

/// A service: its per-core state, its config section and its methods. Implemented by
/// [`service!`](crate::service!) (or by hand, as the built-ins do).
pub trait Service: Sized + 'static {
    /// Its `[services.NAME]` section (absent: `Default`). Use `#[serde(deny_unknown_fields)]`
    /// so a typo is an error naming the key.
    type Config: DeserializeOwned + Default;

    /// The rpcx method names, in the order [`Service::call`] numbers them.
    const METHODS: &'static [&'static str];

    /// Builds the state of one core (on that core's thread).
    fn new(core: &CoreInfo, config: &Self::Config) -> Self;

    /// The number of a method, from its rpcx name.
    fn lookup(method: &str) -> Option<usize> {
        Self::METHODS.iter().position(|m| *m == method)
    }

    /// Runs method number `method`. The caller has checked that the serialize type has a codec.
    fn call(
        self: &Rc<Self>,
        method: usize,
        req: &Request<'_>,
        reply: &mut Reply<'_>,
    ) -> Result<Outcome, ServiceError>;
}

/// A registered method: its service, its number in the service, and its index among all the
/// registry's methods (for per-method counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MethodId {
    pub service: u16,
    pub method: u16,
    pub index: u32,
}

/// A `[services.NAME]` section that cannot be used; `key` is `services.NAME`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SectionError {
    pub key: String,
    pub message: String,
}

/// The services one server binary hosts. Implemented by [`registry!`](crate::registry!); the
/// value is one core's state of every service.
pub trait Registry: Sized + 'static {
    /// (service, its methods), in registration order.
    const SERVICES: &'static [(&'static str, &'static [&'static str])];

    /// Finds a method by its rpcx names (a `match`, no allocation).
    fn lookup(path: &str, method: &str) -> Result<MethodId, LookupError>;

    /// Checks every `[services.NAME]` section: each names a registered service and
    /// deserialises into its config type.
    fn check(sections: &toml::Table) -> Result<(), SectionError>;

    /// Builds one core's state of every service.
    fn build(core: &CoreInfo, sections: &toml::Table) -> Result<Self, SectionError>;

    /// Runs a method looked up with [`Registry::lookup`].
    fn call(
        &self,
        id: MethodId,
        req: &Request<'_>,
        reply: &mut Reply<'_>,
    ) -> Result<Outcome, ServiceError>;

    /// Every method as (service, method), in [`MethodId::index`] order.
    fn method_names() -> Vec<(&'static str, &'static str)> {
        Self::SERVICES
            .iter()
            .flat_map(|(s, methods)| methods.iter().map(move |m| (*s, *m)))
            .collect()
    }
}

/// One service's config from its section (or the default when there is none).
pub fn section<C: DeserializeOwned + Default>(
    sections: &toml::Table,
    name: &str,
) -> Result<C, SectionError> {
    match sections.get(name) {
        None => Ok(C::default()),
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| SectionError {
                key: format!("services.{name}"),
                message: e.message().trim_end().replace('\n', " "),
            }),
    }
}

/// Refuses a section that names no registered service.
pub fn known_sections(sections: &toml::Table, names: &[&str]) -> Result<(), SectionError> {
    match sections.keys().find(|k| !names.contains(&k.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(SectionError {
            key: format!("services.{unknown}"),
            message: format!(
                "no service {unknown:?} is registered (services: {})",
                names.join(", ")
            ),
        }),
    }
}

/// Where `name` is in `names` (a registry's own names; it is always there).
pub const fn position(names: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < names.len() {
        if eq(names[i].as_bytes(), name.as_bytes()) {
            return i;
        }
        i += 1;
    }
    panic!("a name that is not registered")
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The first method index of each service: the running sum of their method counts.
pub const fn offsets<const N: usize>(counts: [usize; N]) -> [usize; N] {
    let mut out = [0; N];
    let mut i = 1;
    while i < N {
        out[i] = out[i - 1] + counts[i - 1];
        i += 1;
    }
    out
}

/// Decodes typed args with the request's serialize type (a nil or empty payload is the default).
fn decode_args<A: DeserializeOwned + Default>(req: &Request<'_>) -> Result<A, ServiceError> {
    Ok(codec::decode_serde_or_default(
        req.codec,
        req.payload,
        "the args",
    )?)
}

/// The adapter of a `sync` handler: decode, call, encode, with the request's serialize type.
pub fn call_sync<S, A, R>(
    state: &S,
    req: &Request<'_>,
    reply: &mut Reply<'_>,
    handler: impl FnOnce(&S, A) -> Result<R, ServiceError>,
) -> Result<Outcome, ServiceError>
where
    A: DeserializeOwned + Default,
    R: Serialize,
{
    let args = decode_args(req)?;
    let value = handler(state, args)?;
    codec::encode_serde(&value, req.codec, reply.payload(), "the reply")?;
    Ok(Outcome::Ready)
}

/// The adapter of an `async` handler: the args are decoded now (from the request's bytes); the
/// handler runs as a local task holding its core's state, and its reply is encoded when it is
/// done. One allocation per call: the boxed future (plus the reply's own buffer).
pub fn call_async<S, A, R>(
    state: &Rc<S>,
    req: &Request<'_>,
    handler: impl AsyncFnOnce(&S, A) -> Result<R, ServiceError> + 'static,
) -> Result<Outcome, ServiceError>
where
    S: 'static,
    A: DeserializeOwned + Default + 'static,
    R: Serialize,
{
    let args: A = decode_args(req)?;
    let codec = req.codec;
    let state = Rc::clone(state);
    Ok(Outcome::Pending(Pending::new(async move {
        let value = handler(&state, args).await?;
        let mut out = Vec::new();
        codec::encode_serde(&value, codec, &mut out, "the reply")?;
        Ok(out)
    })))
}

/// Declares a [`Service`]: its config type and its methods with their rpcx names and kinds
/// (`sync`, `async`, `raw`; see the [module docs](crate::service)). The type needs an inherent
/// `fn new(core: &CoreInfo, config: &ConfigType) -> Self`.
#[macro_export]
macro_rules! service {
    ($ty:ident (config: $cfg:ty) { $( $name:literal => $kind:tt $handler:ident ),* $(,)? }) => {
        impl $crate::service::Service for $ty {
            type Config = $cfg;
            const METHODS: &'static [&'static str] = &[ $( $name ),* ];

            fn new(core: &$crate::service::CoreInfo, config: &$cfg) -> Self {
                $ty::new(core, config)
            }

            #[inline]
            fn lookup(method: &str) -> Option<usize> {
                match method {
                    $( $name => Some(const {
                        $crate::service::position(<$ty as $crate::service::Service>::METHODS, $name)
                    }), )*
                    _ => None,
                }
            }

            #[inline]
            fn call(
                self: &::std::rc::Rc<Self>,
                method: usize,
                req: &$crate::service::Request<'_>,
                reply: &mut $crate::service::Reply<'_>,
            ) -> Result<$crate::service::Outcome, $crate::service::ServiceError> {
                $(
                    if method == const {
                        $crate::service::position(<$ty as $crate::service::Service>::METHODS, $name)
                    } {
                        return $crate::__percore_call!($kind, self, $ty::$handler, req, reply);
                    }
                )*
                Err($crate::service::ServiceError::new("rpcx: can't find method"))
            }
        }
    };
}

/// One handler call, by kind (used by [`service!`](crate::service!)).
#[doc(hidden)]
#[macro_export]
macro_rules! __percore_call {
    (sync, $state:expr, $handler:path, $req:expr, $reply:expr) => {
        $crate::service::call_sync(&**$state, $req, $reply, $handler)
    };
    (async, $state:expr, $handler:path, $req:expr, $reply:expr) => {
        $crate::service::call_async($state, $req, $handler)
    };
    (raw, $state:expr, $handler:path, $req:expr, $reply:expr) => {
        $handler(&**$state, $req, $reply)
    };
}

/// Declares a registry: a struct with one field per service (one core's state of it) and its
/// [`Registry`] implementation. Each entry is `field: "RpcxName" => ServiceType`.
#[macro_export]
macro_rules! registry {
    ($(#[$meta:meta])* $vis:vis struct $reg:ident { $( $field:ident : $name:literal => $ty:ty ),* $(,)? }) => {
        $(#[$meta])*
        $vis struct $reg {
            $( $field: ::std::rc::Rc<$ty>, )*
        }

        impl $reg {
            const __NAMES: &'static [&'static str] = &[ $( $name ),* ];
            const __OFFSETS: [usize; [ $( $name ),* ].len()] = $crate::service::offsets([
                $( <$ty as $crate::service::Service>::METHODS.len() ),*
            ]);
        }

        impl $crate::service::Registry for $reg {
            const SERVICES: &'static [(&'static str, &'static [&'static str])] = &[
                $( ($name, <$ty as $crate::service::Service>::METHODS) ),*
            ];

            #[inline]
            fn lookup(
                path: &str,
                method: &str,
            ) -> Result<$crate::service::MethodId, $crate::service::LookupError> {
                match path {
                    $( $name => {
                        const S: usize = $crate::service::position($reg::__NAMES, $name);
                        match <$ty as $crate::service::Service>::lookup(method) {
                            Some(m) => Ok($crate::service::MethodId {
                                service: S as u16,
                                method: m as u16,
                                index: ($reg::__OFFSETS[S] + m) as u32,
                            }),
                            None => Err($crate::service::LookupError::NoMethod),
                        }
                    } )*
                    _ => Err($crate::service::LookupError::NoService),
                }
            }

            fn check(sections: &$crate::toml::Table) -> Result<(), $crate::service::SectionError> {
                $crate::service::known_sections(sections, $reg::__NAMES)?;
                $( $crate::service::section::<<$ty as $crate::service::Service>::Config>(sections, $name)?; )*
                Ok(())
            }

            fn build(
                core: &$crate::service::CoreInfo,
                sections: &$crate::toml::Table,
            ) -> Result<Self, $crate::service::SectionError> {
                Self::check(sections)?;
                Ok($reg {
                    $( $field: ::std::rc::Rc::new(<$ty as $crate::service::Service>::new(
                        core,
                        &$crate::service::section(sections, $name)?,
                    )), )*
                })
            }

            // Inlined into the connection loop: the service chosen by a constant compare, and
            // the request and reply passed without a call frame between them.
            #[inline(always)]
            fn call(
                &self,
                id: $crate::service::MethodId,
                req: &$crate::service::Request<'_>,
                reply: &mut $crate::service::Reply<'_>,
            ) -> Result<$crate::service::Outcome, $crate::service::ServiceError> {
                $(
                    if id.service as usize == const { $crate::service::position($reg::__NAMES, $name) } {
                        return <$ty as $crate::service::Service>::call(
                            &self.$field,
                            id.method as usize,
                            req,
                            reply,
                        );
                    }
                )*
                Err($crate::service::ServiceError::new("rpcx: can't find service"))
            }
        }
    };
}
