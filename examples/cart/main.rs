//! A team's own rpcx server, built on percore's public API only: the example of "Writing your
//! own service" in the README.
//!
//! `Cart` has per-core state (a call counter, and a client of a pricing server), its own config
//! section `[services.Cart]`, a sync method, an async method that calls another rpcx server and
//! combines the answers, and a method that shows its core's state. The built-in `Arith` is
//! registered beside it.
//!
//! ```sh
//! cargo run --release --example cart -- serve --listen tcp@127.0.0.1:8972 \
//!     --set 'services.Cart.pricing="tcp@127.0.0.1:8973"'
//! percore call tcp@127.0.0.1:8972 Cart.Total '{"Items":[1,2,3]}'
//! ```

use std::cell::Cell;
use std::process::ExitCode;
use std::time::Duration;

use percore::builtin::{ArithArgs, ArithReply};
use percore::client::{Client, Options};
use percore::service::{CoreInfo, ServiceError};
use percore::transport::addr::Addr;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A cart: the prices of its items (Go: `type TotalArgs struct { Items []int64 }`).
#[derive(serde::Deserialize, serde::Serialize, Default)]
struct TotalArgs {
    #[serde(rename = "Items")]
    items: Vec<i64>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct TotalReply {
    #[serde(rename = "Sum")]
    sum: i64,
    /// Which core answered.
    #[serde(rename = "Core")]
    core: usize,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct PricedReply {
    #[serde(rename = "Sum")]
    sum: i64,
    /// The sum times the pricing server's rate, as its `Arith.Mul` computed it.
    #[serde(rename = "Price")]
    price: i64,
    #[serde(rename = "Core")]
    core: usize,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct StatsReply {
    #[serde(rename = "Core")]
    core: usize,
    /// Calls to Cart served by this core since it started.
    #[serde(rename = "Calls")]
    calls: u64,
}

/// `[services.Cart]`; an unknown key is an error that names it.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CartConfig {
    /// The rpcx server whose `Arith.Mul` prices a cart (`network@host:port`); unset: `Priced`
    /// answers an error.
    pricing: Option<Addr>,
    /// What `Priced` multiplies the sum by (default 1).
    rate: Option<i64>,
}

/// One core's cart service: built on that core, used only there (no locks, no atomics).
struct Cart {
    core: usize,
    calls: Cell<u64>,
    rate: i64,
    /// This core's own connection to the pricing server (a client belongs to its core).
    pricing: Option<Client>,
}

impl Cart {
    fn new(core: &CoreInfo, config: &CartConfig) -> Cart {
        let options = Options {
            timeout: Some(Duration::from_secs(5)),
            ..Options::default()
        };
        Cart {
            core: core.index,
            calls: Cell::new(0),
            rate: config.rate.unwrap_or(1),
            // The address was checked when the config was read; a client dials lazily.
            pricing: config
                .pricing
                .as_ref()
                .and_then(|addr| Client::new(&addr.to_string(), options).ok()),
        }
    }

    fn counted(&self) {
        self.calls.set(self.calls.get() + 1);
    }

    /// Sync: the fast path, inline in the connection loop.
    fn total(&self, args: TotalArgs) -> Result<TotalReply, ServiceError> {
        self.counted();
        Ok(TotalReply {
            sum: args.items.iter().fold(0i64, |a, b| a.wrapping_add(*b)),
            core: self.core,
        })
    }

    /// Async: a local task on this core; it awaits another rpcx server while the connection
    /// goes on serving other calls.
    async fn priced(&self, args: TotalArgs) -> Result<PricedReply, ServiceError> {
        self.counted();
        let Some(pricing) = &self.pricing else {
            return Err(ServiceError::new(
                "no pricing server ([services.Cart] pricing is not set)",
            ));
        };
        let sum = args.items.iter().fold(0i64, |a, b| a.wrapping_add(*b));
        let reply: ArithReply = pricing
            .call(
                "Arith",
                "Mul",
                &ArithArgs {
                    a: sum,
                    b: self.rate,
                },
            )
            .await
            .map_err(|e| ServiceError::new(format!("pricing server: {e}")))?;
        Ok(PricedReply {
            sum,
            price: reply.c,
            core: self.core,
        })
    }

    /// This core's state.
    fn stats(&self, _: ()) -> Result<StatsReply, ServiceError> {
        Ok(StatsReply {
            core: self.core,
            calls: self.calls.get(),
        })
    }
}

percore::service! {
    Cart(config: CartConfig) {
        "Total" => sync total,
        "Priced" => async priced,
        "Stats" => sync stats,
    }
}

percore::registry! {
    /// What this binary serves.
    pub struct CartServices {
        cart: "Cart" => Cart,
        arith: "Arith" => percore::builtin::Arith,
    }
}

fn main() -> ExitCode {
    // serve, call, bench, --check-config, signals, systemd notify, metrics: all of percore's.
    percore::cli::main::<CartServices>()
}
