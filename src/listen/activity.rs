//! When a connection has been silent too long. A connection must deliver
//! its first complete request head within the head timeout, counted from
//! accept (so the TLS handshake, HTTP version sniffing and the HTTP/2
//! preface all count); after that, whenever it has no request in flight
//! (no HTTP/2 stream open, no HTTP/1.1 request being answered), it must
//! start the next one within the idle timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    head_timeout: Duration,
    idle_timeout: Duration,
    in_flight: AtomicUsize,
    any_request: AtomicBool,
    idle_since: Mutex<Instant>,
}

/// Held from a request's head to the end of its response body.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn new(accepted: Instant, head_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            accepted,
            head_timeout,
            idle_timeout,
            in_flight: AtomicUsize::new(0),
            any_request: AtomicBool::new(false),
            idle_since: Mutex::new(accepted),
        })
    }

    /// The moment the first request head must be complete by.
    pub fn head_deadline(&self) -> Instant {
        self.accepted + self.head_timeout
    }

    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.any_request.store(true, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// When the connection will have been silent too long, or `None` while
    /// a request is in flight.
    fn deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            None
        } else if !self.any_request.load(Ordering::SeqCst) {
            Some(self.head_deadline())
        } else {
            let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            Some(since + self.idle_timeout)
        }
    }

    /// Resolves once the connection has been silent too long; never while
    /// a request is in flight.
    ///
    /// Requests do not wake it: it sleeps until the deadline it last saw,
    /// but never longer than one idle timeout, and then looks again. So a
    /// request that starts or ends meanwhile only moves the next wake-up,
    /// and the idle deadline after it is seen in time even when the head
    /// deadline it slept towards is later. Waking the connection's task at
    /// the start and end of every request cost more than these rare timer
    /// firings.
    pub async fn expired(&self) {
        loop {
            let now = Instant::now();
            match self.deadline() {
                Some(deadline) if deadline <= now => return,
                Some(deadline) => {
                    tokio::time::sleep_until(deadline.min(now + self.idle_timeout)).await
                }
                None => tokio::time::sleep_until(now + self.idle_timeout).await,
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        *activity
            .idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_millis(50);
    const IDLE: Duration = Duration::from_millis(100);
    /// Far past both timeouts: only a hang reaches it.
    const BOUND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_connection_without_a_request_expires_after_the_head_deadline() {
        let activity = Activity::new(Instant::now(), HEAD, IDLE);
        tokio::time::timeout(BOUND, activity.expired())
            .await
            .expect("a silent connection must expire");
        assert!(Instant::now() >= activity.head_deadline());
    }

    #[tokio::test]
    async fn a_request_in_flight_never_expires_and_idleness_after_it_does() {
        let activity = Activity::new(Instant::now(), HEAD, IDLE);
        let request = activity.request_started();
        let waited = tokio::time::timeout(4 * IDLE, activity.expired()).await;
        assert!(waited.is_err(), "expired while a request was in flight");
        drop(request);
        let finished = Instant::now();
        tokio::time::timeout(BOUND, activity.expired())
            .await
            .expect("an idle connection must expire");
        assert!(Instant::now() >= finished + IDLE);
    }

    #[tokio::test]
    async fn a_request_during_the_wait_moves_the_deadline() {
        let activity = Activity::new(Instant::now(), HEAD, IDLE);
        let waiting = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                activity.expired().await;
                Instant::now()
            }
        });
        // The waiter is asleep until the head deadline when this request
        // comes and goes; it must then wait out the idle timeout from here.
        tokio::time::sleep(HEAD / 5).await;
        let request = activity.request_started();
        let finished = Instant::now();
        drop(request);
        let expired_at = tokio::time::timeout(BOUND, waiting)
            .await
            .expect("an idle connection must expire")
            .expect("the waiter does not panic");
        assert!(expired_at >= finished + IDLE);
    }

    #[tokio::test]
    async fn idleness_after_the_first_request_is_not_held_to_a_later_head_deadline() {
        // The waiter first sleeps towards the head deadline, far beyond
        // BOUND; the request that comes and goes meanwhile must make it
        // expire one idle timeout after the request, not at that deadline.
        let activity = Activity::new(Instant::now(), 10 * BOUND, IDLE);
        let waiting = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.expired().await }
        });
        tokio::time::sleep(IDLE / 5).await;
        drop(activity.request_started());
        tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the idle timeout must close the connection, not the head deadline")
            .expect("the waiter does not panic");
    }
}
