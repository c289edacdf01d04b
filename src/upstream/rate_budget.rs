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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::GatewayError;

/// How long a slot stays busy after its call has been answered.
pub const HOLD_AFTER_ANSWER: Duration = Duration::from_secs(1);
/// While upstream throttles, slots are held this much longer (half the rate).
const THROTTLED_HOLD_AFTER_ANSWER: Duration = Duration::from_secs(2);
/// How long one upstream `RequestLimitExceeded` slows the budget down.
const THROTTLE_PERIOD: Duration = Duration::from_secs(5);

/// N slots for one action, plus a bound on how many requests may wait.
#[derive(Debug)]
pub struct RateBudget {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    per_sec: AtomicUsize,
    shared: Arc<SlotPolicy>,
}

/// What a slot needs to know when it is given back.
#[derive(Debug, Default)]
struct SlotPolicy {
    throttled_until: Mutex<Option<Instant>>,
    /// Slots to retire as they come back, after the rate was lowered.
    retire: AtomicUsize,
}

/// One upstream call's slot. Dropping it frees the slot a second (two while
/// upstream throttles) later.
#[derive(Debug)]
pub struct RateSlot {
    permit: Option<OwnedSemaphorePermit>,
    policy: Arc<SlotPolicy>,
}

impl RateBudget {
    /// A budget of `per_sec` calls in any one-second window, with at most
    /// `max_waiting` requests queued for a slot.
    pub fn new(per_sec: u32, max_waiting: usize) -> Self {
        RateBudget {
            slots: Arc::new(Semaphore::new(per_sec as usize)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
            per_sec: AtomicUsize::new(per_sec as usize),
            shared: Arc::new(SlotPolicy::default()),
        }
    }

    /// Changes the number of slots (config reload). Busy slots above a
    /// lowered rate are retired as they come back, so the ceiling holds.
    pub fn set_rate(&self, per_sec: u32) {
        let new = per_sec as usize;
        let old = self.per_sec.swap(new, Ordering::AcqRel);
        if new > old {
            let mut add = new - old;
            // Cancel pending retirements first.
            while add > 0 {
                let retire = self.shared.retire.load(Ordering::Acquire);
                if retire == 0 {
                    break;
                }
                let take = retire.min(add);
                if self
                    .shared
                    .retire
                    .compare_exchange(retire, retire - take, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    add -= take;
                }
            }
            self.slots.add_permits(add);
        } else if old > new {
            let excess = old - new;
            let forgotten = self.slots.forget_permits(excess);
            self.shared
                .retire
                .fetch_add(excess - forgotten, Ordering::AcqRel);
        }
    }

    /// Waits for a slot until `deadline`; refuses at once when too many wait already.
    pub async fn acquire_until(&self, deadline: Instant) -> Result<RateSlot, GatewayError> {
        if let Some(slot) = self.try_acquire() {
            return Ok(slot);
        }
        let exhausted = GatewayError::RateBudgetExhausted {
            retry_after: HOLD_AFTER_ANSWER,
        };
        let Some(_waiter) = WaiterGuard::enter(&self.waiting, self.max_waiting) else {
            return Err(exhausted);
        };
        match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.slot(permit)),
            // Timed out, or the semaphore was closed (never happens: it is never closed).
            _ => Err(exhausted),
        }
    }

    /// Takes a slot only if one is free now. The semaphore is fair, so this
    /// fails while anyone waits: background work never delays a client.
    pub fn try_acquire(&self) -> Option<RateSlot> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|p| self.slot(p))
    }

    /// Upstream answered `RequestLimitExceeded`: slow down for a while.
    pub fn note_throttled(&self) {
        *lock(&self.shared.throttled_until) = Some(Instant::now() + THROTTLE_PERIOD);
    }

    /// Requests currently waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> RateSlot {
        RateSlot {
            permit: Some(permit),
            policy: Arc::clone(&self.shared),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for RateSlot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let throttled =
            lock(&self.policy.throttled_until).is_some_and(|until| Instant::now() < until);
        let hold = if throttled {
            THROTTLED_HOLD_AFTER_ANSWER
        } else {
            HOLD_AFTER_ANSWER
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let policy = Arc::clone(&self.policy);
                runtime.spawn(async move {
                    tokio::time::sleep(hold).await;
                    let retire =
                        policy
                            .retire
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                n.checked_sub(1)
                            });
                    if retire.is_ok() {
                        permit.forget();
                    }
                });
            }
            // No runtime means the process is shutting down: never free early.
            Err(_) => std::mem::forget(permit),
        }
    }
}

/// Counts one waiting request for as long as it lives.
#[derive(Debug)]
pub struct WaiterGuard(Arc<AtomicUsize>);

impl WaiterGuard {
    /// Counts one more waiter on `counter`, unless `max` already wait.
    pub fn enter(counter: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let guard = WaiterGuard(Arc::clone(counter));
        (before < max).then_some(guard)
    }
}

impl Drop for WaiterGuard {
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
    async fn after_upstream_throttles_slots_are_held_longer() {
        let budget = RateBudget::new(1, 10);
        budget.note_throttled();
        drop(budget.try_acquire().unwrap());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(budget.try_acquire().is_none());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(budget.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_rate_retires_busy_slots_as_they_come_back() {
        let budget = RateBudget::new(3, 10);
        let busy: Vec<_> = (0..3).map(|_| budget.try_acquire().unwrap()).collect();
        budget.set_rate(1);
        drop(busy);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert!(budget.try_acquire().is_some());
        assert!(
            budget.try_acquire().is_none(),
            "more slots than the lowered rate"
        );
        budget.set_rate(2);
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

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_is_not_taken_from_under_a_waiter() {
        let budget = Arc::new(RateBudget::new(1, 10));
        let held = budget.try_acquire().unwrap();
        let b = Arc::clone(&budget);
        let waiter = tokio::spawn(async move {
            b.acquire_until(Instant::now() + Duration::from_secs(10))
                .await
                .is_ok()
        });
        tokio::task::yield_now().await;
        drop(held);
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        assert!(
            budget.try_acquire().is_none(),
            "background took the waiter's slot"
        );
        assert!(waiter.await.unwrap());
    }
}
