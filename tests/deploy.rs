//! The real binary on hosts that deny it something: io_uring denied by seccomp, memlock too
//! low, and the syscall filters percore ships with (the systemd unit's and deploy/seccomp.json).
//!
//! The filters are applied by tests/seccomp/run_filtered.py with libseccomp (Debian's
//! python3-seccomp, installed by .ci/run), the library systemd and runc use themselves.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PERCORE: &str = env!("CARGO_BIN_EXE_percore");
/// How long a start-up failure may take before the test calls it a hang. Not a timing
/// assertion: the point is that the process exits instead of hanging or panicking.
const EXIT_BOUND: Duration = Duration::from_secs(10);
const EX_OSERR: i32 = 71;
/// From linux/capability.h.
const CAP_IPC_LOCK: libc::c_ulong = 14;

/// The system Python (not a pyenv shim), where Debian's python3-seccomp is importable.
const PYTHON: &str = "/usr/bin/python3";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `run_filtered.py MODE PARAMS -- percore ARGS`.
fn filtered(mode: &str, params: &[&str], args: &[&str]) -> Command {
    let probe = Command::new(PYTHON).args(["-c", "import seccomp"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "these tests need Debian's python3-seccomp for {PYTHON} (apt-get install \
         python3-seccomp; .ci/run installs it): {probe:?}"
    );
    let mut cmd = Command::new(PYTHON);
    cmd.arg(repo().join("tests/seccomp/run_filtered.py"))
        .arg(mode)
        .args(params)
        .arg("--")
        .arg(PERCORE)
        .args(args)
        .env_remove("RUST_LOG")
        // A backtrace, if one escaped, would show with this set: the tests look for it.
        .env("RUST_BACKTRACE", "1");
    cmd
}

/// Runs a command that must exit by itself, bounded by [`EXIT_BOUND`].
fn run_to_exit(mut cmd: Command) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > EXIT_BOUND {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {EXIT_BOUND:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

/// Exit 71, exactly one line on stderr that contains every one of `words`, no panic.
fn assert_host_failure(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_OSERR), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    for word in words {
        assert!(lines[0].contains(word), "{word:?} missing in: {stderr}");
    }
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} in: {stderr}");
    }
}

#[test]
fn serve_exits_71_naming_seccomp_when_io_uring_setup_is_denied() {
    let cmd = filtered(
        "deny",
        &["io_uring_setup"],
        &["serve", "--listen", "tcp@127.0.0.1:0"],
    );
    let (out, took) = run_to_exit(cmd);
    assert_host_failure(
        &out,
        &["io_uring_setup", "seccomp", "EPERM", "seccomp.json"],
    );
    eprintln!("exited 71 after {took:?}");
}

#[test]
fn bench_exits_71_naming_seccomp_when_io_uring_setup_is_denied() {
    let cmd = filtered(
        "deny",
        &["io_uring_setup"],
        &["bench", "-s", "tcp@127.0.0.1:9", "-n", "1", "--quiet"],
    );
    let (out, _) = run_to_exit(cmd);
    assert_host_failure(&out, &["io_uring_setup", "seccomp"]);
}

/// `percore serve` with RLIMIT_MEMLOCK at `limit`; with `drop_ipc_lock`, CAP_IPC_LOCK is
/// taken out of the bounding set first, so a root test run is charged like a service user.
fn serve_with_memlock(limit: u64, drop_ipc_lock: bool, args: &[&str]) -> Command {
    let mut cmd = Command::new(PERCORE);
    cmd.arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1");
    // SAFETY: prctl and setrlimit are async-signal-safe and touch nothing of the parent's.
    unsafe {
        cmd.pre_exec(move || {
            if drop_ipc_lock {
                // Fails without CAP_SETPCAP, i.e. when not root: then there is no CAP_IPC_LOCK
                // to drop either.
                libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0);
            }
            let low = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &low) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn serve_exits_71_naming_memlock_when_the_limit_is_below_glommios_floor() {
    let cmd = serve_with_memlock(64 << 10, false, &["--listen", "tcp@127.0.0.1:0"]);
    let (out, _) = run_to_exit(cmd);
    assert_host_failure(
        &out,
        &["memlock", "64 KiB", "LimitMEMLOCK", "--ulimit memlock"],
    );
}

#[test]
fn serve_warns_on_one_line_and_serves_when_memlock_cannot_hold_the_io_buffers() {
    // One core's three rings each register 512 KiB (runtime.io_memory_bytes): 1 MiB is short
    // whether or not transparent huge pages inflate the charge, but above glommio's floor.
    // glommio then skips registering the buffers, which network I/O does not use: percore says
    // so once and serves.
    let args = ["--cores", "1", "--listen", "tcp@127.0.0.1:0"];
    let stderr = serves_a_call_under(serve_with_memlock(1 << 20, true, &args), "memlock");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("memlock limit"))
        .collect();
    assert_eq!(ours.len(), 1, "{stderr}");
    for word in [
        "WARN",
        "1 MiB",
        "1 executors x 3 rings",
        "runtime.io_memory_bytes",
    ] {
        assert!(ours[0].contains(word), "{word:?} missing in: {stderr}");
    }
    // glommio's own multi-line report of the same thing is left out.
    assert!(!stderr.contains("registering buffers"), "{stderr}");
}

#[test]
fn serve_exits_71_when_its_unix_socket_directory_is_missing() {
    let (out, _) = run_to_exit({
        let mut cmd = Command::new(PERCORE);
        cmd.args(["serve", "--listen", "unix@/nonexistent-percore-dir/s.sock"])
            .env_remove("RUST_LOG");
        cmd
    });
    assert_host_failure(&out, &["/nonexistent-percore-dir", "does not exist"]);
}

#[test]
fn serve_exits_71_with_one_line_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (out, _) = run_to_exit({
        let mut cmd = Command::new(PERCORE);
        cmd.args(["serve", "--listen", &format!("tcp@{addr}")])
            .env_remove("RUST_LOG");
        cmd
    });
    assert_host_failure(&out, &[&addr.to_string(), "in use"]);
}

#[test]
fn serve_exits_71_with_one_line_when_the_admin_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (out, _) = run_to_exit({
        let mut cmd = Command::new(PERCORE);
        cmd.args(["serve", "--listen", "tcp@127.0.0.1:0"])
            .args(["--admin-listen", &addr.to_string()])
            .env_remove("RUST_LOG")
            // The start-up lines at info would precede the failure; only the failure counts.
            .args(["--log-level", "warn"]);
        cmd
    });
    assert_host_failure(&out, &[&addr.to_string(), "admin.listen", "in use"]);
}

#[test]
fn an_unreadable_tls_key_exits_78_with_one_line() {
    // A good certificate, and a directory where its key should be: unreadable whoever runs
    // the test (root reads any file whatever its mode). A config problem: 78, which systemd
    // does not retry.
    let dir = std::env::temp_dir().join(format!("percore-key-{}", std::process::id()));
    let key = dir.join("key.pem");
    std::fs::create_dir_all(&key).unwrap();
    let cert = dir.join("cert.pem");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    let (out, _) = run_to_exit({
        let mut cmd = Command::new(PERCORE);
        cmd.args(["serve", "--listen", "tcp@127.0.0.1:0"])
            .args(["--set", &format!("tls.cert={}", cert.display())])
            .args(["--set", &format!("tls.key={}", key.display())])
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1");
        cmd
    });
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("tls.key") && stderr.contains("key.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_host_passes_here_and_names_io_uring_under_a_denying_filter() {
    let args = ["check-host", "--listen", "tcp@127.0.0.1:0"];
    let (out, _) = run_to_exit({
        let mut cmd = Command::new(PERCORE);
        cmd.args(args);
        cmd
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for check in ["io_uring", "memlock", "open files", "listen", "cores"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("OK") && l[5..].trim_start().starts_with(check)),
            "no OK line for {check}: {text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");
    for fact in ["kernel", "numa", "somaxconn", "socket buffers"] {
        assert!(text.contains(fact), "{fact} not shown: {text}");
    }

    let (out, _) = run_to_exit(filtered("deny", &["io_uring_setup"], &args));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EX_OSERR), "{text}");
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{text}");
    assert!(
        fails[0].contains("io_uring") && fails[0].contains("seccomp"),
        "{text}"
    );
}

/// A server that is killed when the test ends, however it ends.
struct Server(Option<Child>);

impl Server {
    /// Kills it and returns what it wrote to stderr.
    fn kill(mut self) -> String {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `percore serve` as `cmd` (under a filter or limit), waits for READY=1, makes one
/// `percore call` to the address it reports (unfiltered: the server is under test), stops it
/// and returns its stderr.
fn serves_a_call_under(mut cmd: Command, name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("percore-deploy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(EXIT_BOUND)).unwrap();
    let server = Server(Some(
        cmd.env("NOTIFY_SOCKET", &notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut buf = [0u8; 512];
    let ready = match systemd.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no READY=1 under the {name} filter ({e}); stderr: {}",
            server.kill()
        ),
    };
    let addr = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .to_owned();
    let call = Command::new(PERCORE)
        .args([
            "call",
            &addr,
            "Arith.Mul",
            r#"{"A":6,"B":7}"#,
            "--timeout",
            "5s",
        ])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&call.stdout);
    assert!(
        call.status.success(),
        "call under the {name} filter: {reply} {}",
        String::from_utf8_lossy(&call.stderr)
    );
    assert!(reply.contains("42"), "{reply}");
    let stderr = server.kill();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    stderr
}

/// The unit's filter lines, read from the unit itself so the test follows it.
fn unit_filter(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(|v| {
            let (neg, rest) = match v.strip_prefix('~') {
                Some(rest) => ("~", rest),
                None => ("", v),
            };
            rest.split_whitespace()
                .map(move |s| format!("{neg}{s}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!lines.is_empty(), "{unit} has no SystemCallFilter=");
    assert!(
        text.lines().any(|l| l == "SystemCallErrorNumber=EPERM"),
        "{unit}: the test applies EPERM to the rest"
    );
    lines
}

#[test]
fn serves_calls_under_the_systemd_units_syscall_filter() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("needs systemd-analyze to resolve the unit's groups (.ci/run installs systemd)");
    }
    for unit in ["percore.service", "percore@.service"] {
        let filter = unit_filter(unit);
        let params: Vec<&str> = filter.iter().map(String::as_str).collect();
        let cmd = filtered(
            "systemd",
            &params,
            &["serve", "--cores", "2", "--listen", "tcp@127.0.0.1:0"],
        );
        serves_a_call_under(cmd, unit);
    }
}

fn seccomp_json() -> PathBuf {
    repo().join("deploy/seccomp.json")
}

#[test]
fn serves_calls_under_the_shipped_container_seccomp_profile() {
    let cmd = filtered(
        "docker",
        &[seccomp_json().to_str().unwrap()],
        &["serve", "--cores", "2", "--listen", "tcp@127.0.0.1:0"],
    );
    serves_a_call_under(cmd, "seccomp.json");
}

#[test]
fn the_shipped_profile_without_io_uring_is_refused_with_exit_71() {
    // What Docker 25+ and containerd apply by default: the same profile without the three
    // io_uring syscalls.
    let text = std::fs::read_to_string(seccomp_json()).unwrap();
    let mut profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut removed = 0;
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        let names = rule["names"].as_array_mut().unwrap();
        let before = names.len();
        names.retain(|n| !n.as_str().unwrap().starts_with("io_uring_"));
        removed += before - names.len();
    }
    assert_eq!(
        removed, 3,
        "deploy/seccomp.json allows the three io_uring syscalls"
    );
    let path = std::env::temp_dir().join(format!("percore-default-{}.json", std::process::id()));
    std::fs::write(&path, profile.to_string()).unwrap();
    let cmd = filtered(
        "docker",
        &[path.to_str().unwrap()],
        &["serve", "--listen", "tcp@127.0.0.1:0"],
    );
    let (out, _) = run_to_exit(cmd);
    let _ = std::fs::remove_file(&path);
    assert_host_failure(&out, &["io_uring_setup", "seccomp"]);
}
