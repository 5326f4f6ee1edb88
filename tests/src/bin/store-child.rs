//! Helper process for the store crash and disk-full tests.
//!
//! `store-child ingest DIR SEED`: stores envelopes forever, printing `ACK <id>` after each
//! durable write, until killed.
//! `store-child fill DIR SEED LIMIT`: opens the store, then caps the file size at LIMIT
//! bytes and stores until a write fails; prints `ERR <message>` and exits 3.

use fieldmesh_crypto::NodeKey;
use fieldmesh_store::{SledStore, Store};
use fieldmesh_tests::{Rng, test_envelope};
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir, seed) = (
        args[1].as_str(),
        &args[2],
        args[3].parse::<u64>().expect("seed"),
    );
    let store = SledStore::open(std::path::Path::new(dir), None).expect("open store");
    let key = NodeKey::from_seed([seed as u8; 32]);
    let mut rng = Rng(seed);
    if mode == "fill" {
        let limit: u64 = args[4].parse().expect("limit");
        set_file_size_limit(limit);
    }
    let out = std::io::stdout();
    let mut n = seed << 32;
    loop {
        // Mix single puts and batches, with payloads from tiny to 64 KiB.
        let batch = if rng.range(0, 4) == 0 {
            rng.range(2, 20)
        } else {
            1
        };
        let envs: Vec<_> = (0..batch)
            .map(|_| {
                n += 1;
                test_envelope(&key, n, rng.range(0, 65_536) as usize)
            })
            .collect();
        match store.put_batch(&envs) {
            Ok(_) => {
                let mut o = out.lock();
                for e in &envs {
                    writeln!(o, "ACK {}", e.id()).expect("stdout");
                }
                o.flush().expect("stdout");
            }
            Err(e) => {
                println!("ERR {e}");
                std::process::exit(3);
            }
        }
    }
}

#[allow(unsafe_code)]
fn set_file_size_limit(bytes: u64) {
    // Ignore SIGXFSZ so that writes past the limit fail with EFBIG, as on a full disk,
    // instead of killing the process.
    // SAFETY: plain libc calls with valid arguments, made before any other thread writes.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0, "setrlimit");
    }
}
