//! `percore serve` as the real binary: config handling and serving on the embedded default.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_percore"))
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("percore-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

#[test]
fn check_config_accepts_the_documented_file() {
    let out = percore()
        .args([
            "serve",
            "--check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/server.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_an_unknown_key_and_exits_78() {
    let path = temp_config("typo.toml", "[server]\ncorez = 2\n");
    let out = percore()
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corez"), "{stderr}");
}

#[test]
fn check_config_names_a_bad_value() {
    let path = temp_config("bad.toml", "[runtime]\nring_depth = 100\n");
    let out = percore()
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtime.ring_depth"));
    let out = percore()
        .args([
            "serve",
            "--check-config",
            "--config",
            "/nonexistent/percore.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/percore.toml"));
}

#[test]
fn print_config_shows_flag_overrides() {
    let path = temp_config("cores.toml", "[server]\ncores = 1\nbacklog = 77\n");
    let out = percore()
        .args([
            "serve",
            "--print-config",
            "--listen",
            "reuseport@127.0.0.1:9999",
            "--cores",
            "2",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed =
        percore::config::Config::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed.server.cores, 2, "the flag wins over the file");
    assert_eq!(printed.server.backlog, 77, "the file wins over the default");
    assert_eq!(
        printed.server.listen[0].to_string(),
        "reuseport@127.0.0.1:9999"
    );
}

#[test]
fn serve_answers_calls_and_stops_on_sigterm() {
    // Find a free port, then let the server bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = percore()
        .args([
            "serve",
            "--cores",
            "1",
            "--listen",
            &format!("tcp@127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < common::IO_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("server never listened: {e}");
            }
        }
    };
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    common::send(
        &mut s,
        &common::request(3, 1, "Arith", "Mul", &common::msgpack_args(10, 20)),
    );
    assert_eq!(
        common::msgpack_reply(&common::read_frame(&mut s).payload),
        200
    );
    drop(s);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > common::IO_TIMEOUT {
            let _ = child.kill();
            panic!("server did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn environment_sits_between_the_file_and_the_flags() {
    let path = temp_config(
        "env.toml",
        "[server]\ncores = 1\nbacklog = 77\nlisten = [\"tcp@127.0.0.1:1\"]\n",
    );
    let out = percore()
        .args(["serve", "--print-config", "--cores", "2"])
        .env("PERCORE_CONFIG", &path)
        .env("PERCORE_CORES", "3")
        .env("PERCORE_LISTEN", "tcp@127.0.0.1:2,reuseport@127.0.0.1:3")
        .env("PERCORE_LOG", "debug")
        .args(["--set", "limits.idle_timeout=5m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed =
        percore::config::Config::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed.server.backlog, 77, "PERCORE_CONFIG names the file");
    assert_eq!(
        printed.server.cores, 2,
        "the flag wins over the environment"
    );
    assert_eq!(
        printed.server.listen.len(),
        2,
        "the environment wins over the file"
    );
    assert_eq!(printed.log.level, "debug");
    assert_eq!(printed.limits.idle_timeout, Duration::from_secs(300));
}

#[test]
fn a_bad_environment_value_exits_78_naming_the_variable() {
    let out = percore()
        .args(["serve", "--check-config"])
        .env("PERCORE_CORES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.cores") && stderr.contains("PERCORE_CORES"),
        "{stderr}"
    );
    let out = percore()
        .args([
            "serve",
            "--check-config",
            "--set",
            "limits.max_calls_in_flight=0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.max_calls_in_flight") && stderr.contains("--set"),
        "{stderr}"
    );
}

#[test]
fn print_config_does_not_show_auth_tokens() {
    let out = percore()
        .args([
            "serve",
            "--print-config",
            "--set",
            r#"auth.tokens=["s3cret"]"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("s3cret") && stdout.contains("<redacted>"),
        "{stdout}"
    );
}

#[test]
fn a_core_that_cannot_start_ends_the_process_with_the_reason() {
    // io_uring refuses rings over 32768 entries: the executor fails to build. The process must
    // say so and exit non-zero, not wait forever for that core to become ready.
    let mut child = percore()
        .args(["serve", "--cores", "1", "--listen", "tcp@127.0.0.1:0"])
        .args(["--set", "runtime.ring_depth=65536"])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > common::IO_TIMEOUT {
            let _ = child.kill();
            panic!("serve hung on a core that could not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // 71 (EX_OSERR): the kernel would not give us the executor.
    assert_eq!(status.code(), Some(71));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("cannot start the executor"), "{stderr}");
}

#[test]
fn help_names_every_environment_variable() {
    let out = percore().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (var, _) in percore::config::ENV_VARS {
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }
    assert!(help.contains(percore::config::ENV_CONFIG));
}
