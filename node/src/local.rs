//! Fieldmesh nodes as child processes on this machine: for the demo and the benches.

use crate::client::Client;
use crate::home::{DaemonRecord, Home};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node: its home, and its daemon while it runs.
#[derive(Debug)]
pub struct LocalNode {
    pub name: String,
    pub home: Home,
    exe: PathBuf,
    profile: String,
    child: Option<Child>,
    record: Option<DaemonRecord>,
}

impl LocalNode {
    /// CPU time (user + system) the running daemon has used so far, from `/proc`.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.as_ref()?.id();
        cpu_time_of(&format!("/proc/{pid}/stat"))
    }

    /// Creates the node's home under `dir` (runs `fieldmesh init`).
    pub fn init(exe: &Path, dir: &Path, name: &str, profile: &str) -> Result<LocalNode> {
        let home = Home {
            root: dir.join(name),
        };
        let st = Command::new(exe)
            .arg("--home")
            .arg(&home.root)
            .args(["--profile", profile, "init", "--name", name])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("init {name} failed");
        }
        Ok(LocalNode {
            name: name.to_owned(),
            home,
            exe: exe.to_owned(),
            profile: profile.to_owned(),
            child: None,
            record: None,
        })
    }

    /// Starts the daemon with extra `run` arguments; returns once its API is up.
    pub fn start(&mut self, args: &[&str]) -> Result<&DaemonRecord> {
        let _ = std::fs::remove_file(self.home.daemon_path());
        let child = Command::new(&self.exe)
            .arg("--home")
            .arg(&self.home.root)
            .args(["--profile", &self.profile, "run", "--http", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            // Its log (FIELDMESH_LOG sets the level), kept beside its store.
            .stderr(std::fs::File::create(self.home.root.join("daemon.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(rec) = self.home.daemon()? {
                return Ok(self.record.insert(rec));
            }
            if Instant::now() > deadline {
                bail!("{} did not start", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running daemon's record.
    pub fn record(&self) -> Result<&DaemonRecord> {
        self.record
            .as_ref()
            .with_context(|| format!("{} is not running", self.name))
    }

    /// A client for the running daemon's API.
    pub fn client(&self) -> Client {
        Client::new(
            &self
                .record
                .as_ref()
                .map(|r| r.http.clone())
                .unwrap_or_default(),
        )
    }

    /// The first listen address of the given transport ("quic" or "tcp").
    pub fn listen(&self, transport: &str) -> Result<String> {
        self.record()?
            .listen
            .iter()
            .find(|a| a.contains(transport))
            .cloned()
            .with_context(|| format!("{} has no {transport} listener", self.name))
    }

    /// SIGTERM, then wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        self.record = None;
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// User + system CPU time from a `/proc/.../stat` file (Linux; `None` elsewhere).
pub fn cpu_time_of(stat: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Clock ticks are 100 per second on every Linux we run on (USER_HZ).
    Some(Duration::from_millis(ticks * 10))
}
