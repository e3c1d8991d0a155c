//! `bare-pingora LISTEN UPSTREAM THREADS`: pingora's `Server` with one HTTP proxy service
//! whose every request goes to `UPSTREAM` over a pooled keep-alive connection. It is what
//! pingora costs with nothing added: the load benchmark (benches/load.rs) runs it beside
//! leader-proxy and HAProxy, so the distance between leader-proxy and HAProxy can be split
//! into pingora's share and leader-proxy's own (docs/testing.md#benchmarks).

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

struct FixedUpstream(String);

#[async_trait]
impl ProxyHttp for FixedUpstream {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, threads] = args.as_slice() else {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    };
    let Ok(threads) = threads.parse() else {
        eprintln!("bare-pingora: THREADS must be a number, not {threads}");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, FixedUpstream(upstream.clone()));
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
