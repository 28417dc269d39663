//! A throwaway nginx (master + one worker) on 127.0.0.1:<port> with its config, pid file, logs,
//! temp paths and web root in a scratch directory: `/index.html` (static) and `/unavailable`
//! (`return 503`); `Nginx::start_h2c` listens with HTTP/2 in cleartext (prior knowledge).

use std::path::PathBuf;
use std::process::Command;

use crate::peers::PEER_START_TIMEOUT;
use crate::process::{ChildGuard, ScratchDir, wait_for_port};

/// Body of the static `/index.html`.
pub const INDEX_BODY: &str = "<html><body>tracer e2e</body></html>\n";

/// `nginx` from PATH, else `/usr/sbin/nginx`; panics when neither exists.
pub fn nginx_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(std::iter::once(PathBuf::from("/usr/sbin/nginx")))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx not found on PATH or at /usr/sbin/nginx (`cargo xtask setup` installs it)"
            )
        })
}

/// The nginx configuration for `port` rooted at `dir`.
pub fn nginx_config(dir: &std::path::Path, port: u16) -> String {
    nginx_config_listen(dir, port, "")
}

/// `listen` parameters for HTTP/2 in cleartext (h2c, prior knowledge). `listen ... http2` works
/// from nginx 1.9.5 on (Debian 12 ships 1.22, before the `http2 on;` directive of 1.25.1); newer
/// nginx only warns that it is deprecated.
pub const H2C_LISTEN: &str = " http2";

/// The nginx configuration for `port` rooted at `dir`, with `listen_params` after the address.
pub fn nginx_config_listen(dir: &std::path::Path, port: u16, listen_params: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/html;
    keepalive_timeout 30s;
    server {{
        listen 127.0.0.1:{port}{listen_params};
        root {d}/www;
        location = /unavailable {{ return 503; }}
    }}
}}
"
    )
}

/// A running nginx; dropping it sends SIGTERM to the master (which stops its workers).
pub struct Nginx {
    child: ChildGuard,
    port: u16,
    dir: ScratchDir,
}

impl Nginx {
    pub fn start(port: u16) -> Nginx {
        Self::start_listen(port, "")
    }

    /// nginx speaking HTTP/2 in cleartext (prior knowledge) on `port`.
    pub fn start_h2c(port: u16) -> Nginx {
        Self::start_listen(port, H2C_LISTEN)
    }

    fn start_listen(port: u16, listen_params: &str) -> Nginx {
        let dir = ScratchDir::new("nginx");
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap_or_else(|e| panic!("creating {}: {e}", www.display()));
        std::fs::write(www.join("index.html"), INDEX_BODY)
            .unwrap_or_else(|e| panic!("writing index.html: {e}"));
        let config = dir.path().join("nginx.conf");
        std::fs::write(
            &config,
            nginx_config_listen(dir.path(), port, listen_params),
        )
        .unwrap_or_else(|e| panic!("writing nginx.conf: {e}"));
        let mut command = Command::new(nginx_binary());
        command
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"));
        let child = ChildGuard::spawn("nginx", command);
        let nginx = Nginx { child, port, dir };
        if !wait_for_port(port, PEER_START_TIMEOUT) {
            panic!(
                "nginx did not listen on {port} within {PEER_START_TIMEOUT:?}\n{}",
                nginx.output_report()
            );
        }
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn master_pid(&self) -> u32 {
        self.child.pid()
    }

    /// The master's output and nginx's error log, for failure messages.
    pub fn output_report(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        format!(
            "{}\n--- nginx error.log ---\n{log}",
            self.child.output_report()
        )
    }
}

/// The parent pid of `pid` from `/proc/<pid>/stat`, if it is still running.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the fields after the last ')'
    // are state then ppid.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{curl, local_url};
    use crate::process::free_port;

    #[test]
    fn nginx_serves_the_static_file_and_the_503() {
        let port = free_port();
        let nginx = Nginx::start(port);
        assert_eq!(
            curl(&[&local_url(port, "/index.html")]).status,
            200,
            "{}",
            nginx.output_report()
        );
        assert_eq!(curl(&[&local_url(port, "/unavailable")]).status, 503);
        assert_eq!(curl(&[&local_url(port, "/missing")]).status, 404);
    }

    #[test]
    fn parent_pid_of_ourselves_is_known() {
        assert!(parent_pid(std::process::id()).is_some());
        assert_eq!(parent_pid(u32::MAX), None);
    }
}
