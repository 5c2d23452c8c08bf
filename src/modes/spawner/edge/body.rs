//! Reading a request body within the global budget of body bytes in flight and a deadline. The
//! bytes a body may occupy are reserved before they are read (the declared length up front, a
//! chunked body step by step), so the spawner never holds more than the budget, and a body that
//! would not fit is refused at once instead of waited for.
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::shared::http::BoxError;

/// How much more a chunked body (no `content-length`) reserves each time it outgrows its share.
pub const CHUNKED_RESERVE_STEP_BYTES: usize = 64 * 1024;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyRefusal {
    #[error("the request body is larger than the {0} bytes this route accepts")]
    TooLarge(usize),
    #[error("the server is holding as many request bodies as it can; retry shortly")]
    Busy,
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    /// The connection failed or the framing broke mid-body. The cause is in the message too: the
    /// message is the 400's `message` on the wire.
    #[error("the request body could not be read: {0}")]
    Unreadable(#[source] BoxError),
}

/// The budget of body bytes in flight, shared by every request.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

/// Bytes of the budget a request holds while its body is alive.
#[derive(Debug)]
pub struct BodyLease {
    _permit: Option<OwnedSemaphorePermit>,
}

impl BodyLease {
    /// A lease holding nothing (a request built in a test).
    #[cfg(test)]
    pub fn none() -> BodyLease {
        BodyLease { _permit: None }
    }
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes of the budget not held now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, BodyRefusal> {
        let bytes = u32::try_from(bytes).map_err(|_| BodyRefusal::Busy)?;
        self.bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| BodyRefusal::Busy)
    }

    /// Reads `body` (at most `cap` bytes, `declared` by `content-length` if it was) within
    /// `deadline`. The lease keeps the bytes counted until the caller drops it.
    pub async fn read<B>(
        &self,
        body: &mut B,
        declared: Option<u64>,
        cap: usize,
        deadline: Duration,
    ) -> Result<(Bytes, BodyLease), BodyRefusal>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        if declared.is_some_and(|len| len > cap as u64) {
            return Err(BodyRefusal::TooLarge(cap));
        }
        // A declared body reserves its length before a byte of it is read; a chunked one
        // reserves as it grows; a request without a body (most GETs) reserves nothing.
        let mut reserved = declared.map_or(0, |len| len as usize);
        let mut permit = match reserved {
            0 => None,
            bytes => Some(self.reserve(bytes)?),
        };
        let mut buffer = BytesMut::with_capacity(reserved);
        let collect = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|err| BodyRefusal::Unreadable(err.into()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let needed = buffer.len() + data.len();
                if needed > cap {
                    return Err(BodyRefusal::TooLarge(cap));
                }
                if needed > reserved {
                    // Only a chunked body gets here (hyper holds a declared one to its length).
                    let more =
                        (needed - reserved).max(CHUNKED_RESERVE_STEP_BYTES.min(cap - reserved));
                    let more_permit = self.reserve(more)?;
                    match permit.as_mut() {
                        Some(permit) => permit.merge(more_permit),
                        None => permit = Some(more_permit),
                    }
                    reserved += more;
                }
                buffer.extend_from_slice(&data);
            }
            Ok(())
        };
        tokio::time::timeout(deadline, collect)
            .await
            .map_err(|_| BodyRefusal::Timeout(deadline))??;
        Ok((buffer.freeze(), BodyLease { _permit: permit }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use std::convert::Infallible;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn chunked(
        chunks: Vec<&'static [u8]>,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin>
    {
        StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
        ))
    }

    /// A declared body takes its length from the budget until the lease is dropped; what does not
    /// fit is refused at once; over the cap is refused before reading.
    #[tokio::test]
    async fn declared_bodies_hold_their_length() {
        let budget = BodyBudget::new(10);
        let (bytes, lease) = budget
            .read(
                &mut Full::new(Bytes::from_static(b"123456")),
                Some(6),
                8,
                DEADLINE,
            )
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"123456");
        assert_eq!(budget.available(), 4);
        let refusal = budget
            .read(
                &mut Full::new(Bytes::from_static(b"12345")),
                Some(5),
                8,
                DEADLINE,
            )
            .await
            .unwrap_err();
        assert!(matches!(refusal, BodyRefusal::Busy), "{refusal:?}");
        let refusal = budget
            .read(
                &mut Full::new(Bytes::from_static(b"123456789")),
                Some(9),
                8,
                DEADLINE,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(refusal, BodyRefusal::TooLarge(n) if n == 8),
            "{refusal:?}"
        );
        drop(lease);
        assert_eq!(budget.available(), 10);
        let (empty, _) = budget
            .read(&mut Full::new(Bytes::new()), Some(0), 8, DEADLINE)
            .await
            .unwrap();
        assert!(empty.is_empty());
    }

    /// A chunked body reserves step by step, within the cap and the budget.
    #[tokio::test]
    async fn chunked_bodies_reserve_as_they_grow() {
        let step = CHUNKED_RESERVE_STEP_BYTES;
        let big: &'static [u8] = Box::leak(vec![7u8; step].into_boxed_slice());
        let budget = BodyBudget::new(3 * step);
        let (bytes, lease) = budget
            .read(&mut chunked(vec![big, big]), None, 4 * step, DEADLINE)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 2 * step);
        assert_eq!(budget.available(), step);
        let refusal = budget
            .read(&mut chunked(vec![big, big]), None, 4 * step, DEADLINE)
            .await
            .unwrap_err();
        assert!(matches!(refusal, BodyRefusal::Busy), "{refusal:?}");
        assert_eq!(
            budget.available(),
            step,
            "a refused body gives its share back"
        );
        drop(lease);
        let refusal = budget
            .read(&mut chunked(vec![big, big, b"x"]), None, 2 * step, DEADLINE)
            .await
            .unwrap_err();
        assert!(
            matches!(refusal, BodyRefusal::TooLarge(n) if n == 2 * step),
            "{refusal:?}"
        );
        assert_eq!(budget.available(), 3 * step);
    }

    /// A body that does not arrive in time is refused and gives its share back.
    #[tokio::test(start_paused = true)]
    async fn slow_bodies_time_out() {
        let budget = BodyBudget::new(100);
        let mut never = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let refusal = budget
            .read(&mut never, Some(50), 100, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(
            matches!(refusal, BodyRefusal::Timeout(n) if n == Duration::from_secs(3)),
            "{refusal:?}"
        );
        assert_eq!(budget.available(), 100);
    }

    /// A body that breaks mid-way is refused with the transport error as its cause (and in the
    /// message, which is the 400's text), and gives its share back.
    #[tokio::test]
    async fn broken_bodies_keep_their_cause() {
        let budget = BodyBudget::new(100);
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"12"))),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer reset",
            )),
        ];
        let mut broken = StreamBody::new(futures_util::stream::iter(frames));
        let refusal = budget
            .read(&mut broken, Some(50), 100, DEADLINE)
            .await
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the request body could not be read: peer reset"
        );
        let cause = std::error::Error::source(&refusal).expect("a cause");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(budget.available(), 100);
    }
}
