//! Panics inside a run are findings, not crashes of the simulator.
//!
//! A node's tasks run on the run's thread; when openraft asserts on state a planted bug
//! corrupted (or real code panics), tokio catches the panic and the task ends. The default
//! panic hook would print it with a backtrace and the run would only show the consequence (a
//! node that never comes back). While a run is in progress on a thread, [`capture`] makes the
//! process's panic hook record the message for that thread instead of printing it, and the run
//! reports each one as a violation. Other threads (and the time outside a run) keep the
//! previous hook.

use std::cell::RefCell;
use std::sync::Once;

/// Most panic messages one run keeps (all are counted).
pub const PANICS_KEPT_MAX: usize = 16;
/// Longest panic message kept, in characters.
pub const PANIC_MESSAGE_CHARS_MAX: usize = 400;

#[derive(Default)]
struct Captured {
    messages: Vec<String>,
    total: usize,
}

thread_local! {
    static CAPTURED: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let taken = CAPTURED.with(|c| match c.try_borrow_mut() {
                Ok(mut slot) => match slot.as_mut() {
                    Some(captured) => {
                        captured.total += 1;
                        if captured.messages.len() < PANICS_KEPT_MAX {
                            let text = info.to_string().replace('\n', " ");
                            captured
                                .messages
                                .push(text.chars().take(PANIC_MESSAGE_CHARS_MAX).collect());
                        }
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            });
            if !taken {
                previous(info);
            }
        }));
    });
}

/// Start recording this thread's panics (see the module docs).
pub fn capture() {
    install();
    CAPTURED.with(|c| *c.borrow_mut() = Some(Captured::default()));
}

/// Stop recording; returns the messages kept and how many panics there were.
pub fn release() -> (Vec<String>, usize) {
    CAPTURED.with(|c| {
        c.borrow_mut()
            .take()
            .map(|captured| (captured.messages, captured.total))
            .unwrap_or_default()
    })
}

/// What was recorded so far on this thread, leaving the recording on.
pub fn drain() -> (Vec<String>, usize) {
    CAPTURED.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|captured| {
                (
                    std::mem::take(&mut captured.messages),
                    std::mem::take(&mut captured.total),
                )
            })
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_capturing_is_recorded_not_printed() {
        capture();
        let caught = std::panic::catch_unwind(|| panic!("planted {}", 7));
        assert!(caught.is_err());
        let (messages, total) = release();
        assert_eq!(total, 1);
        assert!(messages[0].contains("planted 7"), "{messages:?}");
        assert_eq!(release(), (Vec::new(), 0), "released once");
    }
}
