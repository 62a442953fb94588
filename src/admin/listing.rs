//! Bounded memory for the admin listings (routes, a route's detail with every release, review
//! samples): at most [`MAX_LISTINGS_IN_FLIGHT`] are being answered at once, each holding its
//! permit until its body has been handed to the connection, so clients that never read a large
//! answer cannot make the process hold more than that many answers. Past it: 503, retry.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::{Body, BoxError};

/// Listings answered at once.
pub const MAX_LISTINGS_IN_FLIGHT: usize = 8;
/// The piece of a listing handed to the connection at a time: the connection asks for the next
/// one only when it has written the previous ones (its buffer is bounded), so a reader that
/// stalls keeps the body, and its permit, alive.
const PIECE: usize = 64 * 1024;

/// The permits of the admin listings.
#[derive(Debug, Clone)]
pub struct Listings(Arc<Semaphore>);

impl Default for Listings {
    fn default() -> Self {
        Listings(Arc::new(Semaphore::new(MAX_LISTINGS_IN_FLIGHT)))
    }
}

impl Listings {
    /// A permit for one listing, or None when every one is in use.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }
}

/// `resp` with its body handed out piece by piece, holding `permit` until the last piece was
/// taken (or the connection went away).
pub async fn held(resp: Response<Body>, permit: OwnedSemaphorePermit) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    // Admin answers are complete bodies built in memory: collecting one costs nothing more.
    let data = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body = Held {
        data,
        _permit: Some(permit),
    };
    Response::from_parts(parts, body.boxed())
}

/// A complete body handed out in [`PIECE`]s, with the listing's permit.
struct Held {
    data: Bytes,
    /// Dropped with the body: after its last piece, or when the connection is dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.data.is_empty() {
            self._permit = None;
            return Poll::Ready(None);
        }
        let n = self.data.len().min(PIECE);
        let piece = self.data.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listing_holds_its_permit_until_its_last_piece() {
        let listings = Listings::default();
        let permits: Vec<_> = (0..MAX_LISTINGS_IN_FLIGHT - 1)
            .map(|_| listings.try_acquire().unwrap())
            .collect();
        let last = listings.try_acquire().unwrap();
        assert!(listings.try_acquire().is_none(), "all in use");
        let text = "x".repeat(3 * PIECE + 10);
        let resp = held(Response::new(crate::domain::full(text.clone())), last).await;
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), PIECE);
        assert!(
            listings.try_acquire().is_none(),
            "held while the body is being sent"
        );
        let mut rest = first.to_vec();
        while let Some(frame) = body.frame().await {
            rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(rest, text.as_bytes(), "the same bytes");
        assert!(
            listings.try_acquire().is_some(),
            "freed after the last piece"
        );
        drop(permits);
    }
}
