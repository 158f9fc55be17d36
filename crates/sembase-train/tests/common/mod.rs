//! Observers the training tests share.

use sembase_train::TrainObserver;

/// Watches nothing.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// Stops the run after `at` steps, as Ctrl-C would.
#[allow(dead_code)] // each test file compiles this module; not all of them interrupt runs
pub struct StopAt(pub usize, pub std::cell::Cell<usize>);
impl TrainObserver for StopAt {
    fn on_step(&self, step: usize, _: usize, _: f32) {
        self.1.set(step);
    }
    fn interrupted(&self) -> bool {
        self.1.get() >= self.0
    }
}
