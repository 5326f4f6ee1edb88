//! The `/fieldmesh/sync/1` request-response codec: one sync frame per request and per
//! answer, each prefixed with its length (u32, big-endian) and capped before allocation.

use fieldmesh_sync::frame::MAX_FRAME_BYTES;
use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocol name, negotiated by multistream-select.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fieldmesh/sync/1");

/// Length-prefixed frames with a size cap.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Frames refused for exceeding the cap. libp2p does not report failed reads to the
    /// behaviour, so the codec counts them itself.
    pub oversized: Arc<AtomicU64>,
}

impl FrameCodec {
    /// A codec with a cap.
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec {
            max_frame_bytes,
            oversized: Arc::default(),
        }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(MAX_FRAME_BYTES)
    }
}

/// Reads one length-prefixed frame, refusing (and counting) a length over `cap` before
/// allocating.
pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    cap: usize,
    oversized: &AtomicU64,
) -> io::Result<Vec<u8>> {
    let len = read_frame_len(io, cap, oversized).await?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads a frame's length, refusing (and counting) one over `cap`: nothing of such a
/// frame is read, and the stream cannot be resynchronised after it.
pub(crate) async fn read_frame_len<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    cap: usize,
    oversized: &AtomicU64,
) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        oversized.fetch_add(1, Ordering::Relaxed);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the cap of {cap}"),
        ));
    }
    Ok(len)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, frame: &[u8]) -> io::Result<()> {
    io.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    io.write_all(frame).await?;
    io.close().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, self.max_frame_bytes, &self.oversized).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, self.max_frame_bytes, &self.oversized).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;
    use libp2p::request_response::Codec;

    #[tokio::test]
    async fn round_trip_and_cap() {
        let mut c = FrameCodec::new(16);
        let mut buf = Cursor::new(Vec::new());
        c.write_request(&PROTOCOL, &mut buf, b"hello".to_vec())
            .await
            .unwrap();
        let mut r = Cursor::new(buf.into_inner());
        assert_eq!(c.read_request(&PROTOCOL, &mut r).await.unwrap(), b"hello");
        // A length prefix over the cap is refused before anything is allocated, and counted.
        let mut r = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let err = c.read_request(&PROTOCOL, &mut r).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(c.oversized.load(Ordering::Relaxed), 1);
        // A truncated frame is an error, not a hang.
        let mut r = Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        assert!(c.read_request(&PROTOCOL, &mut r).await.is_err());
    }
}
