//! A journal cursor as an HTTP response body: the `POST /execs` stream and every attach.
//!
//! The body polls the cursor itself, so a streaming exec costs no task and no channel of its own;
//! hyper drops the body (and with it the cursor) as soon as the client is gone.
use super::exec::journal::JournalCursor;
use super::limits::STREAM_FRAME_BYTES;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type NextBatch = Pin<Box<dyn Future<Output = (JournalCursor, Option<Bytes>)> + Send>>;

/// Streams every batch of a cursor, one frame each, until the journal ends.
pub struct CursorBody {
    /// The read in progress; it owns the cursor and hands it back with the batch.
    next: Option<NextBatch>,
}

impl CursorBody {
    pub fn new(cursor: JournalCursor) -> CursorBody {
        CursorBody {
            next: Some(next_batch(cursor)),
        }
    }
}

fn next_batch(mut cursor: JournalCursor) -> NextBatch {
    Box::pin(async move {
        let batch = cursor.next_batch(STREAM_FRAME_BYTES).await;
        (cursor, batch)
    })
}

impl Body for CursorBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (cursor, batch) = std::task::ready!(next.as_mut().poll(cx));
        self.next = batch.is_some().then(|| next_batch(cursor));
        Poll::Ready(batch.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}
