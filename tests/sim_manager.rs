//! The simulated Swarm manager itself, against a real etcd: its election behaves like the
//! real programs (one primary, failover only after the TTL on SIGKILL, at once on SIGTERM, a
//! restarted manager rejoins as a replica), and its HTTP API does what the proxy's tests
//! rely on (write log, hijack with half-close, faults, streaming, large bodies).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testkit::etcd::Etcd;
use testkit::http;
use testkit::sim::{
    read_log, wait_for_single_primary, wait_until_role, Election, SimManager, SimOptions,
};

/// The first primary's TTL: after SIGKILL its key stays until it expires.
const TTL: u64 = 3;
/// The TTL of the managers SIGTERM is tried on. A takeover that waited for a TTL would come
/// 40 s or more after the resignation (the key is refreshed every TTL/3), one that saw it
/// comes in milliseconds: [`RESIGNED_TAKEOVER`] lies far from both.
const LONG_TTL: u64 = 60;
/// How soon the replica must take over from a primary that resigned.
const RESIGNED_TAKEOVER: Duration = Duration::from_secs(20);
const KEY: &str = "it/docker/swarm/leader";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The leader address in the store, read the way the proxy's backends read it.
fn store_leader(etcd: &Etcd, scheme: &str, election: Election) -> Option<String> {
    let value = match (scheme, election) {
        ("etcd", _) => {
            let addr = etcd.endpoint().parse().expect("etcd endpoint");
            let r = http::get(addr, &format!("/v2/keys/{KEY}")).expect("GET v2 key");
            r.json()["node"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
        (_, Election::Key) => etcd.etcdctl(&["get", KEY, "--print-value-only"]),
        (_, Election::Contenders) => etcd.etcdctl(&[
            "get",
            "--prefix",
            &format!("{KEY}/"),
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--limit=1",
            "--print-value-only",
        ]),
    };
    let value = value.trim().to_string();
    (!value.is_empty()).then_some(value)
}

fn logs(managers: &[&SimManager], etcd: &Etcd) -> String {
    let mut out = String::new();
    for m in managers {
        out.push_str(&format!("--- {} ---\n{}\n", m.name(), m.log()));
    }
    out.push_str(&format!("--- etcd ---\n{}\n", etcd.log()));
    out
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two managers; SIGKILL of the primary → the other takes over after the TTL; the killed one
/// restarts as a replica; SIGTERM of the new primary → the restarted one takes over at once.
///
/// m1 runs with [`TTL`] and is the first primary (m2 starts once it leads), so SIGKILL is
/// tried with a short TTL; m2, and m1 after its restart, run with [`LONG_TTL`], so a
/// takeover after SIGTERM that waited for a TTL is told apart from one that saw the
/// resignation by tens of seconds.
fn failover(scheme: &str, election: Election) {
    let etcd = Etcd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("writes.log");
    let discovery = format!("{scheme}://{}/it", etcd.endpoint());
    let opts = |name: &str, ttl: u64| {
        SimOptions::new(name, &discovery, &log)
            .election(election)
            .ttl(ttl)
    };
    let m1 = SimManager::start(&opts("m1", TTL));
    assert!(
        wait_until_role(m1.addr(), "primary", Duration::from_secs(20)),
        "{}",
        logs(&[&m1], &etcd)
    );
    let mut ms = [m1, SimManager::start(&opts("m2", LONG_TTL))];

    let p = wait_for_single_primary(&[&ms[0], &ms[1]], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&ms[0], &ms[1]], &etcd)));
    assert_eq!(p, 0, "m1 led first: m2 must have joined as a replica");
    let r = 1 - p;
    let dead_addr = ms[p].advertise();
    assert_eq!(
        store_leader(&etcd, scheme, election),
        Some(dead_addr.clone())
    );

    // SIGKILL: nobody resigns, the store keeps naming the dead primary until the TTL expires.
    ms[p].kill();
    let killed = Instant::now();
    assert_eq!(
        store_leader(&etcd, scheme, election),
        Some(dead_addr.clone()),
        "the key must outlive a SIGKILLed holder until its TTL expires"
    );
    assert_eq!(ms[r].role().as_deref(), Some("replica"));
    assert!(
        wait_until_role(ms[r].addr(), "primary", Duration::from_secs(TTL * 3 + 10)),
        "{} did not take over after the TTL\n{}",
        ms[r].name(),
        logs(&[&ms[0], &ms[1]], &etcd)
    );
    let took = killed.elapsed();
    eprintln!("{scheme}/{election:?}: failover after SIGKILL took {took:?} (TTL {TTL}s)");
    assert!(
        took >= Duration::from_millis(1000),
        "took over after {took:?}: before the dead holder's TTL could expire"
    );
    assert_eq!(
        store_leader(&etcd, scheme, election),
        Some(ms[r].advertise())
    );

    // The killed one comes back on the same address, as a replica of the new primary.
    ms[p].restart_with(&opts("m1", LONG_TTL));
    assert_eq!(ms[p].advertise(), dead_addr);
    let q = wait_for_single_primary(&[&ms[0], &ms[1]], Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&ms[0], &ms[1]], &etcd)));
    assert_eq!(q, r, "the restarted manager must rejoin as a replica");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ms[p].role().as_deref(), Some("replica"));
    assert_eq!(ms[r].role().as_deref(), Some("primary"));

    // SIGTERM: the primary resigns before exiting; the replica takes over without waiting
    // for any TTL (LONG_TTL, both of them).
    let status = ms[r].terminate();
    assert!(status.success(), "sim-manager exited with {status}");
    let resigned = Instant::now();
    assert_ne!(
        store_leader(&etcd, scheme, election),
        Some(ms[r].advertise()),
        "a SIGTERMed primary must have resigned before exiting"
    );
    assert!(
        wait_until_role(ms[p].addr(), "primary", RESIGNED_TAKEOVER),
        "{} did not take over within {RESIGNED_TAKEOVER:?} of the resignation: it waits for \
         a TTL ({LONG_TTL} s) instead of seeing it\n{}",
        ms[p].name(),
        logs(&[&ms[0], &ms[1]], &etcd)
    );
    let took = resigned.elapsed();
    eprintln!("{scheme}/{election:?}: failover after SIGTERM took {took:?}");
    assert_eq!(store_leader(&etcd, scheme, election), Some(dead_addr));
}

#[test]
fn etcd_v2_election_and_failover() {
    failover("etcd", Election::Key);
}

#[test]
fn etcd_v3_key_election_and_failover() {
    failover("etcdv3", Election::Key);
}

#[test]
fn etcd_v3_contenders_election_and_failover() {
    failover("etcdv3", Election::Contenders);
}

/// The contenders mode is the recipe `etcdctl elect` runs: both see each other.
#[test]
fn etcd_v3_contenders_interoperate_with_etcdctl_elect() {
    let etcd = Etcd::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("writes.log");
    let mut elector = etcd.elect(KEY, "10.9.9.9:2375");
    assert!(elector.wait_elected(Duration::from_secs(10)).is_some());
    let discovery = format!("etcdv3://{}/it", etcd.endpoint());
    let m =
        SimManager::start(&SimOptions::new("m1", &discovery, &log).election(Election::Contenders));
    assert!(
        wait_for(Duration::from_secs(10), || {
            matches!(m.info(), Ok(i) if i.primary == "10.9.9.9:2375")
        }),
        "the manager does not see etcdctl as the leader\n{}",
        logs(&[&m], &etcd)
    );
    assert_eq!(m.role().as_deref(), Some("replica"));
    elector.resign();
    assert!(
        wait_until_role(m.addr(), "primary", Duration::from_secs(10)),
        "{}",
        logs(&[&m], &etcd)
    );
    assert_eq!(
        store_leader(&etcd, "etcdv3", Election::Contenders),
        Some(m.advertise())
    );
}

/// Starts etcd and two managers on etcd v2; returns them with the primary first.
fn cluster(log: &Path) -> (Etcd, SimManager, SimManager) {
    let etcd = Etcd::start();
    let discovery = format!("etcd://{}/it", etcd.endpoint());
    let a = SimManager::start(&SimOptions::new("m1", &discovery, log));
    let b = SimManager::start(&SimOptions::new("m2", &discovery, log));
    let p = wait_for_single_primary(&[&a, &b], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&a, &b], &etcd)));
    if p == 0 {
        (etcd, a, b)
    } else {
        (etcd, b, a)
    }
}

fn post(addr: std::net::SocketAddr, path: &str, id: Option<&str>) -> http::Response {
    let headers: Vec<(&str, &str)> = id.map(|id| ("X-Request-Id", id)).into_iter().collect();
    http::request(
        addr,
        "POST",
        path,
        &headers,
        br#"{"Image":"bb:local"}"#,
        Duration::from_secs(10),
    )
    .expect("POST")
}

#[test]
fn writes_are_logged_once_each_with_who_and_role() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("writes.log");
    let (_etcd, primary, replica) = cluster(&log);

    let r = post(primary.addr(), "/v1.41/containers/create", Some("w1"));
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["Id"], "w1");
    assert_eq!(r.json()["served_by"], primary.name());
    assert_eq!(r.json()["role"], "primary");
    assert_eq!(r.header("X-Served-By"), Some(primary.name()));
    assert_eq!(r.header("X-Role"), Some("primary"));
    assert_eq!(
        post(primary.addr(), "/containers/abc/start", Some("w2")).status,
        201
    );
    assert_eq!(
        post(primary.addr(), "/v1.41/containers/create", None).status,
        201
    );
    let r = post(replica.addr(), "/containers/create", Some("w3"));
    assert_eq!(r.status, 201);
    assert_eq!(r.header("X-Role"), Some("replica"));
    // Reads, echo and hijack without upgrade are not writes.
    http::get(primary.addr(), "/info").expect("GET /info");
    post(primary.addr(), "/echo", Some("not-a-write"));
    post(primary.addr(), "/hijack", Some("not-a-write"));

    let lines: Vec<String> = read_log(&log)
        .iter()
        .map(|l| format!("{} {} {} {:?}", l.request_id, l.name, l.role, l.path))
        .collect();
    assert_eq!(
        lines,
        vec![
            format!("w1 {} primary None", primary.name()),
            format!("w2 {} primary None", primary.name()),
            format!("- {} primary None", primary.name()),
            format!("w3 {} replica None", replica.name()),
        ]
    );
}

/// Reads a response head from a raw stream (byte by byte: nothing after it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert!(
            n == 1,
            "EOF in the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn hijack_upgrades_and_supports_half_close() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("writes.log");
    let (_etcd, m, _replica) = cluster(&log);

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut s = connect(m.addr());
    // Some stream bytes ride in the same write as the head, as a client may send them.
    let mut first =
        b"POST /v1.41/containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n\
Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: text/plain\r\n\r\n"
            .to_vec();
    first.extend_from_slice(&payload[..1000]);
    s.write_all(&first).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 UPGRADED\r\n"), "{head}");
    assert!(head.contains("Connection: Upgrade\r\n"), "{head}");
    assert!(head.contains("Upgrade: tcp\r\n"), "{head}");
    assert!(
        head.contains(&format!("X-Served-By: {}\r\n", m.name())),
        "{head}"
    );
    assert!(head.contains("X-Role: primary\r\n"), "{head}");
    s.write_all(&payload[1000..]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read to EOF");
    assert_eq!(
        reply,
        format!(
            "served_by={} role=primary bytes={} sha256={}\n",
            m.name(),
            payload.len(),
            hex(&Sha256::digest(&payload))
        )
    );

    // ?echo=1: output flows while the client's side is still open (docker run -i … cat).
    let mut s = connect(m.addr());
    s.write_all(b"POST /hijack?echo=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with(&format!("served_by={} role=primary bytes=4 ", m.name())),
        "{rest}"
    );

    // Without the upgrade headers dockerd answers 200: so does the simulator.
    let r = http::request(
        m.addr(),
        "POST",
        "/v1.41/hijack",
        &[],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("no upgrade requested"), "{}", r.text());
}

#[test]
fn fault_endpoints_drop_the_connection_and_are_logged_first() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("writes.log");
    let (_etcd, m, _replica) = cluster(&log);

    let mut s = connect(m.addr());
    s.write_all(
        b"GET /v1.41/fault/drop-after-request HTTP/1.1\r\nHost: docker\r\nX-Request-Id: f1\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "wrote {:?}", String::from_utf8_lossy(&got));

    let mut s = connect(m.addr());
    s.write_all(
        b"GET /fault/drop-after-first-byte HTTP/1.1\r\nHost: docker\r\nX-Request-Id: f2\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 100\r\n"), "{head}");
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    assert_eq!(body.len(), 1, "body {:?}", String::from_utf8_lossy(&body));

    let lines: Vec<String> = read_log(&log)
        .iter()
        .map(|l| {
            format!(
                "{} {} {} {}",
                l.request_id,
                l.name,
                l.role,
                l.path.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            format!("f1 {} primary /fault/drop-after-request", m.name()),
            format!("f2 {} primary /fault/drop-after-first-byte", m.name()),
        ]
    );
}

#[test]
fn http_api_reads_streams_and_large_chunked_uploads() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("writes.log");
    let (_etcd, m, replica) = cluster(&log);

    let r = http::get(m.addr(), "/_ping").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert_eq!(r.header("X-Served-By"), Some(m.name()));
    assert_eq!(r.header("X-Role"), Some("primary"));
    let r = http::get(m.addr(), "/v1.41/version").unwrap();
    assert_eq!(r.json()["ApiVersion"], "1.41");
    assert_eq!(r.json()["served_by"], m.name());
    let r = http::get(replica.addr(), "/v1.41/info").unwrap();
    assert_eq!(r.json()["Name"], replica.name());
    assert_eq!(r.json()["SystemStatus"][0][1], "replica");
    assert_eq!(r.json()["SystemStatus"][1][0], "Primary");
    assert_eq!(r.json()["SystemStatus"][1][1], m.advertise().as_str());
    let r = http::get(m.addr(), "/v1.41/nope").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "page not found");
    assert_eq!(r.header("X-Served-By"), Some(m.name()));

    let r = http::get(m.addr(), "/stream?count=3&interval_ms=10").unwrap();
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(
        r.text(),
        (0..3)
            .map(|i| format!("line {i} served_by={} role=primary\n", m.name()))
            .collect::<String>()
    );

    // count=0 never ends: lines must arrive one by one (unbuffered), like `docker logs -f`.
    let mut s = connect(m.addr());
    s.write_all(b"GET /v1.41/stream?count=0&interval_ms=20 HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s);
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("line ").count() < 3 {
        let n = s.read(&mut buf).expect("stream line");
        assert!(n > 0, "stream ended");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);

    // A large chunked upload on a keep-alive connection, then a second request on it.
    let mut s = connect(m.addr());
    s.write_all(b"POST /v1.41/echo HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0usize;
    for i in 0..200u32 {
        let chunk: Vec<u8> = (0..(16_384 + i as usize))
            .map(|j| (j as u32 ^ i) as u8)
            .collect();
        hasher.update(&chunk);
        total += chunk.len();
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], total as u64);
    assert_eq!(v["sha256"], hex(&hasher.finalize()));
    assert_eq!(v["served_by"], m.name());
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.ends_with("\r\n\r\nOK"),
        "{rest}"
    );

    // Content-Length upload with Expect: 100-continue (curl sends it for large bodies).
    let mut s = connect(m.addr());
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: docker\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let r = http::parse(&rest).unwrap();
    assert_eq!(r.json()["bytes"], 5);
    assert_eq!(r.json()["sha256"], hex(&Sha256::digest(b"hello")));
}
