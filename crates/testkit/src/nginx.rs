//! nginx as a fast, plain upstream for the load benchmark (benches/load.rs): it answers
//! `/_ping` with the 2 bytes `OK` and `/64k` with a 64 KiB file, keeps connections alive
//! for as long as the client wants, and writes no access log, so the proxies in front of
//! it are what is measured.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::programs::Program;
use crate::server_process::{free_ports, open_log, wait_ready};

pub const NGINX: Program = Program::new("TESTKIT_NGINX", "/usr/sbin/nginx");

/// Size of the body `/64k` answers.
pub const LARGE_BODY: usize = 64 * 1024;

pub struct Nginx {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free port with 2 worker processes (one per core here).
    pub fn start() -> Nginx {
        NGINX.require("apt-get install nginx (or run scripts/install-deps)");
        let dir = tempfile::Builder::new()
            .prefix("lp-nginx-")
            .tempdir()
            .expect("temp dir");
        // The workers run as `nobody` when nginx starts as root: they must read the files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the nginx dir");
        let root = dir.path().join("www");
        std::fs::create_dir(&root).expect("mkdir www");
        std::fs::write(root.join("64k"), vec![b'x'; LARGE_BODY]).expect("write the 64 KiB body");
        let port = free_ports(1)[0];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n\
               keepalive_timeout 300s;\n\
               server {{\n\
                 listen {addr};\n\
                 root {root};\n\
                 location = /_ping {{ default_type text/plain; return 200 \"OK\"; }}\n\
               }}\n\
             }}\n",
            root = root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let log_path = dir.path().join("stderr.log");
        let child = Command::new(NGINX.path())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log_path, "nginx"))
            .spawn()
            .expect("start nginx");
        let child = wait_ready(
            child,
            "nginx",
            "nginx not serving",
            Duration::from_secs(10),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || std::net::TcpStream::connect(addr).is_ok(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Nginx {
            child: Some(child),
            addr,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is a fast shutdown for nginx; its master then stops the workers.
        if let Some(child) = self.child.as_ref() {
            crate::server_process::signal(Some(child), "nginx", "-TERM");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}
