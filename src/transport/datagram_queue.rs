//! The bounded queue between the mux's receive task and one [`Pipe`](super::mux::Pipe): one
//! sender (the peer's slot in the mux), one receiver (the pipe), datagrams in order.
//!
//! A tokio `mpsc` channel allocates a 32-slot block and a cache-padded state when it is made,
//! ~1.3 KB per pipe whether or not anything is queued; at 10 000 idle device sessions that is
//! 13 MB for empty queues. This one is a mutex around a `VecDeque` whose room is given back
//! when it drains, ~100 bytes for an idle pipe. Receiving takes tokio's cooperative budget like
//! a tokio channel does, so a pipe that always has data still lets its worker run others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

/// Why [`QueueTx::try_send`] did not queue a datagram (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `capacity` datagrams are already waiting.
    Full,
    /// The pipe is gone.
    Closed,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Vec<u8>>,
    capacity: usize,
    waker: Option<Waker>,
    sender_alive: bool,
    receiver_alive: bool,
}

#[derive(Debug)]
struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent state.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sending half (the mux's).
#[derive(Debug)]
pub struct QueueTx(Arc<Shared>);

/// The receiving half (the pipe's).
#[derive(Debug)]
pub struct QueueRx(Arc<Shared>);

/// A queue holding at most `capacity` (at least 1) datagrams.
pub fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let shared = Arc::new(Shared(Mutex::new(State {
        items: VecDeque::new(),
        capacity: capacity.max(1),
        waker: None,
        sender_alive: true,
        receiver_alive: true,
    })));
    (QueueTx(shared.clone()), QueueRx(shared))
}

impl QueueTx {
    /// Queues `datagram` unless the queue is full or the receiver is gone.
    pub fn try_send(&self, datagram: Vec<u8>) -> Result<(), Refused> {
        let waker = {
            let mut state = self.0.lock();
            if !state.receiver_alive {
                return Err(Refused::Closed);
            }
            if state.items.len() >= state.capacity {
                return Err(Refused::Full);
            }
            state.items.push_back(datagram);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.0.lock().receiver_alive
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            state.sender_alive = false;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl QueueRx {
    /// The next datagram; `None` once the sender is gone and the queue is empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = self.0.lock();
        if let Some(datagram) = state.items.pop_front() {
            if state.items.is_empty() {
                state.items = VecDeque::new();
            }
            coop.made_progress();
            return Poll::Ready(Some(datagram));
        }
        if !state.sender_alive {
            coop.made_progress();
            return Poll::Ready(None);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits for the next datagram; `None` once the sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Whether the sender is gone (what is queued may still be received).
    pub fn is_closed(&self) -> bool {
        !self.0.lock().sender_alive
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_alive = false;
        state.items = VecDeque::new();
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_arrive_in_order_up_to_the_capacity() {
        let (tx, mut rx) = queue(2);
        assert_eq!(tx.try_send(b"a".to_vec()), Ok(()));
        assert_eq!(tx.try_send(b"b".to_vec()), Ok(()));
        assert_eq!(tx.try_send(b"c".to_vec()), Err(Refused::Full));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a"[..]));
        assert_eq!(tx.try_send(b"d".to_vec()), Ok(()));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"b"[..]));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"d"[..]));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = queue(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(b"late".to_vec()).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got.as_deref(), Some(&b"late"[..]));
    }

    #[tokio::test]
    async fn the_receiver_drains_then_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = queue(4);
        tx.try_send(b"last".to_vec()).unwrap();
        drop(tx);
        assert!(rx.is_closed());
        assert_eq!(rx.recv().await.as_deref(), Some(&b"last"[..]));
        assert_eq!(rx.recv().await, None);
        // A receiver already waiting is woken by the drop too.
        let (tx, mut rx) = queue(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, None);
    }

    #[test]
    fn sending_to_a_dropped_receiver_is_refused_as_closed() {
        let (tx, rx) = queue(4);
        tx.try_send(b"queued".to_vec()).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(b"x".to_vec()), Err(Refused::Closed));
    }
}
