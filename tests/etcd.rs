//! Many hosts through a real etcd (Debian's etcd-server, /usr/bin/etcd, which .ci/run installs):
//! `percore serve` processes register with `[registry.etcd]`, and an XClient discovers them
//! through [`Discovery::Etcd`]. Each test starts its own etcd on free loopback ports with a
//! temporary data directory, and kills it at the end. Every wait is bounded.
//!
//! Shown: three servers register and a RoundRobin client balances over them; one shut down
//! with SIGTERM leaves the client's list while it still accepts, and no call fails; one killed
//! with SIGKILL leaves when its lease expires and the client stops using it; etcd down for 10 s
//! costs no call; after etcd restarts with its data lost, every server registers again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percore::builtin::{ArithArgs, ArithReply};
use percore::client::{Discovery, EtcdDiscovery, FailMode, Options, SelectMode, XClient};
use percore::etcd::EtcdConnect;

const ETCD: &str = "/usr/bin/etcd";
/// Bound on every wait for something to happen.
const WAIT: Duration = Duration::from_secs(20);

fn etcd_present() -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    eprintln!("SKIPPED: {ETCD} is missing (apt-get install etcd-server; .ci/run installs it)");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("percore-etcd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < WAIT, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One etcd member on loopback; killed when dropped.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    fn start(dir: PathBuf) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.run();
        etcd
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts the member on its data directory and waits until it answers a listing.
    fn run(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "percore-test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("percore-test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let connect = EtcdConnect::new(vec![self.endpoint()]);
        eventually("etcd answers", || {
            percore::client::etcd_list_once(&connect, "/percore-probe", "X").is_ok()
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the member and loses its data, as a replaced etcd would.
    fn wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `percore serve` registered in etcd, with its admin endpoint; SIGKILLed when dropped.
struct Server {
    child: Child,
    addr: String,
    admin: u16,
}

impl Server {
    fn start(etcd: &Etcd, base: &str, dir: &Path, name: &str) -> Server {
        let port = free_port();
        let admin = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = [\"tcp@127.0.0.1:{port}\"]\ncores = 1\ndrain_timeout = \"2s\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [registry.etcd]\nendpoints = [\"{}\"]\nbase_path = \"{base}\"\nttl = \"2s\"\n\
                 timeout = \"1s\"\nderegister_grace = \"1s\"\n\
                 metadata = {{ Arith = \"weight=1&group=test\" }}\n",
                etcd.endpoint()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Keep its log for a failing test, and drain the pipe so the server never blocks on it.
        let stderr = child.stderr.take().unwrap();
        let log = dir.join(format!("{name}.log"));
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log).unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = writeln!(file, "{line}");
            }
        });
        Server {
            child,
            addr: format!("tcp@127.0.0.1:{port}"),
            admin,
        }
    }

    fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A counter (or gauge) from `/metrics`, the first line starting with `prefix`.
    fn metric(&self, prefix: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    }

    fn mul_calls(&self) -> u64 {
        self.metric("rpcx_server_started_total{service=\"Arith\",method=\"Mul\"}")
    }

    fn registrations(&self) -> u64 {
        self.metric("percore_registry_registrations_total")
    }

    /// SIGTERM: the graceful stop.
    fn terminate(&self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Waits (bounded) for the process to exit; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < WAIT, "server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An XClient (RoundRobin, Failfast: a failed call is not hidden by a retry) on a glommio
/// executor of its own, calling Arith.Mul back to back while `calling` is set.
struct Caller {
    calling: Arc<AtomicBool>,
    /// Set by the caller between calls while `calling` is off.
    idle: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    /// The XClient's servers, as of its last look.
    servers: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Caller {
    fn start(discovery: EtcdDiscovery) -> Caller {
        let calling = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let servers = Arc::new(Mutex::new(Vec::new()));
        let (c, i, d, o, f, s) = (
            calling.clone(),
            idle.clone(),
            done.clone(),
            ok.clone(),
            failures.clone(),
            servers.clone(),
        );
        let thread = std::thread::spawn(move || {
            percore::client::block_on(move || async move {
                let options = Options {
                    timeout: Some(Duration::from_secs(5)),
                    connect_timeout: Duration::from_secs(1),
                    group: Some("test".into()),
                    ..Options::default()
                };
                let x = XClient::new(
                    "Arith",
                    FailMode::Failfast,
                    SelectMode::RoundRobin,
                    &Discovery::Etcd(discovery),
                    options,
                )
                .unwrap();
                let mut n = 0i64;
                while !d.load(Ordering::SeqCst) {
                    *s.lock().unwrap() = x.servers().into_iter().map(|e| e.address).collect();
                    if !c.load(Ordering::SeqCst) {
                        i.store(true, Ordering::SeqCst);
                        glommio::timer::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    i.store(false, Ordering::SeqCst);
                    n += 1;
                    let args = ArithArgs { a: n, b: 3 };
                    match x.call::<ArithArgs, ArithReply>("Mul", &args).await {
                        Ok(r) if r.c == n * 3 => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => f.lock().unwrap().push(format!("wrong reply {}", r.c)),
                        Err(e) => f.lock().unwrap().push(e.to_string()),
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .unwrap();
        });
        Caller {
            calling,
            idle,
            done,
            ok,
            failures,
            servers,
            thread: Some(thread),
        }
    }

    fn servers(&self) -> Vec<String> {
        let mut s = self.servers.lock().unwrap().clone();
        s.sort();
        s
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    fn resume(&self) {
        self.calling.store(true, Ordering::SeqCst);
        eventually("the caller calls", || !self.idle.load(Ordering::SeqCst));
    }

    fn pause(&self) {
        self.calling.store(false, Ordering::SeqCst);
        eventually("the caller pauses", || self.idle.load(Ordering::SeqCst));
    }

    /// Calls until `n` more have succeeded, then pauses.
    fn calls(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        self.resume();
        eventually(&format!("{n} calls succeed"), || {
            self.ok.load(Ordering::SeqCst) >= target || !self.failures().is_empty()
        });
        self.pause();
        assert_eq!(self.failures(), Vec::<String>::new(), "failed calls");
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sorted(servers: &[&Server]) -> Vec<String> {
    let mut s: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    s.sort();
    s
}

fn setup(name: &str) -> (Etcd, PathBuf, String, Vec<Server>, Caller) {
    let dir = temp_dir(name);
    let etcd = Etcd::start(dir.clone());
    let base = format!("/rpcx_test_{name}");
    let servers: Vec<Server> = (0..3)
        .map(|i| Server::start(&etcd, &base, &dir, &format!("s{i}")))
        .collect();
    let connect = EtcdConnect::new(vec![etcd.endpoint()]);
    let discovery = EtcdDiscovery::start(connect, &base, "Arith").unwrap();
    let caller = Caller::start(discovery);
    let all = sorted(&servers.iter().collect::<Vec<_>>());
    eventually("the client lists the three servers", || {
        caller.servers() == all
    });
    (etcd, dir, base, servers, caller)
}

#[test]
fn servers_register_balance_leave_gracefully_and_expire() {
    if !etcd_present() {
        return;
    }
    let (etcd, _dir, base, mut servers, caller) = setup("lifecycle");

    // The keys are rpcx-etcd's: BASE/Arith/tcp@host:port = the configured metadata.
    let connect = EtcdConnect::new(vec![etcd.endpoint()]);
    let listed = percore::client::etcd_list_once(&connect, &base, "Arith").unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|e| e.metadata == "weight=1&group=test"));
    let echo = percore::client::etcd_list_once(&connect, &base, "Echo").unwrap();
    assert_eq!(echo.len(), 3, "every registered service has its keys");

    // `percore call` and `percore bench` take etcd://HOST:PORT/BASE.
    let url = format!("etcd://{}{base}", etcd.endpoint());
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["call", &url, "Arith.Mul", r#"{"A":6,"B":7}"#])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("42"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["bench", "-s", &url, "-n", "30", "-c", "3", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The client honours state=inactive and group= from etcd: neither of these is listed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        for (addr, meta) in [
            ("tcp@127.0.0.1:1", "state=inactive&group=test"),
            ("tcp@127.0.0.1:2", "group=other"),
        ] {
            c.put(format!("{base}/Arith/{addr}"), meta, None)
                .await
                .unwrap();
        }
    });
    eventually("the client sees the two extra keys", || {
        percore::client::etcd_list_once(&connect, &base, "Arith").is_ok_and(|l| l.len() == 5)
    });

    // RoundRobin over the three: 30 calls, 10 each.
    let before: Vec<u64> = servers.iter().map(Server::mul_calls).collect();
    caller.calls(30);
    let took: Vec<u64> = servers
        .iter()
        .zip(&before)
        .map(|(s, b)| s.mul_calls() - b)
        .collect();
    let total: u64 = took.iter().sum();
    assert!(total >= 30, "{took:?}");
    assert!(
        took.iter().max().unwrap() - took.iter().min().unwrap() <= 1,
        "round robin spreads the calls evenly: {took:?}"
    );

    // SIGTERM to s0 while calls go on: it leaves the client's list while it still accepts,
    // then exits 0; no call fails.
    caller.resume();
    let t = Instant::now();
    servers[0].terminate();
    eventually("s0 leaves the client's list", || {
        !caller.servers().contains(&servers[0].addr)
    });
    eprintln!("SIGTERM to the client's list without s0: {:?}", t.elapsed());
    assert!(
        TcpStream::connect(("127.0.0.1", servers[0].port())).is_ok(),
        "s0 still accepts once clients have dropped it"
    );
    let ok_then = caller.ok.load(Ordering::SeqCst);
    eventually("calls go on after s0 left", || {
        caller.ok.load(Ordering::SeqCst) >= ok_then + 20
    });
    assert!(servers[0].wait_exit().success());
    eprintln!("SIGTERM to s0's exit: {:?}", t.elapsed());
    caller.calls(20);
    assert_eq!(caller.servers(), sorted(&[&servers[1], &servers[2]]));

    // SIGKILL s1: no delete, so its key stays until the lease (ttl 2s) expires; the client then
    // stops using it. (Calls are paused meanwhile: Failfast calls to a dead server fail.)
    let t = Instant::now();
    servers[1].kill();
    eventually("s1's key expires and the client drops it", || {
        caller.servers() == [servers[2].addr.clone()]
    });
    eprintln!(
        "SIGKILL to the client's list without s1 (ttl 2s): {:?}",
        t.elapsed()
    );
    let before = servers[2].mul_calls();
    let ok_before = caller.ok.load(Ordering::SeqCst);
    caller.calls(20);
    let done = caller.ok.load(Ordering::SeqCst) - ok_before;
    assert_eq!(
        servers[2].mul_calls() - before,
        done,
        "every call went to the one live server"
    );
}

#[test]
fn etcd_outage_costs_no_call_and_a_lost_etcd_is_registered_again() {
    if !etcd_present() {
        return;
    }
    let (mut etcd, _dir, base, servers, caller) = setup("outage");
    let all = sorted(&servers.iter().collect::<Vec<_>>());
    eventually("each server counts its registration", || {
        servers.iter().all(|s| s.registrations() == 1)
    });

    // etcd down for 10 s, then back on the same data: the client keeps its list and no call
    // fails; the servers keep serving and register again once it is back.
    caller.resume();
    etcd.kill();
    let ok_before = caller.ok.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        caller.ok.load(Ordering::SeqCst) > ok_before + 100,
        "calls went on while etcd was down"
    );
    eprintln!(
        "calls while etcd was down 10 s: {} ok, {} failed",
        caller.ok.load(Ordering::SeqCst) - ok_before,
        caller.failures().len()
    );
    assert_eq!(caller.failures(), Vec::<String>::new());
    assert_eq!(caller.servers(), all, "the last list is kept");
    etcd.run();
    let t = Instant::now();
    eventually("every server registers again", || {
        servers.iter().all(|s| s.registrations() >= 2)
    });
    eprintln!(
        "etcd back to every server registered again: {:?}",
        t.elapsed()
    );
    for s in &servers {
        assert!(
            s.metric("percore_registry_failures_total") >= 1,
            "the outage is counted"
        );
        assert!(s.metric("percore_registry_lease_renewals_total") >= 1);
        assert_eq!(s.metric("percore_registry_registered"), 1);
    }
    caller.pause();
    assert_eq!(caller.failures(), Vec::<String>::new());
    caller.calls(30);

    // etcd replaced with its data lost: every server puts its keys again and the client finds
    // all three.
    etcd.wipe();
    etcd.run();
    let connect = EtcdConnect::new(vec![etcd.endpoint()]);
    eventually("every server registers in the new etcd", || {
        percore::client::etcd_list_once(&connect, &base, "Arith").is_ok_and(|l| l.len() == 3)
    });
    eventually("the client lists the three servers again", || {
        caller.servers() == all
    });
    caller.calls(30);

    // Every lease revoked (its keys go with it): each server notices at its next renewal and
    // registers again under a new lease.
    let before: Vec<u64> = servers.iter().map(Server::registrations).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        let leases = c.leases().await.unwrap();
        assert!(leases.leases().len() >= 3, "a lease per server");
        for lease in leases.leases() {
            c.lease_revoke(lease.id()).await.unwrap();
        }
    });
    eventually("every server registers under a new lease", || {
        servers
            .iter()
            .zip(&before)
            .all(|(s, b)| s.registrations() > *b)
    });
    eventually("the keys are back", || {
        percore::client::etcd_list_once(&connect, &base, "Arith").is_ok_and(|l| l.len() == 3)
    });
    eventually("the client lists the three servers again", || {
        caller.servers() == all
    });
}

#[test]
fn check_config_names_bad_registry_settings() {
    let dir = temp_dir("check");
    for (name, toml, want) in [
        (
            "metadata",
            "[registry.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nmetadata = { Arith2 = \"weight=2\" }\n",
            "Arith2",
        ),
        (
            "unspecified",
            "[server]\nlisten = [\"tcp@0.0.0.0:8972\"]\n[registry.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
            "tcp@0.0.0.0:8972",
        ),
    ] {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
    }
}

/// With etcd unreachable (a peer that accepts and never answers), the delete at SIGTERM waits
/// for `registry.etcd.timeout`; a second SIGTERM still exits at once.
#[test]
fn a_second_sigterm_exits_while_the_delete_waits() {
    let dir = temp_dir("second-signal");
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            h.lock().unwrap().push(stream);
        }
    });
    let port = free_port();
    let config = dir.join("s.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"tcp@127.0.0.1:{port}\"]\ncores = 1\n\
             [registry.etcd]\nendpoints = [\"127.0.0.1:{silent_port}\"]\ntimeout = \"60s\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        addr: format!("tcp@127.0.0.1:{port}"),
        admin: 0,
    };
    eventually("the server accepts", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    eventually("the registration dials etcd", || {
        !held.lock().unwrap().is_empty()
    });
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the first SIGTERM waits for the delete"
    );
    server.terminate();
    assert_eq!(
        server.wait_exit().code(),
        Some(1),
        "the second exits at once"
    );
}
