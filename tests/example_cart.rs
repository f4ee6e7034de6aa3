//! examples/cart, the README's "Writing your own service", as its users run it: the example
//! binary serving, `percore call` calling it, a second percore pricing its carts.

mod common;

use std::process::{Command, Stdio};

use common::ServeProcess;
use serde_json::Value;

fn percore_call(addr: &str, method: &str, args: &str) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["call", addr, method, args, "--timeout", "10s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

#[test]
fn the_example_serves_its_own_services_and_calls_another_server() {
    let pricing = ServeProcess::start("");
    let cart = ServeProcess::start_binary(
        &common::example_binary("cart"),
        &format!(
            "[services.Cart]\npricing = \"{}\"\nrate = 3\n",
            pricing.addr
        ),
    );
    let (ok, json, err) = percore_call(&cart.addr, "Cart.Total", r#"{"Items":[1,2,3]}"#);
    assert!(ok, "{err}");
    assert_eq!(json["reply"]["Sum"], 6);
    // Async: the cart server asks the pricing server's Arith.Mul for 6 x 3.
    let (ok, json, err) = percore_call(&cart.addr, "Cart.Priced", r#"{"Items":[1,2,3]}"#);
    assert!(ok, "{err}");
    assert_eq!(
        (json["reply"]["Sum"].clone(), json["reply"]["Price"].clone()),
        (6.into(), 18.into())
    );
    // The built-in Arith is registered beside Cart; per-core state counted both Cart calls.
    let (ok, json, _) = percore_call(&cart.addr, "Arith.Mul", r#"{"A":6,"B":7}"#);
    assert!(ok);
    assert_eq!(json["reply"]["C"], 42);
    let (ok, json, _) = percore_call(&cart.addr, "Cart.Stats", "null");
    assert!(ok);
    assert_eq!(json["reply"]["Calls"], 2);
    // An unknown method of a user service gets rpcx's own text.
    let (ok, _, err) = percore_call(&cart.addr, "Cart.Nope", "null");
    assert!(!ok && err.contains("rpcx: can't find method Nope"), "{err}");
}

#[test]
fn a_bad_key_in_the_services_own_section_is_a_config_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("percore-cart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "typo.toml",
            "[services.Cart]\nprcing = \"tcp@127.0.0.1:1\"\n",
            "prcing",
        ),
        (
            "address.toml",
            "[services.Cart]\npricing = \"udp@x:1\"\n",
            "udp",
        ),
        ("unknown.toml", "[services.Basket]\n", "Basket"),
    ];
    for (name, toml, named) in cases {
        let path = dir.join(name);
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(common::example_binary("cart"))
            .args(["serve", "--check-config", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        assert!(
            err.contains("services.") && err.contains(named),
            "{name}: {err}"
        );
    }
}
