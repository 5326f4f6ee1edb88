//! Helpers for driving real `fieldmesh` processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldmesh");

/// A node home in a temporary directory.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    /// The `--profile` every command gets.
    pub profile: String,
}

impl TestNode {
    pub fn init(name: &str) -> TestNode {
        let node = TestNode {
            dir: tempfile::tempdir().unwrap(),
            profile: "ci-loopback".into(),
        };
        node.ok(&["init", "--name", name]);
        node
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--home")
            .arg(self.home())
            .arg("--profile")
            .arg(&self.profile)
            .args(args);
        c.env_remove("FIELDMESH_HOME")
            .env_remove("FIELDMESH_PROFILE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "fieldmesh {args:?} failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs and asserts failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "fieldmesh {args:?}: stdout {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn read_json(&self, channel: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["read", channel, "--json"])).unwrap()
    }

    /// Starts the daemon on an OS-chosen loopback port; waits for its record.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// Starts the daemon with extra `run` arguments (listen, peer); waits for its record.
    pub fn start_daemon_with(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["run", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let record = self.home().join("daemon.json");
        let _ = std::fs::remove_file(&record);
        let child = self.cmd(&args).stdout(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !record.exists() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let listen = rec["listen"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        Daemon {
            child,
            http: rec["http"].as_str().unwrap().to_owned(),
            record,
            listen,
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub http: String,
    record: PathBuf,
    /// Bound network addresses.
    pub listen: Vec<String>,
}

impl Daemon {
    /// The bound address of the given transport ("quic" or "tcp").
    pub fn addr(&self, transport: &str) -> String {
        self.listen
            .iter()
            .find(|a| a.contains(transport))
            .cloned()
            .unwrap_or_else(|| panic!("no {transport} listener"))
    }
}

/// Polls `f` every 100 ms until it is true or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Daemon {
    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon exited with {status:?}");
        assert!(!self.record.exists(), "daemon.json left behind");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A JSON POST to the daemon's API with a raw socket; returns the response body.
pub fn http_post_json(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}
