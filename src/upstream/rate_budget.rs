//! Per-action upstream rate budget, counted where calls arrive.
//!
//! Why not a plain GCRA / token bucket (governor): those free a slot a fixed
//! time after a call is *sent*, but Tencent Cloud counts calls when they
//! *arrive*, and calls sent together arrive spread over the network latency.
//! So each of the N slots stays busy from the send until one second after the
//! answer (or the timeout): every call arriving in a window [t, t+1s) then
//! holds its slot at the instant just before t+1s, so at most N arrive in it,
//! whatever the latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::GatewayError;

/// How long a slot stays busy after its call has been answered.
pub const HOLD_AFTER_ANSWER: Duration = Duration::from_secs(1);

/// N slots for one action, plus a bound on how many requests may wait.
#[derive(Debug)]
pub struct RateBudget {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    hold_after_answer: Duration,
}

/// One upstream call's slot. Dropping it frees the slot `HOLD_AFTER_ANSWER` later.
#[derive(Debug)]
pub struct RateSlot {
    permit: Option<OwnedSemaphorePermit>,
    hold_after_answer: Duration,
}

impl RateBudget {
    /// A budget of `per_sec` calls in any one-second window, with at most
    /// `max_waiting` requests queued for a slot.
    pub fn new(per_sec: u32, max_waiting: usize) -> Self {
        RateBudget {
            slots: Arc::new(Semaphore::new(per_sec as usize)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            hold_after_answer: HOLD_AFTER_ANSWER,
        }
    }

    /// Waits for a slot until `deadline`; refuses at once when too many wait already.
    pub async fn acquire_until(&self, deadline: Instant) -> Result<RateSlot, GatewayError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(self.slot(permit));
        }
        let exhausted = GatewayError::RateBudgetExhausted {
            retry_after: self.hold_after_answer,
        };
        let _waiter =
            WaiterGuard::enter(&self.waiting, self.max_waiting).ok_or(exhausted.clone())?;
        match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.slot(permit)),
            // Timed out, or the semaphore was closed (never happens: it is never closed).
            _ => Err(exhausted),
        }
    }

    /// Takes a slot only if one is free now (for background work that must
    /// never delay a client).
    pub fn try_acquire(&self) -> Option<RateSlot> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|p| self.slot(p))
    }

    /// Requests currently waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> RateSlot {
        RateSlot {
            permit: Some(permit),
            hold_after_answer: self.hold_after_answer,
        }
    }
}

impl Drop for RateSlot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let hold = self.hold_after_answer;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop(permit);
                });
            }
            // No runtime means the process is shutting down: never free early.
            Err(_) => std::mem::forget(permit),
        }
    }
}

/// Counts a waiting request for as long as it lives.
struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    fn enter(counter: &'a AtomicUsize, max: usize) -> Option<Self> {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let guard = WaiterGuard(counter);
        (before < max).then_some(guard)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_busy_until_one_second_after_it_is_dropped() {
        let budget = RateBudget::new(1, 10);
        let slot = budget.try_acquire().unwrap();
        assert!(budget.try_acquire().is_none());
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(slot);
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(budget.try_acquire().is_none());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(budget.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_the_deadline_is_refused() {
        let budget = RateBudget::new(1, 10);
        let _held = budget.try_acquire().unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        let err = budget.acquire_until(deadline).await.unwrap_err();
        assert_eq!(err.tc_code(), "RequestLimitExceeded");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_beyond_the_bound_are_refused_at_once() {
        let budget = Arc::new(RateBudget::new(1, 1));
        let _held = budget.try_acquire().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let b = Arc::clone(&budget);
        let first = tokio::spawn(async move { b.acquire_until(deadline).await.is_ok() });
        tokio::task::yield_now().await;
        assert_eq!(budget.waiting(), 1);
        let started = Instant::now();
        assert!(budget.acquire_until(deadline).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO);
        first.abort();
    }
}
