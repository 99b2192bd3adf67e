//! Byte progress bars on stderr, so stdout stays clean for scripts. Hidden
//! when stderr is not a terminal (CI logs, pipes): a redrawn bar there is
//! noise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A bar counting bytes up to `total_bytes` (changeable later with
/// `set_length`), labelled with `verb`.
pub fn bytes_bar(total_bytes: u64, verb: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(TEMPLATE)
        .expect("the template is a constant known to parse")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(verb.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
