//! A receiver's queue: the lines it has not taken yet, bounded in bytes. The readers never
//! wait for a receiver: past the bound the oldest lines go, and the count of what went is
//! kept for the next `logs-dropped` note.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::message::Message;

#[derive(Debug)]
pub struct Queue {
    lines: VecDeque<Arc<Message>>,
    bytes: usize,
    capacity: usize,
    dropped: u64,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            lines: VecDeque::new(),
            bytes: 0,
            capacity,
            dropped: 0,
        }
    }

    pub fn push(&mut self, message: Arc<Message>) {
        self.bytes += message.cost();
        self.lines.push_back(message);
        self.trim();
    }

    /// Puts lines a failed connection may not have delivered back in front, oldest first.
    pub fn requeue(&mut self, lines: Vec<Arc<Message>>) {
        for message in lines.into_iter().rev() {
            self.bytes += message.cost();
            self.lines.push_front(message);
        }
        self.trim();
    }

    /// Drops the oldest lines while over the bound.
    fn trim(&mut self) {
        while self.bytes > self.capacity {
            let Some(oldest) = self.lines.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(oldest.cost());
            self.dropped += 1;
        }
    }

    /// The oldest lines, about `max_bytes` of them (one at least, when any wait).
    pub fn take(&mut self, max_bytes: usize) -> Vec<Arc<Message>> {
        let mut taken = Vec::new();
        let mut size = 0;
        while let Some(next) = self.lines.front() {
            if !taken.is_empty() && size + next.cost() > max_bytes {
                break;
            }
            size += next.cost();
            taken.extend(self.lines.pop_front());
        }
        self.bytes = self.bytes.saturating_sub(size);
        taken
    }

    /// How many lines were dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A queue shared between the readers and one receiver's sender.
#[derive(Debug)]
pub struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    pub fn new(capacity: usize) -> Shared {
        Shared {
            queue: Mutex::new(Queue::new(capacity)),
            ready: Condvar::new(),
        }
    }

    pub fn push(&self, message: Arc<Message>) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push(message);
        }
        self.ready.notify_one();
    }

    pub fn requeue(&self, lines: Vec<Arc<Message>>) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.requeue(lines);
        }
    }

    /// Waits up to `wait` for lines; then what [`Queue::take`] gives, and the drop count.
    pub fn take(&self, wait: Duration, max_bytes: usize) -> (Vec<Arc<Message>>, u64) {
        let Ok(queue) = self.queue.lock() else {
            return (Vec::new(), 0);
        };
        let Ok((mut queue, _)) = self.ready.wait_timeout_while(queue, wait, |q| q.is_empty())
        else {
            return (Vec::new(), 0);
        };
        let dropped = queue.take_dropped();
        (queue.take(max_bytes), dropped)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::super::message::Source;
    use super::*;

    fn line(n: u64) -> Arc<Message> {
        Arc::new(Message {
            seq: Some(n),
            time: std::time::UNIX_EPOCH,
            source: Source::Container {
                name: "c".to_string(),
            },
            text: "0123".to_string(),
        })
    }

    fn seqs(lines: &[Arc<Message>]) -> Vec<u64> {
        lines.iter().map(|l| l.seq.unwrap()).collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let cost = line(0).cost();
        let mut queue = Queue::new(cost * 3);
        for n in 1..=5 {
            queue.push(line(n));
        }
        assert_eq!(queue.take_dropped(), 2);
        assert_eq!(queue.take_dropped(), 0);
        assert_eq!(seqs(&queue.take(cost * 2)), [3, 4]);
        assert_eq!(seqs(&queue.take(0)), [5], "one line at least");
        assert!(queue.is_empty());
    }

    #[test]
    fn requeued_lines_go_first_in_their_order_within_the_bound() {
        let cost = line(0).cost();
        let mut queue = Queue::new(cost * 3);
        queue.push(line(4));
        queue.push(line(5));
        queue.requeue(vec![line(2), line(3)]);
        assert_eq!(queue.take_dropped(), 1);
        assert_eq!(seqs(&queue.take(usize::MAX)), [3, 4, 5]);
    }

    #[test]
    fn a_shared_take_returns_after_the_wait_when_nothing_comes() {
        let shared = Shared::new(1 << 20);
        let (lines, dropped) = shared.take(Duration::from_millis(10), 1 << 16);
        assert!(lines.is_empty() && dropped == 0);
        shared.push(line(1));
        assert_eq!(seqs(&shared.take(Duration::from_secs(5), 1 << 16).0), [1]);
    }
}
