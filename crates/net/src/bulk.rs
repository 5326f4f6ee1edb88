//! `/fieldmesh/bulk/1`: one long-lived stream per peer and direction that carries pushed
//! envelopes back to back, acknowledged cumulatively.
//!
//! ```text
//! sender -> receiver:  (len u32 BE | sync frame of type Envelope)*
//! receiver -> sender:  (handled u64 BE)*   frames handled so far, in order; never shrinks
//! ```
//!
//! A request-response exchange per envelope costs a QUIC stream, a protocol negotiation
//! and a timer; at attachment-chunk sizes that was most of the cost of a bulk transfer.
//! Here the sender keeps the engine's whole window in flight on one stream, and the
//! receiver counts a frame as handled only once the envelope in it is durable (or was
//! refused), so an acknowledgement means exactly what a request-response answer means.
//!
//! The swarm task hands the link only ids: the link's own task loads the envelopes from
//! the store, a few at a time on a blocking thread while the previous ones are written,
//! and writes each behind the frame's prefix without copying it into a frame. Loading
//! on the swarm task had stalled it on a disk read per chunk.
//!
//! FLASH and IMMEDIATE envelopes never queue behind bulk data: they go on a second link
//! of the same form, `/fieldmesh/urgent/1`, which QUIC schedules alongside the bulk one
//! (round robin between streams), and the receiver takes its frames from a queue of their
//! own, so that they never wait behind a full queue of bulk frames.
//! A stream per urgent envelope (request-response) had cost about 280 bytes of stream
//! set-up, protocol negotiation and close on the wire for each one. A peer that does not
//! speak a link's protocol gets those pushes by request-response.

use crate::Host;
use fieldmesh_core::EnvelopeId;
use fieldmesh_sync::frame::{BulkFrame, ENVELOPE_PREFIX};
use futures_util::io::{ReadHalf, WriteHalf};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};

/// The protocol name, negotiated by multistream-select.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fieldmesh/bulk/1");
/// The urgent lane's protocol name: the same frames, for IMMEDIATE and FLASH only.
pub const URGENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/fieldmesh/urgent/1");

/// Which of a peer's two links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// ROUTINE and PRIORITY: everything in the engine's window.
    Bulk,
    /// IMMEDIATE and FLASH, never behind bulk data.
    Urgent,
}

impl Lane {
    pub(crate) const ALL: [Lane; 2] = [Lane::Bulk, Lane::Urgent];

    pub(crate) fn protocol(self) -> StreamProtocol {
        match self {
            Lane::Bulk => PROTOCOL,
            Lane::Urgent => URGENT_PROTOCOL,
        }
    }
}

/// Names one stream (either direction) for the life of the process.
pub(crate) type LinkId = u64;

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// A fresh link id.
pub(crate) fn next_link() -> LinkId {
    NEXT_LINK.fetch_add(1, Ordering::Relaxed)
}

/// What the link tasks tell the swarm task.
#[derive(Debug)]
pub(crate) enum Event {
    /// An outbound link is open: the envelopes named on `frames` go out in order.
    /// Dropping the sender ends the link once what was queued has been written.
    Opened {
        peer: PeerId,
        link: LinkId,
        frames: mpsc::Sender<EnvelopeId>,
    },
    /// An outbound link could not load this envelope from the store and skipped it:
    /// the frames after it are numbered one lower than they were given. Sent before any
    /// of them is written, so it arrives before any acknowledgement that counts them.
    Unloadable { link: LinkId, id: EnvelopeId },
    /// An outbound link could not be opened; `unsupported`: the peer does not speak the
    /// protocol (it gets request-response only).
    OpenFailed {
        peer: PeerId,
        link: LinkId,
        unsupported: bool,
        why: String,
    },
    /// The receiver has handled this many frames of an outbound link.
    Acked { link: LinkId, handled: u64 },
    /// A peer opened an inbound link; report progress on `acks` (dropping it ends the link).
    Accepted {
        peer: PeerId,
        lane: Lane,
        link: LinkId,
        acks: watch::Sender<u64>,
    },
    /// A frame arrived on an inbound link.
    Frame { link: LinkId, frame: BulkFrame },
    /// A link ended (either direction).
    Closed { link: LinkId, why: String },
}

/// Envelopes loaded together on a blocking thread.
const LOAD_BATCH: usize = 16;

/// Opens an outbound link to `peer` and runs it until it ends. `queue` envelopes can wait
/// to be written (the engine's window: never more are unacknowledged).
pub(crate) async fn open(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    lane: Lane,
    link: LinkId,
    queue: usize,
    events: mpsc::Sender<Event>,
    host: Arc<dyn Host>,
) {
    let stream = match control.open_stream(peer, lane.protocol()).await {
        Ok(s) => s,
        Err(e) => {
            let unsupported = matches!(e, libp2p_stream::OpenStreamError::UnsupportedProtocol(_));
            let _ = events
                .send(Event::OpenFailed {
                    peer,
                    link,
                    unsupported,
                    why: e.to_string(),
                })
                .await;
            return;
        }
    };
    let (tx, rx) = mpsc::channel(queue.max(1));
    if events
        .send(Event::Opened {
            peer,
            link,
            frames: tx,
        })
        .await
        .is_err()
    {
        return;
    }
    let (r, w) = stream.split();
    // Whichever half ends first ends the link (the other is dropped with the stream).
    let why = tokio::select! {
        r = write_frames(w, rx, host, link, &events) => r,
        r = read_acks(r, link, &events) => r,
    };
    let _ = events
        .send(Event::Closed {
            link,
            why: why.map_or_else(|e| e.to_string(), |()| "closed".into()),
        })
        .await;
}

/// Loads the envelopes named on `rx` in batches (the next batch loads while this one is
/// written) and writes each as an `Envelope` frame, flushing when nothing more is loaded.
async fn write_frames(
    mut w: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<EnvelopeId>,
    host: Arc<dyn Host>,
    link: LinkId,
    events: &mpsc::Sender<Event>,
) -> io::Result<()> {
    let (loaded_tx, mut loaded) = mpsc::channel::<Vec<(EnvelopeId, Option<Vec<u8>>)>>(2);
    let loader = async move {
        while let Some(first) = rx.recv().await {
            let mut ids = vec![first];
            while ids.len() < LOAD_BATCH {
                match rx.try_recv() {
                    Ok(id) => ids.push(id),
                    Err(_) => break,
                }
            }
            let host = host.clone();
            let batch = tokio::task::spawn_blocking(move || {
                ids.into_iter()
                    .map(|id| {
                        let bytes = host.load(&id);
                        (id, bytes)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(io::Error::other)?;
            if loaded_tx.send(batch).await.is_err() {
                break;
            }
        }
        Ok::<(), io::Error>(())
    };
    let writer = async move {
        while let Some(batch) = loaded.recv().await {
            write_batch(&mut w, batch, link, events).await?;
            // Write whatever else is loaded before flushing once.
            while let Ok(batch) = loaded.try_recv() {
                write_batch(&mut w, batch, link, events).await?;
            }
            w.flush().await?;
        }
        w.close().await
    };
    // The loader ends when the swarm task drops the sender; the writer then drains what
    // was loaded and closes the stream. A writer that fails ends the link at once.
    tokio::pin!(loader, writer);
    tokio::select! {
        r = &mut writer => r,
        r = &mut loader => {
            r?;
            writer.await
        }
    }
}

async fn write_batch(
    w: &mut WriteHalf<Stream>,
    batch: Vec<(EnvelopeId, Option<Vec<u8>>)>,
    link: LinkId,
    events: &mpsc::Sender<Event>,
) -> io::Result<()> {
    for (id, bytes) in batch {
        let Some(bytes) = bytes else {
            if events.send(Event::Unloadable { link, id }).await.is_err() {
                return Ok(());
            }
            continue;
        };
        let len = u32::try_from(bytes.len() + ENVELOPE_PREFIX.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        // Length and frame head in one write: each write takes the connection's lock.
        let mut head = [0u8; 6];
        head[..4].copy_from_slice(&len.to_be_bytes());
        head[4..].copy_from_slice(&ENVELOPE_PREFIX);
        w.write_all(&head).await?;
        w.write_all(&bytes).await?;
    }
    Ok(())
}

async fn read_acks(
    mut r: ReadHalf<Stream>,
    link: LinkId,
    events: &mpsc::Sender<Event>,
) -> io::Result<()> {
    let mut buf = [0u8; 8];
    loop {
        r.read_exact(&mut buf).await?;
        let handled = u64::from_be_bytes(buf);
        if events.send(Event::Acked { link, handled }).await.is_err() {
            return Ok(());
        }
    }
}

/// Accepts inbound links of one lane and serves each on its own task.
pub(crate) async fn accept(
    mut incoming: libp2p_stream::IncomingStreams,
    lane: Lane,
    events: mpsc::Sender<Event>,
    max_frame_bytes: usize,
    window: Window,
    oversized: Arc<AtomicU64>,
) {
    use futures_util::StreamExt;
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(serve(
            peer,
            lane,
            stream,
            events.clone(),
            max_frame_bytes,
            window,
            oversized.clone(),
        ));
    }
}

/// How far a sender may run ahead of what this node has handled on one inbound link:
/// past it the link stops reading (QUIC flow control then holds the sender back) until
/// acknowledgements catch up. An honest sender keeps within its own engine's window
/// anyway; without this, a peer that ignored acknowledgements could queue envelopes in
/// this node's ingest pipeline without limit. At least one frame is always read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Frames read and not yet handled.
    pub(crate) frames: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// Frames read on one inbound link and not yet handled.
#[derive(Debug, Default)]
struct Unhandled {
    /// Sizes, oldest first.
    sizes: std::collections::VecDeque<u64>,
    bytes: u64,
    /// Frames read so far.
    read: u64,
}

impl Unhandled {
    fn read(&mut self, len: u64) {
        self.sizes.push_back(len);
        self.bytes += len;
        self.read += 1;
    }

    /// Forgets the frames the receiver has handled (`handled` counts from the start).
    fn handled(&mut self, handled: u64) {
        while self.read - (self.sizes.len() as u64) < handled {
            match self.sizes.pop_front() {
                Some(len) => self.bytes -= len,
                None => break,
            }
        }
    }

    fn full(&self, w: Window) -> bool {
        !self.sizes.is_empty() && (self.sizes.len() as u64 >= w.frames || self.bytes >= w.bytes)
    }
}

async fn serve(
    peer: PeerId,
    lane: Lane,
    stream: Stream,
    events: mpsc::Sender<Event>,
    max_frame_bytes: usize,
    window: Window,
    oversized: Arc<AtomicU64>,
) {
    let link = next_link();
    let (acks, acks_rx) = watch::channel(0);
    if events
        .send(Event::Accepted {
            peer,
            lane,
            link,
            acks,
        })
        .await
        .is_err()
    {
        return;
    }
    let (r, w) = stream.split();
    let handled = acks_rx.clone();
    let why = tokio::select! {
        r = read_frames(r, link, &events, max_frame_bytes, window, handled, &oversized) => r,
        r = write_acks(w, acks_rx) => r,
    };
    let _ = events
        .send(Event::Closed {
            link,
            why: why.map_or_else(|e| e.to_string(), |()| "closed".into()),
        })
        .await;
}

/// Reads frames and hands them to the swarm task; a full event queue stops the reading,
/// and QUIC flow control then stops the sender. A length over the cap ends the link (the
/// stream cannot be resynchronised after it); it is counted as oversized. Each frame's
/// two-byte head is read apart from the rest, so an envelope's bytes arrive in a buffer
/// of their own and are verified and stored without another copy.
async fn read_frames<R: futures_util::AsyncRead + Unpin + Send>(
    mut r: R,
    link: LinkId,
    events: &mpsc::Sender<Event>,
    cap: usize,
    window: Window,
    mut handled: watch::Receiver<u64>,
    oversized: &AtomicU64,
) -> io::Result<()> {
    let mut unhandled = Unhandled::default();
    loop {
        unhandled.handled(*handled.borrow_and_update());
        while unhandled.full(window) {
            if handled.changed().await.is_err() {
                // The swarm task no longer wants this link.
                return Ok(());
            }
            unhandled.handled(*handled.borrow_and_update());
        }
        let frame = match read_frame(&mut r, cap, oversized).await {
            Ok(f) => f,
            // The sender closed the stream between frames (or mid-frame: nothing of a
            // partial frame was handed on either way).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        unhandled.read(frame.len() as u64);
        if events.send(Event::Frame { link, frame }).await.is_err() {
            return Ok(());
        }
    }
}

async fn read_frame<R: futures_util::AsyncRead + Unpin + Send>(
    r: &mut R,
    cap: usize,
    oversized: &AtomicU64,
) -> io::Result<BulkFrame> {
    let len = crate::protocol::read_frame_len(r, cap, oversized).await?;
    if len < 2 {
        let mut frame = vec![0u8; len];
        r.read_exact(&mut frame).await?;
        return Ok(BulkFrame::whole(frame));
    }
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut rest = vec![0u8; len - 2];
    r.read_exact(&mut rest).await?;
    Ok(BulkFrame::split(head, rest))
}

async fn write_acks(mut w: WriteHalf<Stream>, mut acks: watch::Receiver<u64>) -> io::Result<()> {
    // Ends when the swarm task drops the sender (the link is no longer wanted).
    while acks.changed().await.is_ok() {
        let handled = *acks.borrow_and_update();
        w.write_all(&handled.to_be_bytes()).await?;
        w.flush().await?;
    }
    w.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend(std::iter::repeat_n(i as u8, len));
        }
        out
    }

    async fn arrived(rx: &mut mpsc::Receiver<Event>) -> usize {
        // Whatever the reader can hand on now, it has after a moment.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut n = 0;
        while let Ok(e) = rx.try_recv() {
            assert!(matches!(e, Event::Frame { .. }), "{e:?}");
            n += 1;
        }
        n
    }

    /// A link reading `n` frames of `len` bytes within `window`: the acknowledgements to
    /// send it, and where its frames arrive.
    fn reader(n: usize, len: usize, window: Window) -> (watch::Sender<u64>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(1024);
        let (acks, handled) = watch::channel(0u64);
        let input = futures_util::io::Cursor::new(frames(n, len));
        tokio::spawn(async move {
            let oversized = AtomicU64::new(0);
            read_frames(input, 1, &tx, 2 * len, window, handled, &oversized).await
        });
        (acks, rx)
    }

    /// A sender that never waits for acknowledgements gets no further than the window
    /// ahead of what the node has handled; each acknowledgement lets as many more in.
    #[tokio::test]
    async fn a_sender_runs_no_further_ahead_than_the_window() {
        let window = Window {
            frames: 8,
            bytes: 1 << 20,
        };
        let (acks, mut rx) = reader(100, 1000, window);
        assert_eq!(arrived(&mut rx).await, 8);
        acks.send(5).unwrap();
        assert_eq!(arrived(&mut rx).await, 5);
        // By bytes: 3 frames of 1004 bytes fill a 3000-byte window.
        let window = Window {
            frames: 100,
            bytes: 3000,
        };
        let (acks, mut rx) = reader(100, 1000, window);
        assert_eq!(arrived(&mut rx).await, 3);
        acks.send(100).unwrap();
        assert_eq!(arrived(&mut rx).await, 97, "the rest, once all is handled");
    }

    /// A frame larger than the byte window still gets through, alone.
    #[tokio::test]
    async fn one_frame_is_always_read() {
        let window = Window {
            frames: 4,
            bytes: 1000,
        };
        let (acks, mut rx) = reader(2, 5000, window);
        assert_eq!(arrived(&mut rx).await, 1);
        acks.send(1).unwrap();
        assert_eq!(arrived(&mut rx).await, 1);
    }
}
